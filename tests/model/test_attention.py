"""attention(): every backend keeps attention inside documents and agrees with the reference."""

from __future__ import annotations

import functools
import math
import warnings

import pytest
import torch

from raylm.model.attention import _flash_varlen, attention, document_ids, resolve_backend

from .batches import doc_slices, packed_batch

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

DOC_LENS = [[5, 11, 4, 12], [32], [1, 30, 1]]  # B=3, L=32


@functools.cache
def flex_error() -> str | None:
    """Why flex_attention cannot run here (None: it runs)."""
    q = torch.randn(1, 16, 2, 8)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "called without torch.compile"
            attention(q, q, q, backend="flex")
    except Exception as exc:  # noqa: BLE001 - any failure means "not runnable here"
        return f"flex_attention does not run on this machine: {type(exc).__name__}: {exc}"
    return None


def backends() -> list:
    flex = pytest.param("flex", marks=pytest.mark.skipif(flex_error() is not None, reason=str(flex_error())))
    cuda = _flash_varlen() is not None and torch.cuda.is_available()
    flash = pytest.param(
        "flash", marks=pytest.mark.skipif(not cuda, reason="flash-attn needs CUDA and flash-attn")
    )
    return ["sdpa", flex, flash]


def qkv(B: int, L: int, H: int, Hkv: int, D: int = 8, seed: int = 0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, L, H, D, generator=g)
    k, v = torch.randn(2, B, L, Hkv, D, generator=g)
    return (t.to(device=device, dtype=dtype) for t in (q, k, v))


def test_document_ids():
    cu = torch.tensor([0, 3, 8, 10, 16], dtype=torch.int32)
    expected = [[0, 0, 0, 1, 1, 1, 1, 1], [2, 2, 3, 3, 3, 3, 3, 3]]
    assert document_ids(cu, 2, 8).tolist() == expected


@pytest.mark.parametrize("causal", [True, False])
def test_eager_equals_attention_per_document(causal):
    """The reference, checked against attention run on each document cut out on its own."""
    batch = packed_batch(DOC_LENS, 10)
    q, k, v = qkv(3, 32, 4, 2)
    out = attention(q, k, v, cu_seqlens=batch["cu_seqlens"], causal=causal, backend="eager")
    for row, slices in enumerate(doc_slices(DOC_LENS)):
        for s in slices:
            qd, kd, vd = (t[row, s].transpose(0, 1) for t in (q, k, v))  # (H or Hkv, n, D)
            kd, vd = kd.repeat_interleave(2, 0), vd.repeat_interleave(2, 0)
            scores = qd @ kd.transpose(1, 2) / math.sqrt(8)
            if causal:
                n = scores.shape[-1]
                scores = scores.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
            expected = (scores.softmax(-1) @ vd).transpose(0, 1)
            torch.testing.assert_close(out[row, s], expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)], ids=lambda h: f"H{h[0]}-Hkv{h[1]}")
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_backends_agree_with_eager(backend, heads, causal):
    device, dtype, tol = (
        ("cuda", torch.bfloat16, 2e-2) if backend == "flash" else ("cpu", torch.float32, 1e-5)
    )
    batch = packed_batch(DOC_LENS, 10)
    cu = batch["cu_seqlens"].to(device)
    q, k, v = qkv(3, 32, *heads, device=device, dtype=dtype)
    kw = {"cu_seqlens": cu, "max_seqlen": batch["max_seqlen"], "causal": causal}
    expected = attention(q.float(), k.float(), v.float(), backend="eager", **kw)
    out = attention(q, k, v, backend=backend, **kw)
    torch.testing.assert_close(out.float(), expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", ["eager", *backends()])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_documents_from_positions_or_one_per_row(backend, causal):
    """Boundaries read from position_ids equal those of cu_seqlens; one document per row (the
    sdpa fast path) equals no boundaries at all."""
    device, dtype, tol = (
        ("cuda", torch.bfloat16, 2e-2) if backend == "flash" else ("cpu", torch.float32, 1e-5)
    )
    batch = packed_batch(DOC_LENS, 10)
    q, k, v = qkv(3, 32, 4, 2, device=device, dtype=dtype)
    with_cu = attention(q, k, v, cu_seqlens=batch["cu_seqlens"].to(device), causal=causal, backend=backend)
    with_pos = attention(
        q, k, v, position_ids=batch["position_ids"].to(device), causal=causal, backend=backend
    )
    torch.testing.assert_close(with_pos, with_cu, atol=tol, rtol=tol)

    one_per_row = torch.arange(0, 3 * 32 + 1, 32, dtype=torch.int32, device=device)
    whole = attention(q, k, v, cu_seqlens=one_per_row, causal=causal, backend=backend)
    torch.testing.assert_close(whole, attention(q, k, v, causal=causal, backend=backend), atol=tol, rtol=tol)
    assert not torch.allclose(whole, with_cu, atol=1e-3)  # the boundaries do matter


def test_resolve_backend():
    q = torch.zeros(1, 4, 2, 8)
    assert resolve_backend("auto", q) == "sdpa"  # CPU
    assert resolve_backend("eager", q) == "eager"
    with pytest.raises(ValueError, match="'fast' is not one of"):
        resolve_backend("fast", q)
    if _flash_varlen() is None:
        with pytest.raises(ImportError, match="flash-attn"):
            resolve_backend("flash", q)


def test_gqa_heads_must_divide():
    q, k, v = qkv(1, 8, 4, 3)
    with pytest.raises(ValueError, match="3 key/value heads do not divide 4"):
        attention(q, k, v, backend="eager")


def test_sdpa_gradients_match_eager():
    batch = packed_batch(DOC_LENS, 10)
    grads = []
    for backend in ("eager", "sdpa"):
        q, k, v = (t.requires_grad_() for t in qkv(3, 32, 4, 2))
        attention(q, k, v, cu_seqlens=batch["cu_seqlens"], backend=backend).square().sum().backward()
        grads.append([t.grad for t in (q, k, v)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
