"""A run's checkpoints on the ranks: everything an exact resume needs, in one Ray Train checkpoint.

The folder's layout is ``raylm.checkpoint``'s. Every rank writes its part into a temporary
folder of its own: the strategy its shards of the model and optimizer state
(``Strategy.save``: DCP's ``__<rank>_0.distcp``, rank 0 also the ``.metadata``; DeepSpeed its
ZeRO partition), rank 0 ``state.json`` (step, data position, spike guard, world size) and
``config.json``, every rank its RNG states. Each rank reports its folder
(``ray.train.report(checkpoint=...)``) under the checkpoint name Ray Train agrees on for all
ranks, and Ray Train copies every rank's files into that one folder of the run's storage: the
files have per-rank names, so the folders merge into one checkpoint (``Checkpointer``). With
``checkpoint.async_save`` the shards are written in the background and the copy waits for them
in Ray Train's upload thread (``ray.train.report(checkpoint_upload_mode=ASYNC)``), so training
goes on meanwhile. The local folders are deleted once copied.

Restoring (``load``) reads the checkpoint as every rank sees it in storage: the strategy
re-shards the state for the world size of this run, and the RNG states come back when the
world size is the one they were saved at (each rank's own stream; at another size every rank
keeps this run's seeding).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raylm.checkpoint import CONFIG, STATE, CheckpointError, checkpoint_kind, read_state, rng_file
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


def save(folder: str, strategy: Strategy, state: dict[str, Any], rank: int, config: dict[str, Any] | None = None,
         async_save: bool = False) -> Future | None:
    """Write this rank's part of a checkpoint into ``folder`` (a collective: every rank calls
    it); ``config`` (the run's ``to_dict(TrainConfig)``) goes to ``config.json``. With
    ``async_save`` the shards are still being written when it returns: the future says when
    they are."""
    os.makedirs(folder, exist_ok=True)
    pending = strategy.save(folder, async_save=async_save)
    if rank == 0:
        _write_json(folder, STATE, state)
        if config is not None:
            _write_json(folder, CONFIG, config)
    torch.save(rng_state(), os.path.join(folder, rng_file(rank)))
    return pending


def load(folder: str, strategy: Strategy, rank: int, world: int) -> dict[str, Any]:
    """Restore model, optimizer (and, at the world size they were saved at, this rank's RNG
    states) from ``folder``; returns its ``state.json``. DeepSpeed's own checkpoint (``zero/``)
    resumes at the world size it was saved at only: another one is an error saying so."""
    state = read_state(folder)
    saved = state.get("world_size", world)
    if saved != world and checkpoint_kind(folder) == "deepspeed":
        raise CheckpointError(f"{folder}: a DeepSpeed checkpoint of {saved} workers cannot resume on {world}: "
                              "DeepSpeed's ZeRO partitions are per rank (resume at scale.num_workers: "
                              f"{saved}, or train with ddp/fsdp2, whose sharded checkpoints re-shard)")
    strategy.load(folder)
    if saved == world:  # older checkpoints: their rng files say
        load_rng(folder, rank)
    return state


class Checkpointer:
    """This rank's side of saving checkpoints through Ray Train, and the latest one saved (for
    the spike guard's rollback): see the module docstring."""

    def __init__(self, name: str, rank: int, async_save: bool, restored: Any = None) -> None:
        self.name, self.rank, self.async_save = name, rank, async_save
        self.latest = restored
        """The latest checkpoint in storage (a ``ray.train.Checkpoint``): the one this run
        restored from, then every one it saved, once all its files are there."""
        self._uploaded = threading.Event()
        self._uploaded.set()

    def report(self, metrics: dict[str, Any], strategy: Strategy | None = None, state: dict[str, Any] | None = None,
               config: dict[str, Any] | None = None) -> None:
        """``ray.train.report(metrics)``, with a checkpoint of ``strategy`` when ``state`` is
        given. Every rank calls it at the same steps."""
        import ray.train
        from ray.train import CheckpointUploadMode

        mode = CheckpointUploadMode.ASYNC if self.async_save else CheckpointUploadMode.SYNC
        if state is None:  # asynchronous like the checkpoints: reports keep their order, no one waits
            ray.train.report(metrics, checkpoint_upload_mode=mode)
            return
        self._uploaded.wait()  # the last checkpoint first (its shards hold the staged state)
        self._uploaded.clear()
        folder = tempfile.mkdtemp(prefix=f"raylm-ckpt-{self.name}-rank{self.rank}-")
        pending = save(folder, strategy, state, self.rank, config=config, async_save=self.async_save)
        storage = ray.train.get_context().get_storage()

        def upload(checkpoint: ray.train.Checkpoint, dir_name: str) -> ray.train.Checkpoint:
            try:
                if pending is not None:
                    pending.result()  # this rank's shards are written
                self.latest = storage.persist_current_checkpoint(checkpoint, dir_name)
                return self.latest
            finally:
                self._uploaded.set()

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder), checkpoint_upload_mode=mode,
                         checkpoint_upload_fn=upload, delete_local_checkpoint_after_upload=True)

    def wait(self) -> None:
        """Until this rank's last checkpoint is in storage."""
        self._uploaded.wait()
