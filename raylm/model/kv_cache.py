"""The key/value cache of incremental decoding, and attention of new tokens over it.

Autoregressive decoding recomputes nothing for the tokens already seen: every attention layer
keeps their keys and values (after the rotary embedding), and a forward step feeds only the
new tokens, whose queries attend to the cached keys and to each other causally (Pope et al.
2022, "Efficiently Scaling Transformer Inference", sec. 2). With grouped-query attention the
cache holds the ``kv_heads`` key/value heads only, so it is ``n_heads / kv_heads`` times
smaller than the queries.

A step may feed one token (plain decoding) or ``T`` tokens at once: the prompt (prefill), or
a speculative draft that the model verifies in one forward (``raylm.model.speculative``); new
token ``i`` (at position ``start + i``) sees the cached positions and new tokens ``0..i``.
``truncate`` rolls the cache back, e.g. past rejected draft tokens: later entries are simply
overwritten. A cache holds one document per row, all rows at the same length.

Backends: "sdpa" (PyTorch's ``scaled_dot_product_attention``; no mask for one token, an
offset causal mask for several), "eager" (matmul + softmax, the reference) and "flash"
(flash-attn's ``flash_attn_with_kvcache``, which writes the new keys and values into the
cache itself; CUDA fp16/bf16, optional). "flex" decodes with "sdpa": a block mask buys
nothing for a handful of queries.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from raylm.model.attention import resolve_backend
from raylm.model.config import AttentionBackend, ModelConfig


class LayerCache(NamedTuple):
    """One attention layer's view of a ``KVCache``."""

    k: torch.Tensor
    """``(B, max_len, kv_heads, head_dim)``: keys of positions ``0..start-1`` (and room for more)."""
    v: torch.Tensor
    """Values, laid out as ``k``."""
    start: int
    """Tokens already cached: the position of the first new token."""
    mask: torch.Tensor | None
    """``(T, start + T)`` bool, True where new token ``i`` may attend (keys ``0..start+i``);
    None for one new token, which sees every cached key."""


class KVCache:
    """Keys and values of ``n_layers`` attention layers for ``batch_size`` rows of up to
    ``max_len`` tokens. ``length`` is the number of tokens cached; the model's forward with
    ``cache=`` writes the new tokens at ``length`` and then advances it."""

    def __init__(self, n_layers: int, batch_size: int, max_len: int, kv_heads: int, head_dim: int, *,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> None:
        shape = (n_layers, batch_size, max_len, kv_heads, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self._mask: tuple[tuple[int, int], torch.Tensor] | None = None  # built once per forward, not per layer

    @classmethod
    def for_model(cls, cfg: ModelConfig, batch_size: int, max_len: int, *, n_layers: int | None = None,
                  device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> KVCache:
        """A cache shaped for the attention layers of ``cfg`` (``n_layers``: default all of the
        main model's; 1 for one multi-token-prediction module)."""
        if max_len > cfg.max_seq_len:
            raise ValueError(f"a cache of {max_len} tokens exceeds max_seq_len={cfg.max_seq_len}")
        return cls(cfg.n_layers if n_layers is None else n_layers, batch_size, max_len, cfg.kv_heads,
                   cfg.head_dim, device=device, dtype=dtype)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def layer(self, i: int, new_tokens: int) -> LayerCache:
        """Layer ``i``'s cache for a forward of ``new_tokens`` tokens."""
        return LayerCache(self.k[i], self.v[i], self.length, self._causal_mask(new_tokens))

    def _causal_mask(self, T: int) -> torch.Tensor | None:
        if T == 1:
            return None
        key = (self.length, T)
        if self._mask is None or self._mask[0] != key:
            device = self.k.device
            # new token i sits at position length + i and sees keys 0..length+i
            mask = torch.arange(self.length + T, device=device)[None] <= self.length + torch.arange(T, device=device)[:, None]
            self._mask = (key, mask)  # (T, length + T)
        return self._mask[1]

    def advance(self, n: int) -> None:
        """Count ``n`` more tokens as cached (after every layer has written them)."""
        if self.length + n > self.max_len:
            raise ValueError(f"KV cache overflow: {self.length} + {n} tokens > {self.max_len}")
        self.length += n

    def truncate(self, length: int) -> None:
        """Forget every token from position ``length`` on (roll back rejected tokens)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {length}")
        self.length = length


def _flash_with_kvcache():
    try:
        from flash_attn import flash_attn_with_kvcache
    except ImportError:
        return None
    return flash_attn_with_kvcache


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerCache, *,
                     backend: AttentionBackend = "auto", scale: float | None = None) -> torch.Tensor:
    """Causal attention of the new tokens' queries ``q`` ``(B, T, H, D)`` over the cache and
    their own keys ``k`` and values ``v`` ``(B, T, Hkv, D)``, which are written into the cache
    at ``cache.start``; returns ``(B, T, H, D)``. ``scale`` as in ``raylm.model.attention``."""
    B, T, H, D = q.shape
    Hkv, start = k.shape[2], cache.start
    end = start + T
    if end > cache.k.shape[1]:
        raise ValueError(f"KV cache overflow: {start} + {T} tokens > {cache.k.shape[1]}")
    backend = resolve_backend(backend, q)
    if backend == "flash" and (kernel := _flash_with_kvcache()) is not None:
        seqlens = torch.full((B,), start, dtype=torch.int32, device=q.device)
        return kernel(q, cache.k, cache.v, k=k, v=v, cache_seqlens=seqlens, softmax_scale=scale, causal=True)
    cache.k[:, start:end] = k
    cache.v[:, start:end] = v
    keys = cache.k[:, :end].to(q.dtype).transpose(1, 2)  # (B, Hkv, start+T, D)
    values = cache.v[:, :end].to(q.dtype).transpose(1, 2)
    q = q.transpose(1, 2)  # (B, H, T, D)
    mask = cache.mask
    if backend == "eager":
        keys = keys.repeat_interleave(H // Hkv, dim=1)  # (B, H, end, D)
        values = values.repeat_interleave(H // Hkv, dim=1)
        scores = (q @ keys.transpose(-2, -1)) * (1 / math.sqrt(D) if scale is None else scale)  # (B, H, T, end)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        out = scores.float().softmax(dim=-1).to(values.dtype) @ values
    else:  # sdpa, and flex or flash without their decoding kernel
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale, enable_gqa=Hkv != H)
    return out.transpose(1, 2)  # (B, T, H, D)
