"""Attention over packed batches, kept inside each document, with interchangeable kernels.

A packed batch has ``B`` rows of ``L`` tokens, each row a concatenation of document segments
(``raylm.data.packing``). Attention must not cross a segment boundary ("intra-document
masking", Zhao et al. 2024; Llama 3). The boundaries come as ``cu_seqlens``: int32, 1-D, the
cumulative segment lengths over the flattened ``B * L`` tokens, from 0 to ``B * L``, exactly
what ``flash_attn_varlen_func`` takes; every multiple of ``L`` is a boundary (a segment never
spans two rows). Without ``cu_seqlens``, segments are read from ``position_ids`` (a new one
starts wherever the position is 0); without either, each row is one document.

Backends (all give the same result up to rounding; ``tests/model`` checks it):

- ``"flash"``: flash-attn's ``flash_attn_varlen_func`` (Dao 2023) on ``cu_seqlens``: computes
  only the blocks inside documents. CUDA and fp16/bf16 only; flash-attn is optional
  (``pip install raylm[gpu]``) and imported on first use.
- ``"flex"``: FlexAttention (Dong et al. 2024) with a ``BlockMask`` from per-token document
  ids: block-sparse fused kernels on GPU under ``torch.compile``. Called eagerly, torch runs
  an unfused implementation that materialises the scores (correct, slow). On CPU (torch 2.13)
  it runs forward only: backward raises ``NotImplementedError``, so train on CPU with "sdpa".
  Build the ``BlockMask`` once per batch (``flex_block_mask``) and pass it to every layer.
- ``"sdpa"``: ``F.scaled_dot_product_attention`` with a dense boolean ``(B, 1, L, L)`` mask
  (same document, and causal). When every row is one document (``cu_seqlens`` has ``B + 1``
  entries, or no boundaries are given) it passes ``is_causal=True`` and no mask, which lets
  PyTorch pick its flash / memory-efficient kernels.
- ``"eager"``: matmul + softmax, the reference the others are tested against.
- ``"auto"``: ``"flash"`` for fp16/bf16 CUDA tensors when flash-attn imports; else ``"flex"``
  when the caller passes a ``block_mask`` (the Transformer builds one for packed rows on CUDA
  when its blocks are compiled, ``scale.compile``: fused block-sparse kernels); else
  ``"sdpa"`` (whose ``is_causal`` path is PyTorch's flash kernel for one document per row).
"""

from __future__ import annotations

import functools
import math
from typing import Any, get_args

import torch
import torch.nn.functional as F

from raylm.model.config import AttentionBackend

BACKENDS: tuple[str, ...] = get_args(AttentionBackend)


@functools.cache
def _flash_varlen() -> Any:
    """flash-attn's varlen kernel, or None when flash-attn is not installed."""
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


def flash_available() -> bool:
    """Whether flash-attn's varlen kernel imports here."""
    return _flash_varlen() is not None


def resolve_backend(backend: AttentionBackend, q: torch.Tensor, block_mask: Any = None) -> AttentionBackend:
    """The concrete backend ``attention(..., backend=backend, block_mask=block_mask)`` uses for ``q``."""
    if backend not in BACKENDS:
        raise ValueError(f"attention backend {backend!r} is not one of {list(BACKENDS)}")
    if backend == "auto":
        half = q.dtype in (torch.float16, torch.bfloat16)
        if q.is_cuda and half and _flash_varlen() is not None:
            return "flash"
        return "flex" if block_mask is not None else "sdpa"
    if backend == "flash" and _flash_varlen() is None:
        raise ImportError("attention backend 'flash' needs the flash-attn package (pip install 'raylm[gpu]')")
    return backend


def document_ids(cu_seqlens: torch.Tensor, B: int, L: int) -> torch.Tensor:
    """``(B, L)`` int64: the segment index of every token (counted over the flattened batch),
    so two tokens of a row may attend to each other only if their ids are equal."""
    starts = torch.zeros(B * L, dtype=torch.long, device=cu_seqlens.device)
    starts[cu_seqlens[1:-1].long()] = 1
    return starts.cumsum(0).view(B, L)


def _row_documents(
    cu_seqlens: torch.Tensor | None, position_ids: torch.Tensor | None, B: int, L: int
) -> torch.Tensor | None:
    """``(B, L)`` document ids, or None when every row is one document."""
    if cu_seqlens is not None:
        # Boundaries include every multiple of L, so B + 1 of them means one segment per row.
        return None if cu_seqlens.numel() == B + 1 else document_ids(cu_seqlens, B, L)
    if position_ids is not None:
        return (position_ids == 0).cumsum(1)
    return None


def packs_documents(cu_seqlens: torch.Tensor | None, position_ids: torch.Tensor | None, B: int) -> bool:
    """Whether a row may hold more than one document (known from shapes, no device sync)."""
    if cu_seqlens is not None:
        return cu_seqlens.numel() != B + 1
    return position_ids is not None


def _dense_mask(docs: torch.Tensor | None, causal: bool, L: int, device: torch.device) -> torch.Tensor | None:
    """Boolean ``(B or 1, 1, L, L)`` mask, True where a query may attend to a key."""
    mask = None
    if docs is not None:
        mask = (docs[:, :, None] == docs[:, None, :])[:, None]  # (B, 1, L, L)
    if causal:
        tril = torch.ones(L, L, dtype=torch.bool, device=device).tril()
        mask = tril[None, None] if mask is None else mask & tril
    return mask


def flex_block_mask(
    *,
    B: int,
    L: int,
    causal: bool,
    device: torch.device,
    cu_seqlens: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> Any:
    """The FlexAttention ``BlockMask`` of a packed batch (None: no masking at all)."""
    from torch.nn.attention.flex_attention import create_block_mask

    docs = _row_documents(cu_seqlens, position_ids, B, L)
    if docs is None and not causal:
        return None

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        keep = q_idx >= kv_idx if causal else torch.ones_like(q_idx, dtype=torch.bool)
        if docs is not None:
            keep = keep & (docs[b, q_idx] == docs[b, kv_idx])
        return keep

    return create_block_mask(mask_mod, B if docs is not None else None, None, L, L, device=device)


def _cu_seqlens_from_positions(
    position_ids: torch.Tensor | None, B: int, L: int, device: torch.device
) -> torch.Tensor:
    starts = torch.zeros(B, L, dtype=torch.bool, device=device)
    if position_ids is not None:
        starts |= position_ids == 0
    starts[:, 0] = True
    end = torch.tensor([B * L], device=device)
    return torch.cat([starts.flatten().nonzero().flatten(), end]).to(torch.int32)  # host sync


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    position_ids: torch.Tensor | None = None,
    causal: bool = True,
    backend: AttentionBackend = "auto",
    block_mask: Any = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention of ``q`` ``(B, L, H, D)`` over ``k``, ``v`` ``(B, L, Hkv, D)`` within
    each document; returns ``(B, L, H, D)``.

    ``Hkv`` must divide ``H`` (grouped-query attention: query head ``h`` reads kv head
    ``h // (H // Hkv)``). ``max_seqlen``: the longest segment, for flash-attn's launch grid
    (default ``L``, always a valid bound). ``causal=False``: each token sees its whole
    document. ``block_mask``: a ``flex_block_mask`` of this batch, reused by the flex backend
    instead of building one per call. ``scale``: of the scores before the softmax (None:
    ``1/sqrt(D)``; μP uses ``~1/D``)."""
    B, L, H, D = q.shape
    Hkv = k.shape[2]
    if H % Hkv:
        raise ValueError(f"{Hkv} key/value heads do not divide {H} query heads")
    backend = resolve_backend(backend, q, block_mask)

    if backend == "flash":
        if cu_seqlens is None:
            cu_seqlens = _cu_seqlens_from_positions(position_ids, B, L, q.device)
        max_seqlen = L if max_seqlen is None else max_seqlen
        out = _flash_varlen()(
            q.reshape(B * L, H, D),
            k.reshape(B * L, Hkv, D),
            v.reshape(B * L, Hkv, D),
            cu_seqlens,
            cu_seqlens,
            max_seqlen,
            max_seqlen,
            softmax_scale=scale,
            causal=causal,
        )
        return out.view(B, L, H, D)

    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H or Hkv, L, D)
    if backend == "flex":
        from torch.nn.attention.flex_attention import flex_attention

        if block_mask is None:
            block_mask = flex_block_mask(
                B=B, L=L, causal=causal, device=q.device, cu_seqlens=cu_seqlens, position_ids=position_ids
            )
        out = flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=Hkv != H)
        return out.transpose(1, 2)  # (B, L, H, D)

    docs = _row_documents(cu_seqlens, position_ids, B, L)
    if backend == "sdpa":
        if docs is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=Hkv != H)
        else:
            mask = _dense_mask(docs, causal, L, q.device)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=Hkv != H)
        return out.transpose(1, 2)  # (B, L, H, D)

    # eager
    k = k.repeat_interleave(H // Hkv, dim=1)  # (B, H, L, D)
    v = v.repeat_interleave(H // Hkv, dim=1)
    scores = (q @ k.transpose(-2, -1)) * (1 / math.sqrt(D) if scale is None else scale)  # (B, H, L, L)
    mask = _dense_mask(docs, causal, L, q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.float().softmax(dim=-1).to(v.dtype)
    return (weights @ v).transpose(1, 2)  # (B, L, H, D)
