"""The model and optimizer state of a DDP or FSDP2 run in a checkpoint folder.

Saving gathers full (unsharded) state dicts to rank 0 through
``torch.distributed.checkpoint.state_dict`` (the same call serves DDP, FSDP2 and one process)
and rank 0 writes ``model.pt`` and ``optim.pt``; loading reads them on every rank and
``set_*_state_dict`` shards them again as the model is parallelised now. The model's weights
load from any kind of checkpoint (``raylm.checkpoint.model_state_dict``), so a continual run
starts from a DeepSpeed run's weights as well.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raylm.checkpoint import MODEL, OPTIM, checkpoint_kind, model_state_dict


def _full(**kw: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def save_state(folder: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, rank: int) -> None:
    """Write the model and optimizer state into ``folder`` (a collective: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    model_sd = get_model_state_dict(model, options=_full(cpu_offload=True))
    optim_sd = get_optimizer_state_dict(model, optimizer, options=_full(cpu_offload=True))
    if rank == 0:
        torch.save(model_sd, os.path.join(folder, MODEL))
        torch.save(optim_sd, os.path.join(folder, OPTIM))


def load_model_state(model: nn.Module, folder: str | os.PathLike, *, from_rank0: bool = False,
                     rank: int = 0) -> None:
    """Set the weights of checkpoint ``folder`` (any kind) into ``model`` as it is parallelised
    now. ``from_rank0``: only rank 0 has the files and broadcasts them."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    has_files = rank == 0 or not from_rank0
    options = _full(broadcast_from_rank0=True) if from_rank0 else _full()
    set_model_state_dict(model, model_state_dict(folder) if has_files else {}, options=options)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, folder: str | os.PathLike, *,
                         from_rank0: bool = False, rank: int = 0) -> None:
    """Set the optimizer state of the DDP/FSDP2 checkpoint ``folder`` into ``optimizer``."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    has_files = rank == 0 or not from_rank0
    folder = Path(folder)
    if has_files and checkpoint_kind(folder) != "full":
        raise ValueError(f"{folder}: not a checkpoint with {OPTIM}")
    optim_sd = torch.load(folder / OPTIM, map_location="cpu", weights_only=True) if has_files else {}
    options = _full(broadcast_from_rank0=True) if from_rank0 else _full()
    set_optimizer_state_dict(model, optimizer, optim_sd, options=options)
