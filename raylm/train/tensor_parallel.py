"""Tensor parallelism of the blocks with DTensor, to compose with FSDP2 on a 2-D mesh.

Megatron-LM's split (Shoeybi et al. 2019): in attention, ``wq``/``wk``/``wv`` are sharded by
output column (each rank holds ``n_heads / tp`` query heads and ``kv_heads / tp`` kv heads) and
``wo`` by input row, so attention runs on local heads and one all-reduce ends the sub-layer; in
the SwiGLU MLP, ``w1``/``w3`` by column and ``w2`` by row. Embedding, norms and the output
projection stay replicated across the tensor-parallel group (FSDP2 shards them over the
data-parallel dimension), as in torchtitan without sequence parallelism.

Mesh layout: ``(dp, tp)`` with tp innermost, so ranks ``[k*tp, (k+1)*tp)`` form one
tensor-parallel group (on GPUs the same node, where NVLink is); the ranks of one group read
the same batches (``ScaleConfig.data_parallel``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh


def device_mesh(device: torch.device, dp: int, tp: int) -> DeviceMesh:
    """The 2-D ``(dp, tp)`` mesh over all ranks."""
    return init_device_mesh(device.type, (dp, tp), mesh_dim_names=("dp", "tp"))


def apply_tensor_parallel(model: nn.Module, tp_mesh: DeviceMesh) -> None:
    """Shard every block's linears over ``tp_mesh`` in place (before checkpointing, compile
    and FSDP2); each attention module then works on its local heads."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tp = tp_mesh.size()
    for block in model.layers:
        attn = block.attention
        if attn.n_heads % tp or attn.n_kv_heads % tp:
            raise ValueError(f"tensor_parallel {tp} must divide n_heads {attn.n_heads} and kv heads {attn.n_kv_heads}")
        parallelize_module(block, tp_mesh, {
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(),
            "mlp.w1": ColwiseParallel(),
            "mlp.w3": ColwiseParallel(),
            "mlp.w2": RowwiseParallel(),
        })
        attn.n_heads //= tp  # the local heads: (B, L, d_model / tp) -> (B, L, n_heads / tp, D)
        attn.n_kv_heads //= tp
