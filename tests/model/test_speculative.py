"""Self-speculative greedy decoding: token for token plain greedy decoding, whether the MTP
drafts are mostly rejected (an untrained model) or mostly accepted (a model trained on a
predictable sequence), with fewer main-model forwards when they are accepted."""

from __future__ import annotations

import pytest
import torch

from raylm.model import Transformer, model_config
from raylm.model.generate import SamplingConfig, generate
from raylm.model.mtp import IGNORE_INDEX, mtp_labels
from raylm.model.speculative import speculative_greedy

VOCAB, PERIOD, L = 32, 11, 48


def cfg(**kw):
    return model_config("debug", **{"vocab_size": VOCAB, "d_model": 32, "n_kv_heads": 2, "attention": "sdpa",
                                    "max_seq_len": 64, "mtp_heads": 2, **kw})


@pytest.fixture(scope="module")
def cyclic() -> tuple[Transformer, list[int]]:
    """A model trained (main loss + both MTP depths) on a fixed cycle of 11 tokens, so the
    token k ahead is predictable from the context."""
    torch.manual_seed(0)
    cycle = torch.randperm(VOCAB)[:PERIOD]
    model = Transformer(cfg())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        offsets = torch.randint(0, PERIOD, (8, 1))
        ids = cycle[(offsets + torch.arange(L)) % PERIOD]  # (8, L)
        labels = torch.cat([ids[:, 1:], torch.full((8, 1), IGNORE_INDEX)], 1)
        logits, drafts = model(ids, mtp=True)
        sums = model.mtp_loss_sums(drafts, labels)
        mtp = sum(s / (mtp_labels(labels, k) != IGNORE_INDEX).sum() for k, s in enumerate(sums, 1))
        (model.loss(logits, labels) + 0.3 / 2 * mtp).backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), cycle.tolist()


@pytest.mark.parametrize("depth", [1, 2])
def test_speculative_equals_greedy_when_drafts_are_accepted(cyclic, depth):
    model, cycle = cyclic
    prompt = cycle[3:9]
    greedy = generate(model, prompt, SamplingConfig(max_new_tokens=40, eos_id=-1))
    fast = speculative_greedy(model, prompt, max_new_tokens=40, eos_id=-1, depth=depth)
    assert fast.tokens == greedy.tokens
    assert greedy.tokens[:PERIOD] == (cycle[9:] + cycle)[:PERIOD]  # it learned the cycle
    assert fast.acceptance_rate > 0.9 and fast.tokens_per_forward > 1 + 0.9 * depth
    assert fast.forwards < greedy.forwards / (1 + 0.9 * depth) + 2


def test_speculative_equals_greedy_when_drafts_are_rejected():
    """An untrained model: its drafts are mostly wrong, every rejection rolls the caches back."""
    for seed in range(3):
        torch.manual_seed(seed)
        model = Transformer(cfg(mtp_heads=3)).eval()
        prompt = torch.randint(0, VOCAB, (5,)).tolist()
        greedy = generate(model, prompt, SamplingConfig(max_new_tokens=50, eos_id=-1))
        fast = speculative_greedy(model, prompt, max_new_tokens=50, eos_id=-1)
        assert fast.tokens == greedy.tokens and fast.stop == greedy.stop == "max_new_tokens"
        assert fast.acceptance_rate < 0.5


def test_speculative_stops_where_greedy_stops(cyclic):
    model, cycle = cyclic
    prompt = cycle[:4]
    for eos in (cycle[6], cycle[10]):  # inside an accepted draft run, or where the main model takes over
        greedy = generate(model, prompt, SamplingConfig(max_new_tokens=30, eos_id=eos))
        fast = speculative_greedy(model, prompt, max_new_tokens=30, eos_id=eos)
        assert fast.tokens == greedy.tokens and fast.stop == greedy.stop == "eos"
    for n in (1, 2, 7):
        fast = speculative_greedy(model, prompt, max_new_tokens=n, eos_id=-1)
        assert len(fast.tokens) == n and fast.stop == "max_new_tokens"
    near_end = speculative_greedy(model, cycle * 5 + cycle[:4], max_new_tokens=30, eos_id=-1)
    assert near_end.stop == "max_seq_len" and len(near_end.tokens) == 64 - 59
    with pytest.raises(ValueError, match="no multi-token-prediction heads"):
        speculative_greedy(Transformer(cfg(mtp_heads=0)), prompt)
    with pytest.raises(ValueError, match="draft depth 3 must be between 1 and model.mtp_heads=2"):
        speculative_greedy(model, prompt, depth=3)
