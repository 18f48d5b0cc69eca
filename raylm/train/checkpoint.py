"""A run's checkpoints on the ranks: everything an exact resume needs, in one Ray Train checkpoint.

The folder's layout is ``raylm.checkpoint``'s. Here every rank writes its part into its own
temporary folder: the strategy writes the model and optimizer state (``Strategy.save``), rank 0
``state.json`` (step, data position, spike guard, world size) and ``config.json``, every rank
its RNG states; each rank passes its folder to ``ray.train.report(checkpoint=...)`` and Ray
Train gathers the ranks' files into one checkpoint in the run's storage.

This rank's latest folder stays on local disk (``LocalCheckpoints``) for the spike guard's
rollback.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raylm.checkpoint import CONFIG, STATE, read_state, rng_file
from raylm.train.strategy import Strategy


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


def load_rng(folder: str | os.PathLike, rank: int) -> bool:
    """Set this rank's RNG states from checkpoint ``folder``; False when it has none for ``rank``."""
    path = Path(folder) / rng_file(rank)
    if not path.exists():
        return False
    set_rng_state(torch.load(path, weights_only=False))
    return True


def _write_json(folder: str, name: str, data: dict[str, Any]) -> None:
    with open(os.path.join(folder, name), "w") as f:
        json.dump(data, f, indent=2)


def save(folder: str, strategy: Strategy, state: dict[str, Any], rank: int,
         config: dict[str, Any] | None = None) -> None:
    """Write this rank's part of a checkpoint into ``folder`` (a collective: every rank calls
    it); ``config`` (the run's ``to_dict(TrainConfig)``) goes to ``config.json``."""
    os.makedirs(folder, exist_ok=True)
    strategy.save(folder, rank)
    if rank == 0:
        _write_json(folder, STATE, state)
        if config is not None:
            _write_json(folder, CONFIG, config)
    torch.save(rng_state(), os.path.join(folder, rng_file(rank)))


def load(folder: str, strategy: Strategy, rank: int, from_rank0: bool = False) -> dict[str, Any]:
    """Restore model, optimizer and this rank's RNG from ``folder``; returns ``state.json``.

    ``from_rank0``: only rank 0 has the files (a rank's local copy of its own checkpoint, for a
    rollback); rank 0 reads them and broadcasts, the other ranks get ``{}`` back."""
    strategy.load(folder, rank, from_rank0=from_rank0)
    load_rng(folder, rank)  # absent when the world size changed: keep this run's seeding
    return read_state(folder) if rank == 0 or not from_rank0 else {}


class LocalCheckpoints:
    """This rank's latest checkpoint folder stays on local disk (for rollbacks); older go."""

    def __init__(self, name: str, rank: int) -> None:
        self.root = os.path.join(tempfile.gettempdir(), "raylm-ckpt", f"{name}-{os.getpid()}", f"rank{rank}")
        self.latest: str | None = None

    def new(self, step: int) -> str:
        return os.path.join(self.root, f"step-{step:08d}")

    def keep(self, folder: str) -> None:
        if self.latest and self.latest != folder:
            shutil.rmtree(self.latest, ignore_errors=True)
        self.latest = folder
