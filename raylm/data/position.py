"""Where a run is in its data order, and the order itself: a pure function of the seed.

Global order (a pure function of ``seed``, ``epoch``, ``N`` and ``window``): the id space
``0..N-1`` is cut into *windows* of ``window`` consecutive indices; each epoch visits the
windows in a seeded random order and the indices inside each window in a seeded random order
(``global_order``). That concatenation is the epoch's order ``O``. With ``B`` sequences per
worker, ``W`` workers and ``A`` micro-batches per optimizer step, global batch ``g`` is
``O[g*B*W:(g+1)*B*W]`` and worker ``r`` takes its ``r``-th block of ``B``; optimizer step ``s``
trains on ``O[s*G:(s+1)*G]``, ``G = B*W*A`` sequences (the *step size*, the run's global
batch). An epoch has ``N // G`` steps; the ``< G`` remaining positions (different sequences
every epoch) are skipped, so every step is whole.

Resume: ``DataPosition`` (epoch, sequences of that epoch consumed by all workers together,
seed, world size, batch size, accumulation, window, N) is global, so rank 0 alone saves it
(``state_dict()`` -> JSON in the checkpoint) and every rank restores it; the next step trains
on the sequences an uninterrupted run would have trained on next. The seed, window, N and the
step size must be the ones the position was saved with (``ValueError`` otherwise); how the step
is split into workers, micro-batches and accumulation may change (``resume_as``): a run
resumed on another number of workers keeps its exact data order, sequence for sequence, per
step. A mixed run (``raylm.data.mixed_loader``) saves a ``MixPosition`` instead: the Mixer's
state with the settings it is valid with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

_POSITION_VERSION = 1
_MIX_VERSION = 1


class _StepSplit:
    """What both positions hold of how an optimizer step is split: ``world_size`` workers,
    ``batch_size`` sequences per worker and micro-batch, ``grad_accum`` micro-batches."""

    world_size: int
    batch_size: int
    grad_accum: int

    @property
    def global_batch_size(self) -> int:
        """Sequences of one micro-batch of every worker."""
        return self.batch_size * self.world_size

    @property
    def step_size(self) -> int:
        """Sequences per optimizer step, all workers together (the run's global batch)."""
        return self.global_batch_size * self.grad_accum

    def _check_step_size(self, now: _StepSplit, what: str) -> None:
        """``ValueError`` unless ``now`` trains as many sequences per step as this position."""
        if self.step_size != now.step_size:
            raise ValueError(
                f"cannot resume the {what} exactly: it was saved with world_size={self.world_size} "
                f"batch_size={self.batch_size} grad_accum={self.grad_accum} ({self.step_size} sequences per "
                f"step) but this run has world_size={now.world_size} batch_size={now.batch_size} "
                f"grad_accum={now.grad_accum} ({now.step_size}); exact resume needs the same global batch "
                f"(set global_batch: {self.step_size} to resume on another number of workers)"
            )


@dataclasses.dataclass(frozen=True)
class DataPosition(_StepSplit):
    """Where a data-parallel run is in its global data order; the same on every rank."""

    epoch: int = 0
    consumed: int = 0
    """Sequences of ``epoch`` already consumed, all workers together (a multiple of the
    global batch size)."""
    seed: int = 0
    world_size: int = 1
    batch_size: int = 1
    """Sequences per worker and micro-batch."""
    window: int = 4096
    num_sequences: int = 0
    grad_accum: int = 1
    """Micro-batches per optimizer step: an epoch ends on a whole step."""

    @property
    def epoch_size(self) -> int:
        """Sequences of an epoch that are trained on (whole steps; the rest is skipped)."""
        return self.num_sequences // self.step_size * self.step_size

    @property
    def sequences_seen(self) -> int:
        """Sequences consumed since the start of training, all workers together."""
        return self.epoch * self.epoch_size + self.consumed

    def advance(self) -> DataPosition:
        """The position after one more global batch (rolling over to the next epoch)."""
        consumed = self.consumed + self.global_batch_size
        if consumed >= self.epoch_size:
            return dataclasses.replace(self, epoch=self.epoch + 1, consumed=0)
        return dataclasses.replace(self, consumed=consumed)

    def state_dict(self) -> dict[str, int]:
        return {"version": _POSITION_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataPosition:
        d = dict(d)
        version = d.pop("version", _POSITION_VERSION)
        if version != _POSITION_VERSION:
            raise ValueError(f"data position version {version} is not {_POSITION_VERSION}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"data position has unknown keys {sorted(unknown)}")
        return cls(**{k: int(v) for k, v in d.items()})

    def resume_as(self, now: DataPosition) -> DataPosition:
        """This position as ``now`` (this run's settings) goes on from it: the same place in
        the same order, split into ``now``'s workers, micro-batches and accumulation. Raises
        ``ValueError`` unless the seed, window, N and the step size are the saved ones."""
        for name, what in (
            ("seed", "data seed"),
            ("window", "shuffle window"),
            ("num_sequences", "number of sequences in the dataset"),
        ):
            saved, then = getattr(self, name), getattr(now, name)
            if saved != then:
                raise ValueError(
                    f"cannot resume the data position exactly: it was saved with {name}={saved} "
                    f"({what}) but this run has {name}={then}; exact resume needs the same {name}"
                )
        self._check_step_size(now, "data position")
        moved = dataclasses.replace(now, epoch=self.epoch, consumed=self.consumed)
        if moved.consumed % moved.global_batch_size:
            raise ValueError(f"data position consumed={moved.consumed} is not a multiple of "
                             f"the global batch size {moved.global_batch_size}")
        return moved


@dataclasses.dataclass(frozen=True)
class MixPosition(_StepSplit):
    """Where a mixed run is: the Mixer's state and the settings it is only valid with."""

    mixer: dict[str, Any]
    sizes: dict[str, int]
    seed: int = 0
    world_size: int = 1
    batch_size: int = 1
    window: int = 4096
    grad_accum: int = 1

    @property
    def sequences_seen(self) -> int:
        return int(self.mixer.get("step", 0))

    def state_dict(self) -> dict[str, Any]:
        return {"version": _MIX_VERSION, "kind": "mix", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MixPosition:
        d = dict(d)
        if d.pop("kind", None) != "mix" or d.pop("version", None) != _MIX_VERSION:
            raise ValueError(f"not a version-{_MIX_VERSION} mixed data position: {sorted(d)}")
        return cls(mixer=d["mixer"], sizes={k: int(v) for k, v in d["sizes"].items()},
                   **{k: int(d[k]) for k in ("seed", "world_size", "batch_size", "window")},
                   grad_accum=int(d.get("grad_accum", 1)))

    def resume_as(self, now: MixPosition) -> MixPosition:
        """This position as ``now`` goes on from it (the Mixer's picks are one stream, whatever
        the split of a step); ``ValueError`` unless the sources, seed, window and step size are
        the saved ones."""
        for name in ("sizes", "seed", "window"):
            saved, then = getattr(self, name), getattr(now, name)
            if saved != then:
                raise ValueError(f"cannot resume the mixed data position exactly: it was saved with "
                                 f"{name}={saved} but this run has {name}={then}")
        self._check_step_size(now, "mixed data position")
        return dataclasses.replace(now, mixer=self.mixer)


def position_from_dict(d: dict[str, Any]) -> Any:
    """A saved data position: ``DataPosition``, or ``MixPosition`` for a mixed run."""
    if d.get("kind") == "mix":
        return MixPosition.from_dict(d)
    return DataPosition.from_dict(d)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([k & 0xFFFFFFFF for k in key] + [len(key)]))


def window_order(num_sequences: int, window: int, seed: int, epoch: int) -> np.ndarray:
    """Indices of the windows in the order epoch ``epoch`` visits them."""
    n_windows = -(-num_sequences // window)
    return _rng(seed, epoch).permutation(n_windows)


def window_ids(num_sequences: int, window: int, seed: int, epoch: int, w: int) -> np.ndarray:
    """The seq_ids of window ``w`` in the order epoch ``epoch`` visits them."""
    lo, hi = w * window, min((w + 1) * window, num_sequences)
    return lo + _rng(seed, epoch, w, 1).permutation(hi - lo)


def global_order(num_sequences: int, window: int, seed: int, epoch: int) -> np.ndarray:
    """The whole epoch order (``O`` of the module docstring); for tests and small data only."""
    parts = [window_ids(num_sequences, window, seed, epoch, int(w))
             for w in window_order(num_sequences, window, seed, epoch)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)
