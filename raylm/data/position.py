"""Where a run is in its data order, and the order itself: a pure function of the seed.

Global order (a pure function of ``seed``, ``epoch``, ``N`` and ``window``): the id space
``0..N-1`` is cut into *windows* of ``window`` consecutive indices; each epoch visits the
windows in a seeded random order and the indices inside each window in a seeded random order
(``global_order``). That concatenation is the epoch's order ``O``. With ``B`` sequences per
worker and ``W`` workers, global batch ``g`` is ``O[g*B*W:(g+1)*B*W]`` and worker ``r`` takes
its ``r``-th block of ``B``. An epoch has ``N // (B*W)`` global batches; the ``< B*W``
remaining positions (different sequences every epoch) are skipped, so every worker always
gets a full batch.

Resume: ``DataPosition`` (epoch, sequences of that epoch consumed by all workers together,
seed, world size, batch size, window, N) is global, so rank 0 alone saves it
(``state_dict()`` -> JSON in the checkpoint) and every rank restores it; the next batch is
global batch ``consumed // (B*W)`` of that epoch, exactly what an uninterrupted run would have
produced next. The world size, per-worker batch size, seed, window and N must be the ones the
position was saved with (``ValueError`` otherwise). A mixed run (``raylm.data.mixed_loader``)
saves a ``MixPosition`` instead: the Mixer's state with the settings it is valid with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

_POSITION_VERSION = 1
_MIX_VERSION = 1


@dataclasses.dataclass(frozen=True)
class DataPosition:
    """Where a data-parallel run is in its global data order; the same on every rank."""

    epoch: int = 0
    consumed: int = 0
    """Sequences of ``epoch`` already consumed, all workers together (a multiple of the
    global batch size)."""
    seed: int = 0
    world_size: int = 1
    batch_size: int = 1
    """Sequences per worker and step."""
    window: int = 4096
    num_sequences: int = 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.num_sequences // self.global_batch_size

    @property
    def sequences_seen(self) -> int:
        """Sequences consumed since the start of training, all workers together."""
        return self.epoch * self.steps_per_epoch * self.global_batch_size + self.consumed

    def advance(self) -> DataPosition:
        """The position after one more global batch (rolling over to the next epoch)."""
        consumed = self.consumed + self.global_batch_size
        if consumed // self.global_batch_size >= self.steps_per_epoch:
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

    def check_compatible(self, other: DataPosition) -> None:
        """Raise ``ValueError`` unless ``other`` (this run's settings) can resume ``self``."""
        for name, what in (
            ("world_size", "number of workers"),
            ("batch_size", "per-worker batch size"),
            ("seed", "data seed"),
            ("window", "shuffle window"),
            ("num_sequences", "number of sequences in the dataset"),
        ):
            saved, now = getattr(self, name), getattr(other, name)
            if saved != now:
                raise ValueError(
                    f"cannot resume the data position exactly: it was saved with {name}={saved} "
                    f"({what}) but this run has {name}={now}; exact resume needs the same {name}"
                )


@dataclasses.dataclass(frozen=True)
class MixPosition:
    """Where a mixed run is: the Mixer's state and the settings it is only valid with."""

    mixer: dict[str, Any]
    sizes: dict[str, int]
    seed: int = 0
    world_size: int = 1
    batch_size: int = 1
    window: int = 4096

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

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
                   **{k: int(d[k]) for k in ("seed", "world_size", "batch_size", "window")})

    def check_compatible(self, other: MixPosition) -> None:
        for name in ("sizes", "seed", "world_size", "batch_size", "window"):
            saved, now = getattr(self, name), getattr(other, name)
            if saved != now:
                raise ValueError(f"cannot resume the mixed data position exactly: it was saved with "
                                 f"{name}={saved} but this run has {name}={now}")


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
