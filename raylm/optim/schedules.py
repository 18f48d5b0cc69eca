"""Learning-rate schedules as pure functions of the step: ``lr_multiplier(cfg, step)``.

A schedule gives the multiplier of the peak learning rate at optimizer step ``step`` (the
number of updates already taken: 0 for the first one). The trainer calls
``apply_lr(optimizer, peak_lr, lr_multiplier(cfg, step))`` before each update, so a schedule
has no state to checkpoint and a resumed run gets the same lr from the step alone.

Every schedule starts with a linear warmup (Goyal et al. 2017) counted as in nanoGPT:
``(step + 1) / (warmup_steps + 1)`` for ``step < warmup_steps``, so the first update is not
wasted at lr 0 and the peak (1.0) is reached at ``step == warmup_steps``. After it:

- ``cosine``: half a cosine from 1 to ``min_lr_ratio`` at ``total_steps`` (Loshchilov &
  Hutter 2017, "SGDR"; as in GPT-3, Chinchilla and Llama, which decay to 10% of the peak).
- ``wsd``: warmup-stable-decay (Hu et al. 2024, "MiniCPM"; Hägele et al. 2024, "Scaling Laws
  and Compute-Optimal Training Beyond Fixed Training Durations"): 1 until the last
  ``decay_fraction`` of the steps, then down to ``min_lr_ratio`` along ``decay_shape``
  ("sqrt" is Hägele et al.'s 1 - sqrt cooldown). A run can be extended from any checkpoint
  of the stable phase, and only the short decay needs rerunning.
- ``linear``: a straight line from 1 to ``min_lr_ratio`` at ``total_steps``.
- ``inverse_sqrt``: ``sqrt(warmup_steps / step)`` (fairseq's, and T5's ``1/sqrt(step)``
  rescaled to be 1 at the end of the warmup); it never ends, so ``total_steps`` and
  ``min_lr_ratio`` are unused.
- ``noam``: Vaswani et al. 2017 ("Attention Is All You Need", sec. 5.3),
  ``d_model^-0.5 * min(s^-0.5, s * warmup_steps^-1.5)`` with ``s = step + 1`` (the paper
  counts from 1), divided by its peak ``(d_model * warmup_steps)^-0.5`` so that it is 1 at
  ``s == warmup_steps``. After that division ``d_model`` cancels: the multiplier is
  ``min(s / warmup_steps, sqrt(warmup_steps / s))``, and ``noam_peak_lr(cfg)`` gives the
  paper's absolute peak lr to use as ``peak_lr`` when reproducing it. The shape is
  ``inverse_sqrt``'s up to that step offset and the paper's own warmup.
- ``constant``: 1 after the warmup.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal, get_args

from raylm.config import ConfigError

ScheduleName = Literal["cosine", "wsd", "linear", "inverse_sqrt", "noam", "constant"]
DecayShape = Literal["linear", "cosine", "sqrt"]

# Schedules that end at total_steps (and so need it).
_DECAYING = ("cosine", "wsd", "linear")


@dataclasses.dataclass(kw_only=True, slots=True)
class ScheduleConfig:
    """The shape of the learning rate over training, as a multiplier of the peak lr."""

    name: ScheduleName = "cosine"
    """Which schedule (see the module docstring)."""
    warmup_steps: int = 0
    """Steps of linear warmup from ~0 to the peak; 0 starts at the peak. ``inverse_sqrt`` and
    ``noam`` need at least 1 (their decay is relative to it)."""
    total_steps: int | None = None
    """Optimizer steps of the whole run, where ``cosine``/``linear``/``wsd`` reach
    ``min_lr_ratio``. None: the trainer fills it from its own step count."""
    min_lr_ratio: float = 0.1
    """Final lr as a fraction of the peak, in [0, 1] (``cosine``, ``wsd``, ``linear``)."""
    decay_fraction: float = 0.2
    """``wsd`` only: share of ``total_steps`` spent in the final decay, in (0, 1]."""
    decay_shape: DecayShape = "linear"
    """``wsd`` only: the decay's shape, from 1 to ``min_lr_ratio``: "linear", "cosine"
    (half a cosine) or "sqrt" (``1 - sqrt(progress)``, Hägele et al. 2024)."""
    d_model: int | None = None
    """``noam`` only: model width of the paper's ``d_model^-0.5`` factor; it cancels in the
    normalised multiplier and is used by ``noam_peak_lr``."""

    @property
    def decay_start(self) -> int:
        """``wsd``: the first step of the decay (needs ``total_steps``)."""
        total = _require_total(self)
        return total - round(self.decay_fraction * total)

    def validate(self) -> None:
        if self.name not in get_args(ScheduleName):
            raise ConfigError(f"name: {self.name!r} is not one of {list(get_args(ScheduleName))}")
        if self.decay_shape not in get_args(DecayShape):
            raise ConfigError(
                f"decay_shape: {self.decay_shape!r} is not one of {list(get_args(DecayShape))}"
            )
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps: {self.warmup_steps} must not be negative")
        if self.name in ("inverse_sqrt", "noam") and self.warmup_steps < 1:
            raise ConfigError(f"warmup_steps: the {self.name!r} schedule needs at least 1")
        if self.total_steps is not None and self.total_steps < 1:
            raise ConfigError(f"total_steps: {self.total_steps} must be at least 1")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio: {self.min_lr_ratio} must be in [0, 1]")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ConfigError(f"decay_fraction: {self.decay_fraction} must be in (0, 1]")
        if self.d_model is not None and self.d_model < 1:
            raise ConfigError(f"d_model: {self.d_model} must be at least 1")
        if self.total_steps is not None and self.name in _DECAYING:
            if self.warmup_steps > self.total_steps:
                raise ConfigError(
                    f"warmup_steps: {self.warmup_steps} exceeds total_steps={self.total_steps}"
                )
            if self.name == "wsd" and self.decay_start < self.warmup_steps:
                raise ConfigError(
                    f"decay_fraction: the decay would start at step {self.decay_start}, inside the "
                    f"warmup (warmup_steps={self.warmup_steps}, total_steps={self.total_steps})"
                )


def _require_total(cfg: ScheduleConfig) -> int:
    if cfg.total_steps is None:
        raise ConfigError(f"total_steps: the {cfg.name!r} schedule needs it (the trainer fills it)")
    return cfg.total_steps


def _decay(shape: DecayShape, progress: float) -> float:
    """From 1 at ``progress`` 0 to 0 at 1."""
    if shape == "linear":
        return 1.0 - progress
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - math.sqrt(progress)


def lr_multiplier(cfg: ScheduleConfig, step: int) -> float:
    """Multiplier of the peak lr for the update at ``step`` (0-based); see the module docstring."""
    if step < 0:
        raise ValueError(f"step {step} must not be negative")
    warmup = cfg.warmup_steps
    if cfg.name == "noam":
        s = step + 1
        return min(s / warmup, math.sqrt(warmup / s))
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "inverse_sqrt":
        return math.sqrt(warmup / step)
    total = _require_total(cfg)
    floor = cfg.min_lr_ratio
    if cfg.name == "wsd":
        start = cfg.decay_start
        if step < start:
            return 1.0
        progress = min(1.0, (step - start) / max(1, total - start))
        return floor + (1.0 - floor) * _decay(cfg.decay_shape, progress)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    shape: DecayShape = "cosine" if cfg.name == "cosine" else "linear"
    return floor + (1.0 - floor) * _decay(shape, progress)


def lr_at(cfg: ScheduleConfig, peak_lr: float, step: int) -> float:
    """The learning rate at ``step``: ``peak_lr * lr_multiplier(cfg, step)``."""
    return peak_lr * lr_multiplier(cfg, step)


def noam_peak_lr(cfg: ScheduleConfig) -> float:
    """The peak lr of Vaswani et al.'s formula, ``(d_model * warmup_steps)^-0.5``; with it as
    ``peak_lr``, ``lr_at`` reproduces the paper's schedule exactly."""
    if cfg.d_model is None:
        raise ConfigError("d_model: noam_peak_lr needs it")
    return (cfg.d_model * cfg.warmup_steps) ** -0.5


def plot_schedules(
    cfgs: dict[str, ScheduleConfig], peak_lr: float, total_steps: int, path: str | Path
) -> Path:
    """Write a PNG of the lr of each named schedule over ``total_steps`` steps (each config's
    ``total_steps`` is replaced by this one) and return its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot: leaves the caller's backend alone
    ax = fig.add_subplot()
    steps = range(total_steps + 1)
    for label, cfg in cfgs.items():
        cfg = dataclasses.replace(cfg, total_steps=total_steps)
        cfg.validate()
        ax.plot(list(steps), [lr_at(cfg, peak_lr, s) for s in steps], label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
