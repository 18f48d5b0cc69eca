"""Lion, "EvoLved Sign Momentum" (Chen et al. 2023, "Symbolic Discovery of Optimization
Algorithms", Algorithm 2).

Per parameter, with gradient ``g`` and momentum ``m`` (zero at the start)::

    c = beta1 * m + (1 - beta1) * g           # interpolation used for this update
    p = p - lr * (sign(c) + weight_decay * p)   # decoupled weight decay, as in AdamW
    m = beta2 * m + (1 - beta2) * g           # momentum tracked with the slower beta2

Every coordinate moves by exactly ``lr`` (or 0), so the update's norm is larger than
AdamW's: the paper uses an lr 3-10x smaller and a weight decay 3-10x larger than AdamW's for
the same effective strength. One state tensor per parameter (AdamW keeps two).

Plain out-of-place/in-place tensor ops only, so parameters may be DTensors (FSDP2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


class Lion(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Lion: lr {lr} must not be negative")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Lion: betas[{i}] = {beta} must be in [0, 1)")
        if not weight_decay >= 0.0:
            raise ValueError(f"Lion: weight_decay {weight_decay} must not be negative")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("Lion does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avg = state["exp_avg"]
                update = (exp_avg * beta1).add_(grad, alpha=1.0 - beta1).sign_()
                if wd != 0.0:
                    p.mul_(1.0 - lr * wd)
                p.add_(update, alpha=-lr)
                exp_avg.mul_(beta2).add_(grad, alpha=1.0 - beta2)
        return loss
