"""raylm's Transformer against Hugging Face's ``LlamaForCausalLM`` with the same weights.

Our weights go into a Llama of the same shape by ``raylm.model.hf``'s name mapping; the
logits, the loss and every gradient must agree in fp32, on plain rows and on a packed row of
two documents (passed to Hugging Face as restarting ``position_ids``, which its masking turns
into a block-diagonal causal mask, and as an explicit 4-D mask). This pins the rotary
convention, GQA's head grouping, RMSNorm's epsilon and the SwiGLU halves: the correctness half
of the quality bar whose training half is ``benchmarks/hf_parity.py``.
"""

from __future__ import annotations

import pytest
import torch

from raylm.model import ModelConfig, Transformer, model_config
from raylm.model.hf import llama_config, llama_name, llama_state_dict, to_llama

from .batches import IGNORE_INDEX, packed_batch

pytest.importorskip("transformers")

VOCAB = 96
PLAIN = [[24], [24]]
PACKED = [[10, 14], [24]]  # row 0: two documents; row 1: one


def shape(tie: bool) -> ModelConfig:
    """GQA (4 query heads on 2 kv heads), a rope theta and norm eps off both libraries'
    defaults, and an init wide enough that attention depends on position (logits of order 1)."""
    return model_config("debug", vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                        ffn_hidden=96, max_seq_len=32, rope_theta=5e5, norm_eps=1e-6, init_std=0.2,
                        tie_embeddings=tie, attention="sdpa")


def ours(tie: bool) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(shape(tie))
    with torch.no_grad():  # norm gains off 1, so a swapped or missing norm shows
        for p in model.parameters():
            if p.ndim == 1:
                p.normal_(1.0, 0.3)
    return model


def block_causal(position_ids: torch.Tensor) -> torch.Tensor:
    """Boolean ``(B, 1, L, L)``: same document (positions restart at 0) and not in the future."""
    docs = (position_ids == 0).cumsum(1)
    L = position_ids.shape[1]
    same = docs[:, :, None] == docs[:, None, :]
    return (same & torch.ones(L, L, dtype=torch.bool).tril())[:, None]


def hf_logits(hf, batch: dict, mask: str) -> torch.Tensor:
    """``mask``: "positions" (documents from position_ids alone), "4d" (an explicit mask: bool
    for sdpa, additive float for eager) or "causal" (one causal window over the whole row)."""
    x, pos = batch["input_ids"], batch["position_ids"]
    if mask == "positions":
        return hf(input_ids=x, position_ids=pos).logits
    if mask == "causal":
        return hf(input_ids=x).logits
    allowed = block_causal(pos)
    if hf.config._attn_implementation == "eager":
        allowed = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return hf(input_ids=x, position_ids=pos, attention_mask=allowed).logits


def test_names_map_one_to_one():
    model = ours(tie=False)
    mapped = llama_state_dict(model)
    hf = to_llama(model)
    assert set(mapped) == set(hf.state_dict())
    assert len(set(mapped)) == len(model.state_dict())
    tied = llama_state_dict(ours(tie=True))
    assert tied["lm_head.weight"] is tied["model.embed_tokens.weight"]
    hf_tied = to_llama(ours(tie=True))
    assert hf_tied.lm_head.weight is hf_tied.model.embed_tokens.weight  # still one matrix after loading


@torch.no_grad()
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_same_logits_on_plain_rows(tie, attn):
    model = ours(tie).eval()
    hf = to_llama(model, attn).eval()
    batch = packed_batch(PLAIN, VOCAB, seed=1)
    expected = model(**batch)[0]
    assert expected.std() > 0.5  # not a trivially flat model
    torch.testing.assert_close(hf_logits(hf, batch, "positions"), expected, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(hf_logits(hf, batch, "causal"), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_same_logits_loss_and_gradients_on_a_packed_row(tie, attn):
    model = ours(tie)
    hf = to_llama(model, attn)
    batch = packed_batch(PACKED, VOCAB, seed=2)
    logits, loss = model(**batch)
    for mask in ("positions", "4d"):
        torch.testing.assert_close(hf_logits(hf, batch, mask), logits, atol=2e-5, rtol=1e-5)
    # the document mask matters: one causal window lets document 2 read document 1
    leaky = hf_logits(hf, batch, "causal").detach()
    assert (leaky[0, 10:] - logits[0, 10:]).abs().max() > 1e-2
    torch.testing.assert_close(leaky[0, :10], logits[0, :10].detach(), atol=2e-5, rtol=1e-5)

    labels = batch["labels"]
    n = (labels != IGNORE_INDEX).sum()
    theirs = hf.loss_function(logits=hf_logits(hf, batch, "positions"), labels=None, shift_labels=labels,
                              vocab_size=VOCAB, num_items_in_batch=n)
    torch.testing.assert_close(theirs, loss, atol=1e-6, rtol=1e-6)
    loss.backward()
    theirs.backward()
    hf_params = dict(hf.named_parameters())
    for name, p in model.named_parameters():  # a tied lm_head's gradient is in the embedding's
        torch.testing.assert_close(hf_params[llama_name(name)].grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_what_llama_cannot_express_is_refused():
    with pytest.raises(ValueError, match="μP"):
        llama_config(model_config("debug", parametrization="mup", base_width=32))
    with pytest.raises(ValueError, match="causal"):
        llama_config(model_config("debug", causal=False))
