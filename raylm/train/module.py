"""The train module: one optimizer step of the model, apart from the loop around it.

OLMo-core's split: the *train module* owns the model, the optimizer and the strategy that
shares them over the workers (``raylm.train.strategy``), and does forward, loss, backward, the
gradient norm and the optimizer update; the *loop* (``raylm.train.loop``) owns the data, the
schedule of logging, evaluation and checkpoints, and the spike guard's decision.

The loss is the mean over every predicted token of the *global* batch: each rank sums its
token losses, the number of target tokens is all-reduced first, and each rank backpropagates
``sum * world / n_tokens`` (DDP, FSDP2 and DeepSpeed average gradients over ranks), so a
2-worker run follows the 1-worker run with the same global batch, whatever the tokens per rank.
Multi-token prediction adds its depths' terms the same way (``raylm.train.mtp``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from raylm.data.loader import IGNORE_INDEX
from raylm.model import Transformer
from raylm.model.mup import mup_lr_scale
from raylm.optim.optimizers import build_optimizer
from raylm.optim.schedules import lr_multiplier
from raylm.train.config import TrainConfig
from raylm.train.mtp import MTPObjective
from raylm.train.strategy import Strategy


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the ranks, in place (``x`` itself outside a process group)."""
    if dist.is_initialized():
        dist.all_reduce(x)
    return x


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one optimizer step's forward and backward measured, the same on every rank."""

    loss: float
    """Mean loss over the global batch's predicted tokens."""
    grad_norm: float
    """Global gradient norm before clipping."""
    lr_multiplier: float
    """The schedule's multiplier of ``optim.lr`` at this step."""
    metrics: dict[str, float]
    """More figures of the step (``mtp_loss_<k>``)."""


def build_model(cfg: TrainConfig, device: torch.device) -> Transformer:
    """The run's model on ``device``, initialised from ``cfg.seed`` (the same on every rank)."""
    torch.manual_seed(cfg.seed)
    with torch.device("meta"):
        model = Transformer(cfg.model)
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights()
    return model


class TrainModule:
    """The model, its optimizer and the strategy; ``train_step`` and ``optimizer_step``."""

    def __init__(self, cfg: TrainConfig, strategy: Strategy, model: Transformer, world: int) -> None:
        self.cfg, self.strategy, self.world, self.device = cfg, strategy, world, strategy.device
        self.model: nn.Module = strategy.wrap(model)
        self.optimizer = build_optimizer(self.model, cfg.optim, mup_lr_scale(cfg.model))

    def setup(self) -> None:
        """Hand the optimizer to the strategy (DeepSpeed builds its engine here, after any
        weights were loaded into the plain model)."""
        self.strategy.setup(self.optimizer)
        self.model = self.strategy.model

    @property
    def module(self) -> Transformer:
        return self.strategy.module

    def train_step(self, micro: list[dict[str, Any]], step: int) -> StepResult:
        """Forward and backward over the ``grad_accum`` micro-batches of optimizer step
        ``step + 1`` (``step`` updates done), then the gradient norm; the update itself waits
        for ``optimizer_step`` (the spike guard decides in between)."""
        s, device = self.strategy, self.device
        n_tokens = all_sum(torch.tensor(float(sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in micro)),
                                        device=device))
        loss_sum = torch.zeros((), device=device)
        mtp = MTPObjective(self.cfg.model, micro, device, all_sum) if self.cfg.model.mtp_heads else None
        for i, b in enumerate(micro):
            last = i == len(micro) - 1
            with s.no_sync(last), s.autocast():
                logits = self.model(b["input_ids"].to(device), position_ids=b["position_ids"].to(device),
                                    cu_seqlens=b["cu_seqlens"].to(device), max_seqlen=b["max_seqlen"],
                                    mtp=mtp is not None)
                if mtp is not None:
                    logits, mtp_logits = logits
                part = self.module.loss_sum(logits, b["labels"].to(device))
                objective = part * self.world / n_tokens
                if mtp is not None:
                    objective = objective + mtp.term(self.module, i, mtp_logits) * self.world
                s.backward(objective, last)
            loss_sum += part.detach()
        loss = float(all_sum(loss_sum) / n_tokens)
        metrics = mtp.metrics(all_sum) if mtp is not None else {}
        multiplier = lr_multiplier(self.cfg.optim.schedule, step)  # the schedule counts updates from 0
        return StepResult(loss=loss, grad_norm=s.grad_norm(multiplier), lr_multiplier=multiplier, metrics=metrics)

    def optimizer_step(self, result: StepResult, apply: bool) -> None:
        """Apply the step's update (not when ``apply`` is False: a skipped spike)."""
        self.strategy.step(apply, result.lr_multiplier)
