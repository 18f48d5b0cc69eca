"""FSDP2 (``fully_shard``, PyTorch's per-parameter sharding; Zhao et al. 2023 for FSDP): each
block, each multi-token-prediction module and the root are one unit whose parameters are
sharded over the data-parallel ranks and gathered for their forward and backward; with
``scale.tensor_parallel`` on the ``dp`` dimension of a (dp, tp) mesh. bf16/fp16 parameters in
compute through a ``MixedPrecisionPolicy``, gradients reduced in fp32."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from raylm.train.parallel import DTYPES
from raylm.train.strategy.base import Strategy


class FSDP2(Strategy):
    name = "fsdp2"

    def __init__(self, cfg: Any, precision: str, device: torch.device) -> None:
        if precision == "fp16":
            raise ValueError("scale.precision fp16 needs loss scaling, which raylm supports with ddp only; use bf16")
        super().__init__(cfg, precision, device)

    def _wrap(self, model: nn.Module, mesh: Any) -> nn.Module:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        kw: dict[str, Any] = {}
        if self.precision in ("bf16", "fp16"):
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=DTYPES[self.precision], reduce_dtype=torch.float32)
        if mesh is not None:
            kw["mesh"] = mesh["dp"]
        for block in model.layers:
            fully_shard(block, **kw)
        for module in model.mtp:  # multi-token-prediction depths: one unit each
            fully_shard(module, **kw)
        fully_shard(model, **kw)
        return model

    def no_sync(self, last: bool) -> contextlib.AbstractContextManager:
        if last or not hasattr(self.model, "set_requires_gradient_sync"):
            return contextlib.nullcontext()
        return self._unsynced()

    @contextlib.contextmanager
    def _unsynced(self) -> Iterator[None]:
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)
