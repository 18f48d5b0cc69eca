"""Optimizers, their parameter groups and learning-rate schedules (pure functions of the step)."""

from __future__ import annotations

from raylm.optim.lion import Lion
from raylm.optim.optimizers import OptimConfig, apply_lr, build_optimizer, decays, param_groups
from raylm.optim.schedules import ScheduleConfig, lr_at, lr_multiplier, noam_peak_lr, plot_schedules

__all__ = [
    "Lion",
    "OptimConfig",
    "ScheduleConfig",
    "apply_lr",
    "build_optimizer",
    "decays",
    "lr_at",
    "lr_multiplier",
    "noam_peak_lr",
    "param_groups",
    "plot_schedules",
]
