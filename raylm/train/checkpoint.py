"""Training checkpoints: everything an exact resume needs, in one Ray Train checkpoint folder.

* ``model.pt`` and ``optim.pt``: full (unsharded) state dicts gathered to rank 0 through
  ``torch.distributed.checkpoint.state_dict`` (the same call serves DDP, FSDP2 and one
  process) and written by rank 0; on restore every rank reads them and
  ``set_*_state_dict`` shards them again as the model is parallelised now.
* ``state.json`` (rank 0): step, data position, spike-guard state.
* ``config.json`` (rank 0): the run's whole ``TrainConfig`` as a dict, so a checkpoint folder
  alone rebuilds its model (``raylm.infer.checkpoint.load_model``) for eval and generation.
* ``rng-rank{r}.pt`` (every rank): the torch, numpy and Python RNG states of that rank.
* Under DeepSpeed, ``zero/`` instead of ``model.pt`` and ``optim.pt``: the engine's own
  checkpoint (``save_checkpoint``), each rank writing its ZeRO partition of the optimizer
  state (and of the parameters under stage 3); restored with ``load_checkpoint`` at the
  same world size.

Every rank writes its files into its own temporary folder and passes it to
``ray.train.report(checkpoint=...)``; Ray Train gathers the ranks' files into one checkpoint.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import numpy as np
import torch
from torch import nn

MODEL, OPTIM, STATE, CONFIG = "model.pt", "optim.pt", "state.json", "config.json"
DS_TAG = "zero"


def _is_deepspeed(model: nn.Module) -> bool:
    return type(model).__name__ == "DeepSpeedEngine"


def _options(**kw: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _write_json(folder: str, name: str, data: dict[str, Any]) -> None:
    with open(os.path.join(folder, name), "w") as f:
        json.dump(data, f, indent=2)


def save(folder: str, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], rank: int,
         config: dict[str, Any] | None = None) -> None:
    """Write this rank's part of a checkpoint into ``folder`` (a collective: every rank calls it);
    ``config`` (the run's ``to_dict(TrainConfig)``) goes to ``config.json``."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    os.makedirs(folder, exist_ok=True)
    if _is_deepspeed(model):
        model.save_checkpoint(folder, tag=DS_TAG, save_latest=False)
    else:
        model_sd = get_model_state_dict(model, options=_options(cpu_offload=True))
        optim_sd = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
        if rank == 0:
            torch.save(model_sd, os.path.join(folder, MODEL))
            torch.save(optim_sd, os.path.join(folder, OPTIM))
    if rank == 0:
        _write_json(folder, STATE, state)
        if config is not None:
            _write_json(folder, CONFIG, config)
    torch.save(rng_state(), os.path.join(folder, f"rng-rank{rank}.pt"))


def load(folder: str, model: nn.Module, optimizer: torch.optim.Optimizer, rank: int,
         from_rank0: bool = False) -> dict[str, Any]:
    """Restore model, optimizer and this rank's RNG from ``folder``; returns ``state.json``.

    ``from_rank0``: only rank 0 has the files (a rank's local copy of its own checkpoint, for a
    rollback); rank 0 reads them and broadcasts, the other ranks get ``{}`` back."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    if _is_deepspeed(model):
        if from_rank0:
            raise ValueError("a DeepSpeed engine restores from a full checkpoint folder, not rank 0's copy")
        model.load_checkpoint(folder, tag=DS_TAG, load_lr_scheduler_states=False)
        set_rng_state(torch.load(os.path.join(folder, f"rng-rank{rank}.pt"), weights_only=False))
        with open(os.path.join(folder, STATE)) as f:
            return json.load(f)
    has_files = rank == 0 or not from_rank0
    model_sd = torch.load(os.path.join(folder, MODEL), map_location="cpu", weights_only=True) if has_files else {}
    optim_sd = torch.load(os.path.join(folder, OPTIM), map_location="cpu", weights_only=True) if has_files else {}
    options = _options(broadcast_from_rank0=True) if from_rank0 else _options()
    set_model_state_dict(model, model_sd, options=options)
    set_optimizer_state_dict(model, optimizer, optim_sd, options=options)
    rng = os.path.join(folder, f"rng-rank{rank}.pt")
    if os.path.exists(rng):  # absent when the world size changed: keep this run's seeding
        set_rng_state(torch.load(rng, weights_only=False))
    if not has_files:
        return {}
    with open(os.path.join(folder, STATE)) as f:
        return json.load(f)
