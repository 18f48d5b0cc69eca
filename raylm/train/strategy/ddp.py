"""DDP: every rank holds the whole model and all-reduces the gradients (PyTorch's
``DistributedDataParallel``, Li et al. 2020), with ``torch.autocast`` for bf16/fp16 and a
``GradScaler`` for fp16."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from raylm.train.parallel import DTYPES
from raylm.train.strategy.base import Strategy


class DDP(Strategy):
    name = "ddp"

    def _wrap(self, model: nn.Module, mesh: Any) -> nn.Module:
        if dist.get_world_size() == 1:  # nothing to reduce
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)

    def no_sync(self, last: bool) -> contextlib.AbstractContextManager:
        if last or not isinstance(self.model, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return self.model.no_sync()

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.precision == "fp32":
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=DTYPES[self.precision]):
            yield
