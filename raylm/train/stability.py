"""Loss-spike guard: skip a bad update, and roll back when spikes keep coming.

PaLM (Chowdhery et al. 2022, sec. 5.1) saw about 20 loss spikes in a 540B run, at irregular
points, and none came back when training restarted "from a checkpoint roughly 100 steps
before the spike started, and skip[ped] roughly 200-500 data batches": a spike is the
interaction of a state of the parameters with particular batches, not bad data alone. This
module decides, per step, between carrying on, dropping one update, and that rollback.

How the trainer uses it, once per optimizer step and on every rank with the same
(all-reduced) loss and grad norm, so every rank takes the same branch:

1. forward/backward, then the global grad norm (before clipping);
2. ``action = guard.check(step, loss, grad_norm)``;
3. "ok": clip and step the optimizer as usual;
   "skip": zero the grads and do not step the optimizer (nor its lr schedule), but advance
   the data, so the batch that caused the spike is not seen again;
   "rollback": reload model, optimizer and step from the last good checkpoint, then advance
   the data past every batch from that checkpoint up to and including the spike's, so the
   run resumes at the checkpoint's step on batches it has not seen.
4. Save ``guard.state_dict()`` in each checkpoint and load it when the *run* resumes
   (after a crash or preemption). On a rollback keep the guard as it is: its record of
   skips must survive, and its loss window holds only accepted losses anyway.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Literal

from raylm.config import ConfigError

Action = Literal["ok", "skip", "rollback"]


@dataclasses.dataclass(kw_only=True, slots=True)
class SpikeGuardConfig:
    """When a training step counts as a loss spike, and what follows."""

    enabled: bool = True
    """False: ``check`` always returns "ok" (and records nothing)."""
    window: int = 50
    """Accepted losses in the running mean that a new loss is compared with."""
    factor: float = 3.0
    """A step is a spike when its loss exceeds ``factor`` times the running mean (> 1)."""
    min_steps: int = 20
    """Accepted losses needed before the loss test applies (the early loss falls fast); at
    most ``window``. Non-finite values and ``max_grad_norm`` apply from the first step."""
    max_grad_norm: float | None = None
    """A step is also a spike when its global grad norm before clipping exceeds this.
    None: the grad norm is only checked for being finite."""
    max_spikes: int = 3
    """The ``max_spikes``-th spike within ``spike_window`` steps (since the last rollback)
    asks for a rollback instead of a skip."""
    spike_window: int = 100
    """Steps over which spikes are counted towards ``max_spikes``."""

    def validate(self) -> None:
        for name in ("window", "min_steps", "max_spikes", "spike_window"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: {getattr(self, name)} must be at least 1")
        if self.min_steps > self.window:
            raise ConfigError(f"min_steps: {self.min_steps} exceeds window={self.window}")
        if not self.factor > 1.0:
            raise ConfigError(f"factor: {self.factor} must be greater than 1")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm: {self.max_grad_norm} must be positive")


def _json_float(x: float) -> float | str:
    """Strict JSON has no NaN/inf: those become the strings "nan", "inf", "-inf"."""
    return x if math.isfinite(x) else str(x)


class SpikeGuard:
    """Classifies each step as "ok", "skip" or "rollback" (see the module docstring).

    ``records`` lists every spike as ``{"step", "loss", "grad_norm", "reason", "action"}``
    with reason one of "nonfinite_loss", "nonfinite_grad_norm", "grad_norm", "loss"."""

    def __init__(self, cfg: SpikeGuardConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self._losses: collections.deque[float] = collections.deque(maxlen=cfg.window)
        self._recent: list[int] = []  # steps of the spikes since the last rollback
        self.records: list[dict[str, Any]] = []
        self.rollbacks = 0

    @property
    def running_mean(self) -> float | None:
        """Mean of the last ``window`` accepted losses; None before any."""
        return sum(self._losses) / len(self._losses) if self._losses else None

    @property
    def skipped_steps(self) -> list[int]:
        """Steps whose update was not applied (skipped or rolled back), in order."""
        return [r["step"] for r in self.records]

    def _reason(self, loss: float, grad_norm: float) -> str | None:
        cfg = self.cfg
        if not math.isfinite(loss):
            return "nonfinite_loss"
        if not math.isfinite(grad_norm):
            return "nonfinite_grad_norm"
        if cfg.max_grad_norm is not None and grad_norm > cfg.max_grad_norm:
            return "grad_norm"
        mean = self.running_mean
        if len(self._losses) >= cfg.min_steps and mean is not None and loss > cfg.factor * mean:
            return "loss"
        return None

    def check(self, step: int, loss: float, grad_norm: float) -> Action:
        """The action for ``step`` given its (global) loss and pre-clip grad norm."""
        if not self.cfg.enabled:
            return "ok"
        loss, grad_norm = float(loss), float(grad_norm)
        reason = self._reason(loss, grad_norm)
        if reason is None:
            self._losses.append(loss)
            return "ok"
        self._recent = [s for s in self._recent if step - self.cfg.spike_window < s <= step]
        self._recent.append(step)
        action: Action = "skip"
        if len(self._recent) >= self.cfg.max_spikes:
            action = "rollback"
            self._recent = []  # the rollback answers these; count afresh after it
            self.rollbacks += 1
        self.records.append(
            {
                "step": step,
                "loss": _json_float(loss),
                "grad_norm": _json_float(grad_norm),
                "reason": reason,
                "action": action,
            }
        )
        return action

    def state_dict(self) -> dict[str, Any]:
        """A JSON-safe snapshot (strict JSON: no NaN) for the trainer's checkpoints."""
        return {
            "losses": list(self._losses),
            "recent_spikes": list(self._recent),
            "records": [dict(r) for r in self.records],
            "rollbacks": self.rollbacks,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._losses = collections.deque((float(x) for x in state["losses"]), maxlen=self.cfg.window)
        self._recent = [int(s) for s in state["recent_spikes"]]
        self.records = [dict(r) for r in state["records"]]
        self.rollbacks = int(state["rollbacks"])
