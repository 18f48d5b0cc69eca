"""The model and optimizer state of a DDP or FSDP2 run in a checkpoint folder: sharded, with
``torch.distributed.checkpoint`` (DCP).

Saving: every rank takes its own part of the state (``get_model_state_dict`` /
``get_optimizer_state_dict`` without ``full_state_dict``: FSDP2's DTensor shards, or DDP's
replicated tensors, which DCP writes once, spread over the ranks) and ``dcp.save`` writes it as
``__<rank>_0.distcp`` in ``model_and_optim/``, rank 0 adding the ``.metadata`` index; nothing is
gathered on one rank. ``async_save``: ``dcp.async_save`` copies the state to CPU memory (the
only time the training thread waits) and writes the files in a background thread, which
coordinates the ranks over a process group of its own (gloo), apart from training's
collectives; the returned future ends when the files are written.

Loading re-shards: each rank asks DCP for the parts of the tensors it holds now, whatever the
world size and strategy the checkpoint was saved with (N ranks -> M, DDP <-> FSDP2), then
``set_*_state_dict`` puts them into the model and optimizer. The weights also load from the
full format of older checkpoints and from DeepSpeed ones (``raylm.checkpoint.model_state_dict``),
so a continual run starts from any run's weights.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from raylm.checkpoint import OPTIM, SHARDS, checkpoint_kind, model_state_dict


def _options(**kw: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kw)


def save_state(folder: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, *,
               async_save: bool = False, group: dist.ProcessGroup | None = None) -> Future | None:
    """Write this rank's shards of the model and optimizer state into ``folder/model_and_optim``
    (a collective: every rank calls it). ``async_save``: the files are written in a background
    thread that talks to the other ranks over ``group`` (a gloo group apart from training's;
    None outside a process group), and the future returned ends when they are."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    path = str(Path(folder) / SHARDS)
    if async_save:
        return dcp.async_save(state, checkpoint_id=path, process_group=group)
    dcp.save(state, checkpoint_id=path)
    return None


def load_state(folder: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Set the weights (and with ``optimizer`` its state) of checkpoint ``folder`` into ``model``
    as it is parallelised now (a collective under a process group)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    folder = Path(folder)
    if checkpoint_kind(folder) == "sharded":
        state: dict[str, Any] = {"model": get_model_state_dict(model)}
        if optimizer is not None:
            state["optim"] = get_optimizer_state_dict(model, optimizer)
        dcp.load(state, checkpoint_id=str(folder / SHARDS))
        set_model_state_dict(model, state["model"])
        if optimizer is not None:
            set_optimizer_state_dict(model, optimizer, state["optim"])
        return
    full = _options(full_state_dict=True)  # older checkpoints, and DeepSpeed's weights
    set_model_state_dict(model, model_state_dict(folder), options=full)
    if optimizer is not None:
        if checkpoint_kind(folder) != "full":
            raise ValueError(f"{folder}: a DeepSpeed checkpoint's optimizer state is partitioned by ZeRO")
        sd = torch.load(folder / OPTIM, map_location="cpu", weights_only=True)
        set_optimizer_state_dict(model, optimizer, sd, options=full)
