"""Transformer on packed batches: backends agree, documents are isolated, init and training work."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raylm.model import ModelConfig, Transformer, model_config

from .batches import batch_for, doc_slices, packed_batch
from .test_attention import flex_error

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

VOCAB = 64
DOC_LENS = [[7, 9, 16], [32], [20, 12]]  # B=3, L=32


def small(**overrides) -> ModelConfig:
    return model_config("debug", **{"vocab_size": VOCAB, "d_model": 32, "n_kv_heads": 2, **overrides})


def logits_of(model: Transformer, batch: dict, input_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The logits of ``batch``'s layout, with its tokens or ``input_ids``."""
    tokens = batch["input_ids"] if input_ids is None else input_ids
    return model(tokens, **{k: batch[k] for k in ("position_ids", "cu_seqlens", "max_seqlen")})


@pytest.fixture(scope="module", params=[True, False], ids=["causal", "encoder"])
def causal_model(request) -> Transformer:
    torch.manual_seed(0)
    return Transformer(small(attention="eager", causal=request.param)).eval()


@torch.no_grad()  # flex_attention has no backward on CPU
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "encoder"])
def test_backends_give_the_same_logits_and_loss(causal):
    torch.manual_seed(0)
    reference = Transformer(small(attention="eager", causal=causal))
    batch = packed_batch(DOC_LENS, VOCAB)
    ran = []
    for backend in ("sdpa", "flex", "auto"):
        if backend == "flex" and flex_error() is not None:
            continue
        model = Transformer(small(attention=backend, causal=causal))
        model.load_state_dict(reference.state_dict())
        logits, loss = model(**batch)
        ref_logits, ref_loss = reference(**batch)
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
        ran.append(backend)
    assert "sdpa" in ran


@torch.no_grad()
def test_documents_are_isolated(causal_model):
    batch = packed_batch(DOC_LENS, VOCAB)
    logits = logits_of(causal_model, batch)
    doc1, doc2, doc3 = doc_slices(DOC_LENS)[0]
    changed = batch["input_ids"].clone()
    changed[0, doc1] = (changed[0, doc1] + 1) % VOCAB
    new = logits_of(causal_model, batch, changed)
    torch.testing.assert_close(new[0, doc2], logits[0, doc2], atol=1e-6, rtol=0)
    torch.testing.assert_close(new[0, doc3], logits[0, doc3], atol=1e-6, rtol=0)
    torch.testing.assert_close(new[1:], logits[1:], atol=1e-6, rtol=0)
    assert not torch.allclose(new[0, doc1], logits[0, doc1], atol=1e-3)


@torch.no_grad()
def test_causality(causal_model):
    """A decoder's logits never depend on later tokens; an encoder's do (within the document)."""
    batch = packed_batch(DOC_LENS, VOCAB)
    logits = logits_of(causal_model, batch)
    t = 10  # inside row 2's first document (tokens 0..19)
    changed = batch["input_ids"].clone()
    changed[2, t] = (changed[2, t] + 1) % VOCAB
    new = logits_of(causal_model, batch, changed)
    earlier_same = torch.allclose(new[2, :t], logits[2, :t], atol=1e-6, rtol=0)
    assert earlier_same == causal_model.cfg.causal
    assert not torch.allclose(new[2, t:20], logits[2, t:20], atol=1e-3)
    torch.testing.assert_close(new[2, 20:], logits[2, 20:], atol=1e-6, rtol=0)


@torch.no_grad()
def test_packed_document_equals_document_alone(causal_model):
    """Document 2 packed after document 1 gives the logits it gives at the start of a row."""
    a, b = 12, 20
    g = torch.Generator().manual_seed(1)
    doc1, doc2 = torch.randint(0, VOCAB, (a,), generator=g), torch.randint(0, VOCAB, (b,), generator=g)
    packed = batch_for(torch.cat([doc1, doc2])[None], [[a, b]])
    alone = batch_for(torch.cat([doc2, doc1])[None], [[b, a]])
    torch.testing.assert_close(
        logits_of(causal_model, packed)[0, a:], logits_of(causal_model, alone)[0, :b], atol=1e-5, rtol=1e-5
    )


@torch.no_grad()
def test_position_ids_alone_define_documents(causal_model):
    batch = packed_batch(DOC_LENS, VOCAB)
    with_cu = logits_of(causal_model, batch)
    with_positions = causal_model(batch["input_ids"], position_ids=batch["position_ids"])
    torch.testing.assert_close(with_positions, with_cu, atol=1e-6, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "encoder"])
def test_rotary_embedding_is_relative(causal):
    """position_ids reach the rotary embedding: shifting them all changes nothing (RoPE sees only
    distances, which is also why a packed document needs no position restart beyond the mask),
    stretching them changes the logits. A larger init makes attention depend on position."""
    torch.manual_seed(0)
    model = Transformer(small(init_std=0.2, causal=causal, attention="eager"))
    tokens = packed_batch([[32]], VOCAB)["input_ids"]
    positions = torch.arange(32)[None]
    logits = model(tokens, position_ids=positions)
    torch.testing.assert_close(model(tokens, position_ids=positions + 50), logits, atol=1e-4, rtol=1e-4)
    assert (model(tokens, position_ids=2 * positions) - logits).abs().max() > 0.1


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_gqa_and_mqa(n_kv_heads):
    torch.manual_seed(0)
    model = Transformer(small(n_kv_heads=n_kv_heads, attention="sdpa"))
    assert model.layers[0].attention.wk.weight.shape == (n_kv_heads * 8, 32)
    batch = packed_batch(DOC_LENS, VOCAB)
    logits, loss = model(**batch)
    loss.backward()
    assert logits.shape == (3, 32, VOCAB)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_meta_build_then_init(tie):
    cfg = model_config("debug", d_model=128, vocab_size=512, n_layers=4, tie_embeddings=tie)
    with torch.device("meta"):
        model = Transformer(cfg)
    assert model.rope_cos.is_meta
    model.to_empty(device="cpu")
    model.init_weights()
    assert (model.lm_head is None) == tie

    def std(t: torch.Tensor) -> float:
        return t.std().item()

    assert std(model.tok_embeddings.weight) == pytest.approx(0.02, rel=0.05)
    if not tie:
        assert std(model.lm_head.weight) == pytest.approx(0.02, rel=0.05)
    out_std = 0.02 / math.sqrt(2 * 4)
    for layer in model.layers:
        assert std(layer.attention.wq.weight) == pytest.approx(0.02, rel=0.05)
        assert std(layer.mlp.w1.weight) == pytest.approx(0.02, rel=0.05)
        assert std(layer.attention.wo.weight) == pytest.approx(out_std, rel=0.05)
        assert std(layer.mlp.w2.weight) == pytest.approx(out_std, rel=0.05)
        assert torch.equal(layer.attention_norm.weight, torch.ones(128))
    fresh = Transformer(cfg)
    torch.testing.assert_close(model.rope_cos, fresh.rope_cos, atol=0, rtol=0)
    torch.testing.assert_close(model.rope_sin, fresh.rope_sin, atol=0, rtol=0)
    assert "rope_cos" not in model.state_dict()
    logits, loss = model(**packed_batch(DOC_LENS, 512))
    assert torch.isfinite(logits).all()
    assert loss.item() == pytest.approx(math.log(512), rel=0.05)  # near-uniform predictions at init


def test_loss_options():
    torch.manual_seed(0)
    batch = packed_batch(DOC_LENS, VOCAB)
    model = Transformer(small(attention="sdpa"))
    logits, loss = model(**batch)
    valid = batch["labels"] != -100
    torch.testing.assert_close(loss, F.cross_entropy(logits[valid], batch["labels"][valid]))

    model.cfg.z_loss = 1e-2
    _, with_z = model(**batch)
    lse = torch.logsumexp(logits[valid], dim=-1)
    torch.testing.assert_close(with_z, loss + 1e-2 * lse.square().mean())

    model.cfg.z_loss, model.cfg.label_smoothing = 0.0, 0.1
    _, smoothed = model(**batch)
    torch.testing.assert_close(
        smoothed, F.cross_entropy(logits[valid], batch["labels"][valid], label_smoothing=0.1)
    )
    assert not torch.isclose(smoothed, loss)

    _, none = model(batch["input_ids"], labels=torch.full_like(batch["labels"], -100))
    assert none.item() == 0.0


def test_overfits_a_fixed_batch():
    torch.manual_seed(0)
    model = Transformer(small(attention="sdpa"))
    batch = packed_batch(DOC_LENS, VOCAB)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        _, loss = model(**batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_matches_the_loader_batch_contract():
    """tests' batches are laid out like raylm.data.loader's, which the model takes as is."""
    np = pytest.importorskip("numpy")
    from raylm.data.loader import make_batch

    batch = packed_batch(DOC_LENS, VOCAB)
    row_cu = [np.array([0, 7, 16, 32]), np.array([0, 32]), np.array([0, 20, 32])]
    loader = make_batch(np.arange(3), batch["input_ids"].numpy().astype(np.int32), row_cu)
    for key in ("input_ids", "labels", "position_ids", "cu_seqlens", "max_seqlen"):
        assert torch.equal(torch.as_tensor(loader[key]), torch.as_tensor(batch[key])), key
    loader.pop("seq_id")
    model = Transformer(small(attention="sdpa"))
    assert torch.isfinite(model(**loader)[1])


def test_too_long_sequence_is_refused():
    model = Transformer(small(max_seq_len=16))
    with pytest.raises(ValueError, match="sequence length 32 exceeds max_seq_len=16"):
        model(torch.zeros(1, 32, dtype=torch.long))
