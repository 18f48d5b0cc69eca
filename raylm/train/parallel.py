"""Apply data parallelism (and activation checkpointing) to a model built without it.

torchtitan's order: activation checkpointing on each block, then FSDP2 ``fully_shard`` on
each block and on the root (or DDP around the whole model). The model module itself never
imports ``torch.distributed``; this file is where it meets it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Wrap every block of ``model.layers`` so its activations are recomputed in backward."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for i, block in enumerate(model.layers):
        model.layers[i] = checkpoint_wrapper(block, preserve_rng_state=False)


def apply_compile(model: nn.Module) -> None:
    """``torch.compile`` every block in place (``nn.Module.compile``: parameter names and
    checkpoints are unchanged) and the loss, torchtitan style: the blocks share one compiled
    graph, and the fp32 cast of the logits fuses into the cross-entropy. On CUDA without
    flash-attn the "auto" attention becomes FlexAttention (``raylm.model.attention``)."""
    for block in model.layers:
        block.compile()
    model.loss_sum = torch.compile(model.loss_sum)


def parallelize(model: nn.Module, strategy: str, precision: str, device: torch.device,
                activation_checkpointing: bool = False, compile: bool = False) -> nn.Module:
    """Checkpointing, compilation, then DDP or FSDP2 (bf16/fp16 parameters in compute, fp32
    reductions)."""
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if compile:
        apply_compile(model)
    if not dist.is_initialized() or (strategy == "ddp" and dist.get_world_size() == 1):
        return model
    if strategy == "ddp":
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if strategy == "fsdp2":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = None
        if precision in ("bf16", "fp16"):
            mp = MixedPrecisionPolicy(param_dtype=_DTYPES[precision], reduce_dtype=torch.float32)
        kw: dict[str, Any] = {"mp_policy": mp} if mp is not None else {}
        for block in model.layers:
            fully_shard(block, **kw)
        fully_shard(model, **kw)
        return model
    raise ValueError(f"unknown strategy {strategy!r}")


@contextlib.contextmanager
def autocast(strategy: str, precision: str, device: torch.device) -> Iterator[None]:
    """Mixed precision for DDP (FSDP2 casts through its policy instead)."""
    if strategy == "fsdp2" or precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=_DTYPES[precision]):
        yield


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
