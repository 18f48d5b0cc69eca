"""What every strategy does to a model before its data-parallel wrapper, and the gradient norm.

torchtitan's order: fp8 linears, tensor parallelism on each block's linears
(``raylm.train.tensor_parallel``), activation checkpointing (every block, every n-th, or
only the MLP or attention of each), ``torch.compile`` per block (``prepare``); then the
strategy (``raylm.train.strategy``) wraps it: FSDP2 ``fully_shard`` on each block, each
multi-token-prediction module and the root, DDP around the whole model, or DeepSpeed's
engine. The model module itself never imports ``torch.distributed``; this file and the
strategies are where it meets it.
"""

from __future__ import annotations

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


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def checkpointed_modules(model: nn.Module, mode: str, every: int = 2) -> list[str]:
    """Names (under ``model``) of the modules ``mode`` recomputes in backward: "full" every
    block, "every_n" blocks 0, n, 2n, ..., "mlp" / "attention" that part of every block
    (selective recomputation, Korthikanti et al. 2022, coarser: the whole sub-module)."""
    n = len(model.layers)
    if mode == "none":
        return []
    if mode == "full":
        return [f"layers.{i}" for i in range(n)]
    if mode == "every_n":
        return [f"layers.{i}" for i in range(0, n, every)]
    if mode in ("mlp", "attention"):
        return [f"layers.{i}.{mode}" for i in range(n)]
    raise ValueError(f"activation checkpointing mode {mode!r} is not none, full, every_n, mlp or attention")


def apply_activation_checkpointing(model: nn.Module, mode: str = "full", every: int = 2) -> list[str]:
    """Wrap the modules of ``checkpointed_modules`` so their activations are recomputed in
    backward (non-reentrant ``checkpoint_wrapper``; parameter names gain a prefix that the
    optimizer's groups and the checkpoint state dicts strip). Returns the wrapped names."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    names = checkpointed_modules(model, mode, every)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        parent.register_module(child, checkpoint_wrapper(parent.get_submodule(child), preserve_rng_state=False))
    return names


def apply_compile(model: nn.Module) -> None:
    """``torch.compile`` every block in place (``nn.Module.compile``: parameter names and
    checkpoints are unchanged) and the loss, torchtitan style: the blocks share one compiled
    graph, and the fp32 cast of the logits fuses into the cross-entropy. On CUDA without
    flash-attn the "auto" attention becomes FlexAttention (``raylm.model.attention``)."""
    for block in model.layers:
        block.compile()
    model.loss_sum = torch.compile(model.loss_sum)


def apply_fp8(model: nn.Module) -> None:
    """Swap every block's ``nn.Linear`` for torchao's ``Float8Linear`` (dynamic tensorwise
    scaling; the embedding and the output projection stay in bf16, as torchtitan does).
    Needs CUDA with compute capability >= 8.9 and ``pip install torchao``."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        raise RuntimeError("scale.fp8 needs a CUDA GPU with compute capability >= 8.9 (H100, L4, L40S)")
    try:
        from torchao.float8 import convert_to_float8_training
    except ImportError:
        raise RuntimeError("scale.fp8 needs torchao: pip install 'raylm[gpu]'") from None
    for block in model.layers:
        convert_to_float8_training(block)


def prepare(model: nn.Module, scale: Any, device: torch.device) -> Any:
    """torchtitan's order before the data-parallel wrapper: fp8 linears, tensor parallelism
    (returns its (dp, tp) mesh; None without), activation checkpointing, compilation.
    ``scale`` is the run's ``ScaleConfig``."""
    if scale.fp8:
        apply_fp8(model)
    mesh = None
    if scale.tensor_parallel > 1:
        from raylm.train.tensor_parallel import apply_tensor_parallel, device_mesh

        mesh = device_mesh(device, dist.get_world_size() // scale.tensor_parallel, scale.tensor_parallel)
        apply_tensor_parallel(model, mesh["tp"])
    apply_activation_checkpointing(model, scale.checkpoint_mode, scale.checkpoint_every)
    if scale.compile:
        apply_compile(model)
    return mesh


def unwrap(model: nn.Module) -> nn.Module:
    """The Transformer inside a DDP or DeepSpeed wrapper."""
    if isinstance(model, nn.parallel.DistributedDataParallel) or type(model).__name__ == "DeepSpeedEngine":
        return model.module
    return model


def clip_grad_norm(model: nn.Module, max_norm: float | None) -> float:
    """Clip the global gradient norm to ``max_norm`` (None: only measure it); returns the norm
    before clipping. Gradients may be plain tensors (DDP) or DTensors on different meshes
    (FSDP2's dp mesh, and the (dp, tp) mesh under tensor parallelism), which
    ``clip_grad_norm_`` cannot stack together: the norm is taken per mesh, made whole, then
    combined."""
    by_mesh: dict[Any, list[torch.Tensor]] = {}
    for p in model.parameters():
        if p.grad is not None:
            by_mesh.setdefault(getattr(p.grad, "device_mesh", None), []).append(p.grad)
    if len(by_mesh) <= 1:  # one kind of gradient: torch's own clip
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm else float("inf"))
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    squares = []
    for grads in by_mesh.values():
        norm = torch.nn.utils.get_total_norm(grads)
        squares.append(float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm) ** 2)
    total = sum(squares) ** 0.5
    if max_norm and total > max_norm:
        coef = max_norm / (total + 1e-6)
        for grads in by_mesh.values():
            for g in grads:
                g.mul_(coef)
    return total
