"""Measure a training step's memory on any device, to check the planner (``raylm.plan``).

* static = the bytes of every distinct tensor storage alive after the backward pass, before
  the optimizer step: parameters (or their shards), gradients (DDP buckets, FSDP2 shards,
  ZeRO partitions and buckets) and the optimizer state of the previous step. Storages are
  found by walking every live tensor object (``gc.get_objects``) and the ``.grad`` of every
  leaf among them, and counted once each (views share their storage).
* activations = the bytes of the storages alive at the end of the forward pass (loss
  computed) that were not alive before it. An identity ``saved_tensors_hooks`` pair is active
  during the forward so that the tensors autograd saves for backward are Python objects and
  the walk sees them; a checkpointed module's inner tensors are dropped by its own hooks, and
  its inputs, which its recomputation holds, are seen. FSDP2's gathered root counts here.
  The storages alive before the forward are held until the end of it, so that no new one
  reuses an address and goes uncounted.

Exact for tensors (no allocator rounding or fragmentation: those are what the planner's
``headroom`` is for); the backward's transient peak is not measured (on CUDA,
``torch.cuda.max_memory_allocated`` is).
"""

from __future__ import annotations

import gc
import warnings
from typing import Any

import torch


def live_storages(hold: list | None = None) -> dict[int, int]:
    """data_ptr -> bytes of every distinct storage held by a live tensor object. ``hold``
    keeps the tensors alive, so that no later allocation reuses one of their addresses."""
    gc.collect()
    out: dict[int, int] = {}
    with warnings.catch_warnings():  # isinstance() on a deprecated torch.distributed alias warns
        warnings.simplefilter("ignore", FutureWarning)
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    # a gradient written by autograd has no Python object until someone reads it: read them
    tensors += [t.grad for t in tensors if t.is_leaf and t.requires_grad and t.grad is not None]
    for obj in tensors:
        if obj.device.type == "meta":
            continue
        try:
            storage = obj.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # a wrapper subclass (DTensor): its local tensor is walked
            continue
        if ptr:
            out[ptr] = nbytes
    if hold is not None:
        hold.extend(tensors)
    return out


def measure_step(model, optimizer, engine, ids, measure: bool, **batch: Any) -> dict[str, int]:
    """One training step of ``model`` on ``ids`` ``(B, L + 1)`` (``batch``: ``position_ids``,
    ``cu_seqlens``, ``max_seqlen`` of packed rows); with ``measure``, the static and activation
    bytes (see the module docstring). ``engine``: a DeepSpeed engine (then ``model`` is it),
    else ``optimizer`` steps."""
    from raylm.train.parallel import unwrap

    hold: list[torch.Tensor] = []
    before = live_storages(hold) if measure else {}
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        logits = model(ids[:, :-1], **batch)
        loss = unwrap(model).loss_sum(logits, ids[:, 1:])
    after_forward = live_storages() if measure else {}
    hold.clear()
    if engine is not None:
        engine.backward(loss)
    else:
        loss.backward()
    del logits, loss
    static = live_storages() if measure else {}
    if engine is not None:
        engine.step()
    else:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"static": sum(static.values()),
            "activations": sum(b for p, b in after_forward.items() if p not in before)}
