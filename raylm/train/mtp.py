"""The multi-token-prediction part of a training step's objective (``raylm.model.mtp``).

DeepSeek-V3 (sec. 2.2) adds ``lambda / D * sum_k L_k`` to the main loss, ``L_k`` the mean
cross-entropy of depth ``k``. As for the main loss (``raylm.train.loop``), each ``L_k`` is the
mean over the *global* batch: depth ``k``'s targets (fewer than the main loss's: none within
``k`` tokens of a document end) are counted over every micro-batch and all-reduced before
the backward pass, so ``W`` workers follow one worker with the same global batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from raylm.model.config import ModelConfig
from raylm.model.mtp import IGNORE_INDEX, mtp_labels

AllSum = Callable[[torch.Tensor], torch.Tensor]


class MTPObjective:
    """One optimizer step's MTP losses over its micro-batches ``micro`` (loader batches)."""

    def __init__(self, cfg: ModelConfig, micro: list[dict[str, Any]], device: torch.device, all_sum: AllSum) -> None:
        self.weight = cfg.mtp_weight / cfg.mtp_heads
        self.device = device
        self.labels = [[mtp_labels(b["labels"], k) for k in range(1, cfg.mtp_heads + 1)] for b in micro]
        counts = [sum(int((per_batch[k] != IGNORE_INDEX).sum()) for per_batch in self.labels)
                  for k in range(cfg.mtp_heads)]
        self.counts = all_sum(torch.tensor(counts, dtype=torch.float32, device=device)).clamp(min=1)  # (D,)
        self.sums = torch.zeros(cfg.mtp_heads, device=device)

    def term(self, model: torch.nn.Module, i: int, mtp_logits: list[torch.Tensor]) -> torch.Tensor:
        """``lambda / D * sum_k`` (micro-batch ``i``'s summed depth-``k`` loss over the global
        count of depth-``k`` targets): add it, times the world size, to the rank's main term."""
        parts = torch.stack([model.loss_sum(logits, labels.to(self.device))
                             for logits, labels in zip(mtp_logits, self.labels[i], strict=True)])  # (D,)
        self.sums += parts.detach()
        return self.weight * (parts / self.counts).sum()

    def metrics(self, all_sum: AllSum) -> dict[str, float]:
        """``mtp_loss_k``: depth ``k``'s mean loss over the global batch (every rank must call it)."""
        return {f"mtp_loss_{k}": float(v) for k, v in enumerate(all_sum(self.sums.clone()) / self.counts, start=1)}
