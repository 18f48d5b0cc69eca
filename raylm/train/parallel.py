"""Apply parallelism, activation checkpointing, compilation and fp8 to a model built without them.

torchtitan's order: fp8 linears, tensor parallelism on each block's linears
(``raylm.train.tensor_parallel``), activation checkpointing (every block, every n-th, or
only the MLP or attention of each), ``torch.compile`` per block, then FSDP2 ``fully_shard``
on each block, each multi-token-prediction module and the root (or DDP around the whole
model; DeepSpeed wraps it later, in ``raylm.train.deepspeed``). The model module itself never
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


def parallelize(model: nn.Module, strategy: str, precision: str, device: torch.device,
                activation_checkpointing: str | bool = "none", compile: bool = False, *,
                checkpoint_every: int = 2, tensor_parallel: int = 1, fp8: bool = False) -> nn.Module:
    """fp8 linears, tensor parallelism, checkpointing, compilation, then DDP or FSDP2
    (bf16/fp16 parameters in compute, fp32 reductions). DeepSpeed wraps the model later, in
    ``raylm.train.deepspeed.initialize``: here it only gets the checkpointing."""
    if isinstance(activation_checkpointing, bool):
        activation_checkpointing = "full" if activation_checkpointing else "none"
    if fp8:
        apply_fp8(model)
    mesh = None
    if tensor_parallel > 1:
        from raylm.train.tensor_parallel import apply_tensor_parallel, device_mesh

        mesh = device_mesh(device, dist.get_world_size() // tensor_parallel, tensor_parallel)
        apply_tensor_parallel(model, mesh["tp"])
    apply_activation_checkpointing(model, activation_checkpointing, checkpoint_every)
    if compile:
        apply_compile(model)
    if strategy == "deepspeed":
        return model
    if not dist.is_initialized() or (strategy == "ddp" and dist.get_world_size() == 1):
        return model
    if strategy == "ddp":
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                   gradient_as_bucket_view=True)
    if strategy == "fsdp2":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = None
        if precision in ("bf16", "fp16"):
            mp = MixedPrecisionPolicy(param_dtype=_DTYPES[precision], reduce_dtype=torch.float32)
        kw: dict[str, Any] = {"mp_policy": mp} if mp is not None else {}
        if mesh is not None:
            kw["mesh"] = mesh["dp"]
        for block in model.layers:
            fully_shard(block, **kw)
        for module in model.mtp:  # multi-token-prediction depths: one unit each
            fully_shard(module, **kw)
        fully_shard(model, **kw)
        return model
    raise ValueError(f"unknown strategy {strategy!r}")


@contextlib.contextmanager
def autocast(strategy: str, precision: str, device: torch.device) -> Iterator[None]:
    """Mixed precision for DDP (FSDP2 casts through its policy and DeepSpeed keeps bf16/fp16
    weights itself)."""
    if strategy in ("fsdp2", "deepspeed") or precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=_DTYPES[precision]):
        yield


def unwrap(model: nn.Module) -> nn.Module:
    """The Transformer inside a DDP or DeepSpeed wrapper."""
    if isinstance(model, nn.parallel.DistributedDataParallel) or type(model).__name__ == "DeepSpeedEngine":
        return model.module
    return model


def run_metadata(cfg: Any, model: nn.Module, precision: str, world: int) -> dict[str, Any]:
    """What a run's parallelism is, for ``meta.json`` next to its metrics: strategy (and ZeRO
    stage and offload), tensor-parallel degree, precision, fp8, compile, and the activation
    checkpointing mode with the modules it recomputes, and the worker's torch CPU threads."""
    sc = cfg.scale
    mode = sc.checkpoint_mode
    meta: dict[str, Any] = {
        "strategy": sc.strategy, "world_size": world, "data_parallel": sc.data_parallel,
        "tensor_parallel": sc.tensor_parallel, "precision": precision, "fp8": sc.fp8, "compile": sc.compile,
        "activation_checkpointing": mode,
        "checkpointed_modules": checkpointed_modules(model, mode, sc.checkpoint_every),
        "num_params": cfg.model.num_params(), "global_batch_size": cfg.global_batch_size,
        "torch_threads": torch.get_num_threads(),  # Ray sets OMP_NUM_THREADS to the worker's CPUs
    }
    if sc.strategy == "deepspeed":
        from raylm.train.deepspeed import ds_config

        meta["deepspeed"] = ds_config(cfg, precision)
    return meta


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
