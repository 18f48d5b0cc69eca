"""Data-parallel strategies behind one interface (``base.Strategy``): DDP, FSDP2 (with tensor
parallelism) and DeepSpeed ZeRO, named by ``scale.strategy``."""

from __future__ import annotations

import torch

from raylm.train.config import TrainConfig
from raylm.train.strategy.base import Strategy
from raylm.train.strategy.ddp import DDP
from raylm.train.strategy.deepspeed import DeepSpeed
from raylm.train.strategy.fsdp import FSDP2

STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (DDP, FSDP2, DeepSpeed)}


def build_strategy(cfg: TrainConfig, precision: str, device: torch.device) -> Strategy:
    """The strategy ``cfg.scale.strategy`` names, for a run at ``precision`` on ``device``."""
    return STRATEGIES[cfg.scale.strategy](cfg, precision, device)


__all__ = ["DDP", "FSDP2", "STRATEGIES", "DeepSpeed", "Strategy", "build_strategy"]
