"""In-process training of one model on in-memory packed batches, without Ray: the inner loop
of ``benchmarks/mup_transfer.py`` and ``benchmarks/scaling_law.py``, where a hundred tiny runs
would otherwise spend more time starting Ray Train than training. The model, the μP parameter
groups (``raylm.model.mup.mup_lr_scale``), the optimizer and the schedule are those of
``raylm train``; one process, fp32, no checkpoints. Sweeps of real runs go through
``raylm.tune.sweep``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from raylm.data.loader import IGNORE_INDEX, make_batch
from raylm.model import ModelConfig, Transformer
from raylm.model.mup import mup_lr_scale
from raylm.optim.optimizers import OptimConfig, apply_lr, build_optimizer
from raylm.optim.schedules import lr_multiplier


def load_batches(path: str | Path, batch_size: int, n_batches: int, skip: int = 0) -> list[dict[str, Any]]:
    """``n_batches`` batches of ``batch_size`` packed sequences (as ``raylm.data.loader`` makes
    them) from a token-shard folder or file (Parquet with ``tokens`` and ``cu_seqlens``, as
    ``raylm prepare`` writes; not its nested ``val/`` split), in file order, after the first
    ``skip`` sequences."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(p.glob("*.parquet"))  # not a held-out val/ inside
    if not files:
        raise FileNotFoundError(f"{path}: no Parquet token shards")
    need = batch_size * n_batches
    tokens: list[list[int]] = []
    cus: list[list[int]] = []
    for f in files:
        table = pq.read_table(f, columns=["tokens", "cu_seqlens"])
        tokens += table.column("tokens").to_pylist()
        cus += table.column("cu_seqlens").to_pylist()
        if len(tokens) >= skip + need:
            break
    tokens, cus = tokens[skip:skip + need], cus[skip:skip + need]
    if len(tokens) < need:
        raise ValueError(f"{path}: {len(tokens)} sequences after {skip}, {need} needed "
                         f"({n_batches} batches of {batch_size})")
    return [make_batch(np.arange(i, i + batch_size), np.asarray(tokens[i:i + batch_size], np.int64),
                       [np.asarray(c, np.int64) for c in cus[i:i + batch_size]])
            for i in range(0, need, batch_size)]


@dataclasses.dataclass(kw_only=True, slots=True)
class LocalRun:
    losses: list[float]
    """Training loss of every step (``inf`` from the step where the run diverged)."""
    eval_loss: float
    """Mean loss over every labelled token of the evaluation batches after training (``inf``
    for a diverged run)."""


def _forward(model: Transformer, b: dict[str, Any]) -> torch.Tensor:
    return model(b["input_ids"], position_ids=b["position_ids"], cu_seqlens=b["cu_seqlens"],
                 max_seqlen=b["max_seqlen"])


def evaluate(model: Transformer, batches: list[dict[str, Any]]) -> float:
    """Mean cross-entropy over every labelled token of ``batches``."""
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            total += float(model.loss_sum(_forward(model, b), b["labels"]))
            count += int((b["labels"] != IGNORE_INDEX).sum())
    return total / max(count, 1)


def train_local(model_cfg: ModelConfig, optim_cfg: OptimConfig, batches: list[dict[str, Any]],
                eval_batches: list[dict[str, Any]], *, seed: int = 0,
                clip_grad_norm: float | None = 1.0) -> LocalRun:
    """Train a fresh ``Transformer(model_cfg)`` for one optimizer step per batch of ``batches``
    (the schedule's ``total_steps`` defaults to their number), then evaluate on
    ``eval_batches``. A loss that stops being finite ends the run, as a diverged trial should."""
    torch.manual_seed(seed)
    model = Transformer(model_cfg)
    optimizer = build_optimizer(model, optim_cfg, mup_lr_scale(model_cfg))
    schedule = dataclasses.replace(optim_cfg.schedule)
    if schedule.total_steps is None:
        schedule.total_steps = len(batches)
    losses: list[float] = []
    for step, b in enumerate(batches):
        loss = model.loss(_forward(model, b), b["labels"])
        value = float(loss.detach())
        if not math.isfinite(value):
            return LocalRun(losses=losses + [math.inf] * (len(batches) - step), eval_loss=math.inf)
        losses.append(value)
        loss.backward()
        if clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        apply_lr(optimizer, optim_cfg.lr, lr_multiplier(schedule, step))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    final = evaluate(model, eval_batches)
    return LocalRun(losses=losses, eval_loss=final if math.isfinite(final) else math.inf)
