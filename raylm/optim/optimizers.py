"""The optimizer: its config, the one place its parameter groups are built, and the lr setter.

Parameter groups (nanoGPT's ``configure_optimizers``, OLMo-core's group overrides by name
pattern) follow one rule for weight decay: a parameter is decayed when it is a matrix
(``ndim >= 2``) and not an embedding (its name does not contain "embed"). Embeddings, norm
weights and biases are not: decaying them pulls rare tokens' rows and the norms' gains
towards 0 for no regularising benefit (GPT-2/nanoGPT, OLMo). The output projection (lm_head),
a matrix, is decayed; a tied one is the embedding and is not.

Each group also carries an ``lr_scale``: its lr is ``peak_lr * schedule multiplier *
lr_scale``. Scales are given per name pattern (``fnmatch``), so μP's per-layer learning rates
(Yang et al. 2022) are one mapping, e.g. ``{"layers.*": 1 / width_mult}``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Literal, get_args

import torch
from torch import nn

from raylm.config import ConfigError
from raylm.optim.lion import Lion
from raylm.optim.schedules import ScheduleConfig

OptimizerName = Literal["adamw", "lion", "adafactor"]

# Prefixes that torch.compile and activation checkpointing add to parameter names.
_WRAPPER_PREFIXES = ("_orig_mod.", "_checkpoint_wrapped_module.")


@dataclasses.dataclass(kw_only=True, slots=True)
class OptimConfig:
    """The optimizer and its learning-rate schedule."""

    name: OptimizerName = "adamw"
    """Which optimizer: "adamw" (Loshchilov & Hutter 2019), "lion" (Chen et al. 2023) or
    "adafactor" (Shazeer & Stern 2018, torch's implementation)."""
    lr: float = 3e-4
    """Peak learning rate (the schedule multiplies it). Lion wants 3-10x less than AdamW.
    Adafactor's lr is relative (an update is about lr x the parameter's RMS); ~1e-2."""
    beta1: float = 0.9
    """AdamW/Lion: decay of the gradient momentum (unused by Adafactor)."""
    beta2: float = 0.95
    """AdamW: decay of the squared-gradient average (0.95 as GPT-3 and Llama, steadier than
    0.999 at scale). Lion: decay of its momentum; the paper's default is 0.99. Unused by
    Adafactor, whose second-moment decay follows its own schedule."""
    eps: float = 1e-8
    """AdamW: added to the denominator (unused by Lion and Adafactor)."""
    weight_decay: float = 0.1
    """Decoupled weight decay (``p -= lr * weight_decay * p``) of the decayed group; the other
    group gets 0. Lion wants 3-10x more than AdamW."""
    fused: bool | None = None
    """AdamW: use the fused kernel. None: fused when every parameter is on CUDA."""
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    """The learning-rate schedule."""

    def validate(self) -> None:
        if self.name not in get_args(OptimizerName):
            raise ConfigError(f"name: {self.name!r} is not one of {list(get_args(OptimizerName))}")
        if not self.lr > 0:
            raise ConfigError(f"lr: {self.lr} must be positive")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}: {getattr(self, name)} must be in [0, 1)")
        if not self.eps > 0:
            raise ConfigError(f"eps: {self.eps} must be positive")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay: {self.weight_decay} must not be negative")
        if self.fused and self.name != "adamw":
            raise ConfigError(f"fused: only adamw has a fused kernel, not {self.name!r}")
        try:
            self.schedule.validate()
        except ConfigError as exc:
            raise ConfigError(f"schedule.{exc}") from None


def _clean_name(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def decays(name: str, param: torch.Tensor) -> bool:
    """The weight-decay rule: matrices that are not embeddings (see the module docstring)."""
    return param.ndim >= 2 and "embed" not in name


def param_groups(
    model: nn.Module, cfg: OptimConfig, lr_scale: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """Every trainable parameter of ``model`` exactly once, in groups keyed by (decayed or not,
    the first ``lr_scale`` pattern its name matches).

    A group holds ``params``, ``param_names``, ``name`` ("decay", "no_decay", or e.g.
    "decay:layers.*" for a pattern's share), ``weight_decay``, ``lr_scale`` (1.0 without a
    pattern) and ``lr = cfg.lr * lr_scale``. Names are matched with the prefixes of
    torch.compile and activation checkpointing removed. A pattern that matches no parameter
    is an error (a typo would otherwise silently leave the lr unscaled)."""
    scales = dict(lr_scale or {})
    for pattern, scale in scales.items():
        if not scale > 0:
            raise ValueError(f"lr_scale[{pattern!r}]: {scale} must be positive")
    groups: dict[tuple[bool, str | None], dict[str, Any]] = {}
    matched: set[str] = set()
    for raw_name, param in model.named_parameters():  # a tied parameter is listed once
        if not param.requires_grad:
            continue
        name = _clean_name(raw_name)
        pattern = next((p for p in scales if fnmatch.fnmatchcase(name, p)), None)
        decay = decays(name, param)
        group = groups.get((decay, pattern))
        if group is None:
            kind = "decay" if decay else "no_decay"
            scale = 1.0 if pattern is None else float(scales[pattern])
            group = {
                "name": kind if pattern is None else f"{kind}:{pattern}",
                "params": [],
                "param_names": [],
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "lr_scale": scale,
                "lr": cfg.lr * scale,
            }
            groups[(decay, pattern)] = group
        group["params"].append(param)
        group["param_names"].append(name)
        if pattern is not None:
            matched.add(pattern)
    unmatched = [p for p in scales if p not in matched]
    if unmatched:
        raise ValueError(f"lr_scale: pattern {unmatched[0]!r} matches no trainable parameter")
    return list(groups.values())


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, lr_scale: dict[str, float] | None = None
) -> torch.optim.Optimizer:
    """The optimizer of ``cfg`` over ``param_groups(model, cfg, lr_scale)``; call it after
    the model is sharded (FSDP2 replaces parameters with DTensors)."""
    cfg.validate()
    groups = param_groups(model, cfg, lr_scale)
    if cfg.name == "adamw":
        on_cuda = all(p.device.type == "cuda" for g in groups for p in g["params"])
        fused = on_cuda if cfg.fused is None else cfg.fused
        return torch.optim.AdamW(
            groups,
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            fused=fused or None,  # None (not False) lets torch pick foreach
        )
    if cfg.name == "lion":
        return Lion(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    if torch.distributed.is_available():
        from torch.distributed.tensor import DTensor

        if any(isinstance(p, DTensor) for g in groups for p in g["params"]):
            # Its factored second moment reduces over a sharded dim and then updates the
            # partial result in place, which DTensor refuses (checked with torch 2.13).
            raise ConfigError(
                "name: torch.optim.Adafactor does not support DTensor (FSDP2) parameters; "
                "use adamw or lion, or the ddp strategy"
            )
    return torch.optim.Adafactor(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def apply_lr(optimizer: torch.optim.Optimizer, peak_lr: float, multiplier: float) -> None:
    """Set every group's lr to ``peak_lr * multiplier * group["lr_scale"]`` (``multiplier``
    is the schedule's, ``lr_multiplier(cfg.schedule, step)``)."""
    for group in optimizer.param_groups:
        group["lr"] = peak_lr * multiplier * group.get("lr_scale", 1.0)
