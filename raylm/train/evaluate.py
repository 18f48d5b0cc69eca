"""Held-out evaluation inside the Ray Train loop: which sets, when, and the distributed sums.

The sets are the held-out splits of the training folders (``raylm prepare`` with ``val:``
writes ``<folder>/val`` and names it in the folder's manifest), named by their source, plus
``eval.sets``. Every rank loads the same sequences of every set once (``raylm.train.heldout.
load_set``), evaluates its data-parallel slice with ``loss_sums`` (the function ``raylm eval``
uses) and the sums are all-reduced, so the numbers are those of one process over the whole
set (token-weighted), under DDP, FSDP2 (whose forward is a collective: every rank runs the
same number of forwards) and DeepSpeed alike; the ranks of a tensor-parallel group share one
slice and only the first of them adds its sums.

An evaluation leaves training as it was: the model goes back to train mode, the RNG states
(torch, numpy, Python) are restored, and the training data loader is not touched, so a run
with evaluation trains exactly as one without, and resumes exactly.

Hooks: ``Evaluator(..., hooks=[f])`` calls ``f(model, ctx)`` on every rank after the losses,
with the unwrapped model in eval mode and an ``EvalContext``; the metrics it returns join the
report (e.g. generation samples; under FSDP2 every rank must call the model alike).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from raylm.config import ConfigError
from raylm.storage import InputError
from raylm.train.checkpoint import rng_state, set_rng_state
from raylm.train.config import TrainConfig
from raylm.train.heldout import EvalSet, group_names, load_set, loss_sums, metrics, source_name
from raylm.train.objective import batch_transform
from raylm.train.parallel import unwrap
from raylm.train.run import Manifests, training_folders


@dataclasses.dataclass(frozen=True)
class EvalContext:
    """What a hook is told about the evaluation it runs in."""

    step: int
    """Optimizer steps done (0: before the first, ``eval.at_start``)."""
    rank: int
    world_size: int
    device: torch.device


EvalHook = Callable[[nn.Module, EvalContext], dict[str, Any] | None]


def val_split(folder: str, manifests: Manifests) -> str | None:
    """The held-out split a token-shard folder's manifest names (None: none, or no manifest)."""
    val = (manifests.get(folder) or {}).get("val")
    return f"{folder.rstrip('/')}/{val}" if val else None


def eval_sets(cfg: TrainConfig, manifests: Manifests) -> dict[str, str]:
    """Name -> folder of every set the run evaluates (see the module docstring)."""
    out: dict[str, str] = {}
    if cfg.eval.data_val:
        for key, folder in training_folders(cfg).items():
            val = val_split(folder, manifests)
            if val is not None:
                out[key.removeprefix("data.sources.") if cfg.data.sources else
                    source_name(folder, manifests.read(folder))] = val
    for name, folder in cfg.eval.sets.items():
        if name in out:
            raise ConfigError(f"eval.sets.{name}: the name of the held-out split of a training source; "
                              "pick another, or set eval.data_val: false")
        out[name] = folder
    return out


def check_eval_sets(cfg: TrainConfig, manifests: Manifests) -> None:
    """Driver side, before the run: every set of ``eval.sets`` is a token-shard folder."""
    if not cfg.eval.enabled:
        return
    eval_sets(cfg, manifests)
    for name, folder in cfg.eval.sets.items():
        try:
            manifests.read(folder)
        except InputError as exc:
            raise ConfigError(f"eval.sets.{name}: {exc}") from None


class Evaluator:
    """The loop's evaluation: ``due(step)``, then ``evaluator(model, step)`` on every rank."""

    def __init__(self, cfg: TrainConfig, rank: int, world_size: int, device: torch.device, *,
                 sets: dict[str, str] | None = None,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 hooks: Sequence[EvalHook] = ()) -> None:
        """``sets``: name -> folder, as the driver resolved them (``ResolvedRun.eval_sets``);
        None: ``eval_sets(cfg)`` from the folders' manifests."""
        self.cfg, self.rank, self.world_size, self.device = cfg, rank, world_size, device
        self.hooks = list(hooks)
        tp = cfg.scale.tensor_parallel
        self.dp_rank, self.dp_world, self.contribute = rank // tp, max(1, world_size // tp), rank % tp == 0
        self.sets: list[EvalSet] = []
        if cfg.eval.enabled:
            if sets is None:
                sets = eval_sets(cfg, Manifests())
            self.sets = [load_set(name, folder, cfg.eval.max_sequences) for name, folder in sets.items()]
        self.transform = batch_transform(cfg)
        self.batch_size = cfg.eval.batch_size or cfg.micro_batch_size
        self._autocast = autocast  # the strategy's mixed precision (``Strategy.autocast``)

    @property
    def active(self) -> bool:
        return self.cfg.eval.enabled and bool(self.sets or self.hooks)

    def due(self, step: int) -> bool:
        """Evaluate after optimizer step ``step`` (0: before the first, with ``eval.at_start``)?"""
        e = self.cfg.eval
        if not self.active:
            return False
        if step == 0:
            return e.at_start
        return step >= self.cfg.steps or (e.every > 0 and step % e.every == 0)

    def __call__(self, model: nn.Module, step: int) -> dict[str, Any]:
        inner = unwrap(model)
        rng = rng_state()
        was_training = inner.training
        inner.eval()
        try:
            sums = loss_sums(inner, self.sets, batch_size=self.batch_size, device=self.device, rank=self.dp_rank,
                             world_size=self.dp_world, transform=self.transform, autocast=self._autocast,
                             contribute=self.contribute)
            if dist.is_initialized():
                dist.all_reduce(sums)
            out: dict[str, Any] = metrics(group_names(self.sets, fim_middle=self.transform is None), sums)
            ctx = EvalContext(step=step, rank=self.rank, world_size=self.world_size, device=self.device)
            for hook in self.hooks:
                out.update(hook(inner, ctx) or {})
        finally:
            inner.train(was_training)
            set_rng_state(rng)
        return out
