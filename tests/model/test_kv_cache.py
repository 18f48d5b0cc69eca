"""KV cache: decoding step by step (one token, several, after a rollback) gives the full forward's logits."""

from __future__ import annotations

import pytest
import torch

from raylm.model import Transformer, model_config
from raylm.model.kv_cache import KVCache

VOCAB, L = 64, 24


def model_for(backend: str, kv_heads: int | None) -> Transformer:
    torch.manual_seed(0)
    cfg = model_config("debug", vocab_size=VOCAB, d_model=32, n_heads=4, n_kv_heads=kv_heads, attention=backend,
                       max_seq_len=32)
    return Transformer(cfg).eval()


@torch.no_grad()
@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("kv_heads", [None, 2, 1], ids=["mha", "gqa", "mqa"])
def test_cached_decoding_equals_the_full_forward(backend, kv_heads):
    model = model_for(backend, kv_heads)
    ids = torch.randint(0, VOCAB, (2, L), generator=torch.Generator().manual_seed(1))
    full = model(ids)
    cache = KVCache.for_model(model.cfg, 2, L)
    steps = [model(ids[:, :7], cache=cache)]  # prefill
    steps += [model(ids[:, t:t + 1], cache=cache) for t in range(7, 12)]  # one token at a time
    steps.append(model(ids[:, 12:16], cache=cache))  # k tokens at once (a draft to verify)
    steps.append(model(ids[:, 16:], cache=cache))
    assert cache.length == L
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_rolled_back_cache_decodes_a_different_continuation():
    """After ``truncate``, new tokens overwrite the rejected ones: the logits are the full
    forward's of the new sequence."""
    model = model_for("sdpa", 2)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, VOCAB, (1, 16), generator=g)
    other = ids.clone()
    other[0, 10:] = torch.randint(0, VOCAB, (6,), generator=g)
    cache = KVCache.for_model(model.cfg, 1, 16)
    model(ids[:, :10], cache=cache)
    model(ids[:, 10:14], cache=cache)  # 4 draft tokens, all rejected
    cache.truncate(10)
    torch.testing.assert_close(model(other[:, 10:], cache=cache), model(other)[:, 10:], atol=1e-5, rtol=1e-5)


def test_cache_misuse_is_a_clear_error():
    model = model_for("sdpa", None)
    ids = torch.zeros(1, 4, dtype=torch.long)
    cache = KVCache.for_model(model.cfg, 1, 6)
    model(ids, cache=cache)
    with pytest.raises(ValueError, match="KV cache overflow: 4 \\+ 4 tokens > 6"):
        model(ids, cache=cache)
    with pytest.raises(ValueError, match="cannot truncate a cache of 4 tokens to 5"):
        cache.truncate(5)
    with pytest.raises(ValueError, match="one document per row"):
        model(ids, cache=cache, position_ids=torch.arange(4)[None])
    with pytest.raises(ValueError, match="exceeds max_seq_len=32"):
        KVCache.for_model(model.cfg, 1, 33)
    encoder = Transformer(model_config("debug", vocab_size=VOCAB, causal=False))
    with pytest.raises(ValueError, match="needs a causal model"):
        encoder(ids, cache=KVCache.for_model(encoder.cfg, 1, 4))
