"""Domain mixing and curricula: which source the next training sequence comes from, and how long it is.

Pretraining mixes sources (web, code, books, papers, ...) at target weights (The Pile, Gao et
al. 2020; Llama, Touvron et al. 2023), possibly changing over training (a data curriculum, e.g.
annealing on high-quality data at the end, Llama 3). Random sampling only meets the weights in
expectation: over a window of 1,000 sequences a 10% source deviates by about +-1% one sigma.
``Mixer`` instead uses smooth weighted round-robin (nginx's SWRR, a "deficit" scheduler):
each source accrues its weight as credit every step, the source with the most credit is chosen
and pays 1. The credit of a source is exactly (target count so far - realised count so far), and
it stays within a few units, so every window of any length is within a few sequences of its
target share -- far inside 1% of a 1,000-sequence window. Ties are broken by a seeded order of
the sources, so the whole sequence of choices is a pure function of the config and the sizes.

A source that runs out is restarted (up-sampled) with a ``warnings.warn`` when it passes its
first epoch; passing ``max_epochs`` raises ``SourceExhausted`` (the mix is not silently
renormalised, which would change the training distribution). The state (step, credits,
position and epoch per source) is a small JSON-safe dict; restoring it continues the exact same
sequence of choices.

``LengthSchedule`` is a sequence-length curriculum (short sequences first, as in
Li et al. 2022, "The Stability-Efficiency Dilemma"; Llama 3's long-context stage last).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import numpy as np

from raylm.config import ConfigError


class SourceExhausted(RuntimeError):
    """A source would have to be repeated more than ``MixConfig.max_epochs`` times."""


def _check_weights(where: str, weights: Mapping[str, float]) -> None:
    if not weights:
        raise ConfigError(f"{where}: no sources")
    for name, w in weights.items():
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise ConfigError(f"{where}.{name}: weight {w!r} must be a finite number >= 0")
    if sum(weights.values()) <= 0:
        raise ConfigError(f"{where}: the weights sum to 0")


@dataclasses.dataclass(kw_only=True)
class MixConfig:
    weights: dict[str, float]
    """Target share of each source from step 0; normalised to sum to 1."""
    schedule: list[tuple[int, dict[str, float]]] = dataclasses.field(default_factory=list)
    """Curriculum: ``(step, weights)`` points with strictly increasing steps > 0, where a step
    is one chosen sequence. Sources missing from a point's weights get 0 there; sources that
    appear only in the schedule have weight 0 before. See ``interpolation``."""
    interpolation: Literal["step", "linear"] = "step"
    """``step``: the weights of the last point at or before the step hold (the point at step 0
    being ``weights``). ``linear``: weights move linearly from one point to the next and hold
    after the last one (add a point with unchanged weights to hold them before a ramp)."""
    max_epochs: float = 4.0
    """Most passes over any one source; going past one pass warns, past this raises."""
    window: int = 1000
    """Window (in sequences) over which the realised shares are guaranteed within 1% of the
    target; only checked for plausibility here, the scheduler's bound holds for any window."""
    seed: int = 0
    """Seeds the tie-break order between sources."""

    def validate(self) -> None:
        _check_weights("weights", self.weights)
        last = 0
        for i, point in enumerate(self.schedule):
            if len(point) != 2:
                raise ConfigError(f"schedule[{i}]: expected (step, weights), got {point!r}")
            step, weights = point
            if step <= last:
                raise ConfigError(
                    f"schedule[{i}]: step {step} must be > {last} (steps strictly increasing, > 0)"
                )
            _check_weights(f"schedule[{i}]", weights)
            last = step
        if self.interpolation not in ("step", "linear"):
            raise ConfigError(f"interpolation: {self.interpolation!r} is not one of ['step', 'linear']")
        if not self.max_epochs > 0:
            raise ConfigError(f"max_epochs: {self.max_epochs} must be > 0")
        if self.window < 1:
            raise ConfigError(f"window: {self.window} must be at least 1")

    @property
    def sources(self) -> list[str]:
        names = set(self.weights)
        for _, w in self.schedule:
            names |= set(w)
        return sorted(names)


class Mixer:
    """Deterministic choice of the source of every next sequence.

    ``sizes`` is the number of sequences (or documents; whatever one choice consumes) in one
    epoch of each source. ``next()`` returns ``(source, index)`` with ``index`` the position in
    that source's current epoch (``0..sizes[source]-1``, restarting each epoch)."""

    def __init__(self, cfg: MixConfig, sizes: Mapping[str, int]) -> None:
        cfg.validate()
        self.cfg = cfg
        self.sources = cfg.sources
        missing = [s for s in self.sources if s not in sizes]
        if missing:
            raise ConfigError(f"mixer: no size given for sources {missing}")
        self.sizes = {s: int(sizes[s]) for s in self.sources}
        points = [(0, cfg.weights), *cfg.schedule]
        self._steps = [s for s, _ in points]
        self._weights = [self._normalise(w) for _, w in points]
        for name in self.sources:
            if self.sizes[name] <= 0 and any(w[self.sources.index(name)] > 0 for w in self._weights):
                raise ConfigError(f"mixer: source {name!r} has weight > 0 but no sequences")
        order = np.random.default_rng(cfg.seed).permutation(len(self.sources))
        self._rank = [int(r) for r in np.argsort(order)]  # lower rank wins a tie
        self.step = 0
        self._credit = [0.0] * len(self.sources)
        self._position = [0] * len(self.sources)
        self._epoch = [0] * len(self.sources)
        self.last_epoch = 0
        """The epoch of the source chosen by the latest ``next()``."""

    def _normalise(self, weights: Mapping[str, float]) -> list[float]:
        total = float(sum(weights.values()))
        return [float(weights.get(s, 0.0)) / total for s in self.sources]

    def weights_at(self, step: int) -> dict[str, float]:
        """Target weights at ``step`` (normalised)."""
        return dict(zip(self.sources, self._weights_at(step)))

    def _weights_at(self, step: int) -> list[float]:
        i = bisect.bisect_right(self._steps, step) - 1
        if self.cfg.interpolation == "step" or i == len(self._steps) - 1:
            return self._weights[i]
        s0, s1 = self._steps[i], self._steps[i + 1]
        t = (step - s0) / (s1 - s0)
        return [a + (b - a) * t for a, b in zip(self._weights[i], self._weights[i + 1])]

    def next(self) -> tuple[str, int]:
        """Choose the source of the next sequence; returns ``(source, index in its epoch)``."""
        weights = self._weights_at(self.step)
        credit = [c + w for c, w in zip(self._credit, weights)]
        best = max(range(len(credit)), key=lambda i: (credit[i], -self._rank[i]))
        name = self.sources[best]
        size = self.sizes[name]
        used = self._epoch[best] * size + self._position[best]
        if used + 1 > self.cfg.max_epochs * size:
            raise SourceExhausted(
                f"source {name!r} ({size} sequences) is exhausted after {used / size:g} epochs "
                f"(max_epochs={self.cfg.max_epochs:g}) at step {self.step}; lower its weight or add data"
            )
        index = self._position[best]
        self.last_epoch = self._epoch[best]
        if index == 0 and self._epoch[best] == 1:
            warnings.warn(
                f"source {name!r} ({size} sequences) starts its epoch 2 at step {self.step}: it is up-sampled",
                stacklevel=2,
            )
        credit[best] -= 1.0
        self._credit = credit
        self.step += 1
        self._position[best] += 1
        if self._position[best] == size:
            self._position[best] = 0
            self._epoch[best] += 1
        return name, index

    def take(self, n: int) -> list[str]:
        """The sources of the next ``n`` sequences."""
        return [self.next()[0] for _ in range(n)]

    def __iter__(self) -> Iterator[tuple[str, int]]:
        while True:
            yield self.next()

    def epochs(self) -> dict[str, float]:
        """Passes made over each source so far."""
        return {s: (self._epoch[i] * self.sizes[s] + self._position[i]) / self.sizes[s] if self.sizes[s] else 0.0
                for i, s in enumerate(self.sources)}  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """A small JSON-safe dict; ``load_state_dict`` of it resumes the exact same choices."""
        return {
            "step": self.step,
            "credit": dict(zip(self.sources, self._credit)),
            "position": dict(zip(self.sources, self._position)),
            "epoch": dict(zip(self.sources, self._epoch)),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key in ("credit", "position", "epoch"):
            if set(state[key]) != set(self.sources):
                raise ValueError(
                    f"mixer state: {key} names {sorted(state[key])}, this mixer has {self.sources}"
                )
        self.step = int(state["step"])
        self._credit = [float(state["credit"][s]) for s in self.sources]
        self._position = [int(state["position"][s]) for s in self.sources]
        self._epoch = [int(state["epoch"][s]) for s in self.sources]


@dataclasses.dataclass
class LengthSchedule:
    """Sequence-length curriculum: ``points`` are ``(step, seq_len)``; the length at a step is
    that of the last point whose step is <= it. The first point must be at step 0."""

    points: list[tuple[int, int]]

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not self.points:
            raise ConfigError("points: at least one (step, seq_len) point is needed")
        if self.points[0][0] != 0:
            raise ConfigError(f"points[0]: the first point must be at step 0, got {self.points[0][0]}")
        for i, (step, seq_len) in enumerate(self.points):
            if seq_len <= 0:
                raise ConfigError(f"points[{i}]: seq_len {seq_len} must be > 0")
            if i and step <= self.points[i - 1][0]:
                raise ConfigError(f"points[{i}]: step {step} must be greater than {self.points[i - 1][0]}")

    def seq_len_at(self, step: int) -> int:
        if step < 0:
            raise ValueError(f"step {step} must not be negative")
        i = bisect.bisect_right([s for s, _ in self.points], step) - 1
        return int(self.points[i][1])
