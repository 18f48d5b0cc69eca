"""Decoding: top-k / top-p filtering, sampling reproducible by seed, greedy on the KV cache equal
to argmax decoding by full forwards, stopping at eos and at the length budget."""

from __future__ import annotations

import pytest
import torch

from raylm.config import ConfigError
from raylm.model import Transformer, model_config
from raylm.model.generate import SamplingConfig, filter_logits, generate, next_token

VOCAB = 48


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(model_config("debug", vocab_size=VOCAB, d_model=32, n_kv_heads=2, attention="sdpa",
                                    max_seq_len=40))


def test_top_k_and_top_p_keep_the_right_tokens():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log()
    kept = lambda out: torch.isfinite(out).nonzero().flatten().tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=2)) == [1, 3]
    assert kept(filter_logits(logits, top_p=0.7)) == [1, 3]  # 0.5 + 0.3 >= 0.7: the nucleus
    assert kept(filter_logits(logits, top_p=0.5)) == [1]  # the top token alone has 0.5
    assert kept(filter_logits(logits, top_p=0.81)) == [1, 2, 3]
    assert kept(filter_logits(logits, top_p=0.01)) == [1]  # the most likely token always stays
    assert kept(filter_logits(logits, top_k=3, top_p=0.7)) == [1, 3]
    assert kept(filter_logits(logits)) == [0, 1, 2, 3]
    # the nucleus is renormalised: sampling probabilities are the kept ones over their sum
    torch.testing.assert_close(filter_logits(logits, top_p=0.7).softmax(-1), torch.tensor([0, 0.5, 0, 0.3]) / 0.8)
    batch = torch.stack([logits, logits.flip(0)])  # (2, V): row-wise
    assert [kept(row) for row in filter_logits(batch, top_k=1)] == [[1], [2]]


def test_sampling_draws_from_the_filtered_distribution():
    logits = torch.tensor([0.05, 0.5, 0.15, 0.3]).log()
    cfg = SamplingConfig(temperature=1.0, top_p=0.7)
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([next_token(logits, cfg, g) for _ in range(4000)])
    assert set(draws.tolist()) == {1, 3}
    assert float((draws == 1).float().mean()) == pytest.approx(0.5 / 0.8, abs=0.03)
    hot = SamplingConfig(temperature=1e-4)  # a tiny temperature is greedy in effect
    assert {next_token(logits, hot, g) for _ in range(50)} == {1}


def test_greedy_on_the_cache_equals_argmax_of_full_forwards(model):
    prompt = [5, 9, 11, 3]
    out = generate(model, prompt, SamplingConfig(max_new_tokens=12, eos_id=-1))
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert out.tokens == ids[len(prompt):] and out.stop == "max_new_tokens" and out.forwards == 12


def test_generation_stops_at_eos_and_at_max_seq_len(model):
    prompt = [5, 9, 11, 3]
    free = generate(model, prompt, SamplingConfig(max_new_tokens=12, eos_id=-1)).tokens
    eos = free[4]
    stopped = generate(model, prompt, SamplingConfig(max_new_tokens=12, eos_id=eos))
    assert stopped.stop == "eos" and stopped.tokens == free[:free.index(eos)] and eos not in stopped.tokens
    long = generate(model, prompt, SamplingConfig(max_new_tokens=100, eos_id=-1))
    assert long.stop == "max_seq_len" and len(prompt) + len(long.tokens) == model.cfg.max_seq_len
    with pytest.raises(ValueError, match="the prompt has 40 tokens; the model's max_seq_len is 40"):
        generate(model, [1] * 40)


def test_same_seed_same_tokens_and_the_caller_state_is_untouched(model):
    cfg = lambda seed: SamplingConfig(max_new_tokens=16, temperature=1.5, top_k=20, seed=seed, eos_id=-1)  # noqa: E731
    model.train()
    rng = torch.get_rng_state()
    first = generate(model, [1, 2, 3], cfg(7)).tokens
    assert generate(model, [1, 2, 3], cfg(7)).tokens == first
    assert any(generate(model, [1, 2, 3], cfg(s)).tokens != first for s in (8, 9))
    assert model.training and torch.equal(torch.get_rng_state(), rng)  # train mode back, global RNG unused
    model.eval()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("temperature", -1.0, r"^temperature: -1.0 must not be negative"),
    ("top_p", 0.0, r"^top_p: 0.0 must be in \(0, 1\]"),
    ("top_k", -2, r"^top_k: -2 must not be negative"),
    ("max_new_tokens", 0, r"^max_new_tokens: 0 must be at least 1"),
])
def test_bad_sampling_config_names_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message):
        SamplingConfig(**{field: value}).validate()
