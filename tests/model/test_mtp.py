"""Multi-token prediction: targets inside documents, causal and document-isolated depths, cached
drafting steps equal to the full forward, sizes, μP groups, and a model that learns with it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from raylm.config import ConfigError
from raylm.model import ModelConfig, Transformer, model_config
from raylm.model.kv_cache import KVCache
from raylm.model.mtp import IGNORE_INDEX, mtp_labels
from raylm.model.mup import mup_lr_scale
from raylm.optim.optimizers import OptimConfig, build_optimizer

from .batches import packed_batch

VOCAB = 64
DOC_LENS = [[7, 9, 16], [32], [20, 12]]  # B=3, L=32


def small(**overrides) -> ModelConfig:
    return model_config("debug", **{"vocab_size": VOCAB, "d_model": 32, "n_kv_heads": 2, "attention": "sdpa",
                                    "mtp_heads": 2, **overrides})


def test_mtp_labels_are_the_token_k_ahead_in_the_same_document():
    batch = packed_batch(DOC_LENS, VOCAB)
    ids = batch["input_ids"]
    for k in (1, 2, 3):
        got = mtp_labels(batch["labels"], k)
        for row, lens in enumerate(DOC_LENS):
            start = 0
            for n in lens:
                for t in range(start, start + n):
                    ahead = t + k + 1
                    want = int(ids[row, ahead]) if ahead < start + n else IGNORE_INDEX
                    assert int(got[row, t]) == want, (k, row, t)
                start += n
    assert torch.equal(mtp_labels(batch["labels"], 0), batch["labels"])


@torch.no_grad()
def test_depth_k_sees_tokens_up_to_t_plus_k_of_its_own_document():
    torch.manual_seed(0)
    model = Transformer(small(attention="eager")).eval()
    batch = packed_batch(DOC_LENS, VOCAB)
    layout = {k: batch[k] for k in ("position_ids", "cu_seqlens", "max_seqlen")}
    _, drafts = model(batch["input_ids"], mtp=True, **layout)
    assert [d.shape for d in drafts] == [(3, 32, VOCAB)] * 2
    t = 8  # row 2's first document spans tokens 0..19
    for k, draft in enumerate(drafts, start=1):
        later = batch["input_ids"].clone()
        later[2, t + k + 1] = (later[2, t + k + 1] + 1) % VOCAB  # the target itself: invisible
        _, new = model(later, mtp=True, **layout)
        torch.testing.assert_close(new[k - 1][2, :t + 1], draft[2, :t + 1], atol=1e-6, rtol=0)
        seen = batch["input_ids"].clone()
        seen[2, t + k] = (seen[2, t + k] + 1) % VOCAB  # the input token k ahead: read at t
        _, new = model(seen, mtp=True, **layout)
        assert not torch.allclose(new[k - 1][2, t], draft[2, t], atol=1e-4)
    other = batch["input_ids"].clone()
    other[2, 20:] = (other[2, 20:] + 1) % VOCAB  # row 2's second document
    _, new = model(other, mtp=True, **layout)
    for k in (1, 2):
        torch.testing.assert_close(new[k - 1][2, :20 - k], drafts[k - 1][2, :20 - k], atol=1e-6, rtol=0)


@torch.no_grad()
def test_cached_mtp_steps_equal_the_full_forward():
    """Depth k over positions in two chunks, on its own KV cache, gives the logits of
    ``forward(mtp=True)`` at every position whose token k ahead exists."""
    torch.manual_seed(0)
    model = Transformer(small()).eval()
    L = 20
    ids = torch.randint(0, VOCAB, (1, L), generator=torch.Generator().manual_seed(3))
    _, drafts = model(ids, mtp=True)
    h = model.hidden(ids)
    for k in (1, 2):
        cache = KVCache.for_model(model.cfg, 1, L, n_layers=1)
        n = L - k  # positions 0..L-k-1 have their token k ahead
        first, second = (model.mtp_step(k, h[:, a:b], ids[:, a + k:b + k], cache) for a, b in ((0, 7), (7, n)))
        torch.testing.assert_close(torch.cat([first[1], second[1]], 1), drafts[k - 1][:, :n], atol=1e-5, rtol=1e-5)
        h = torch.cat([first[0], second[0]], 1)


@pytest.mark.parametrize("cfg", [small(), small(tie_embeddings=True, mtp_heads=1), small(n_kv_heads=None, mtp_heads=3)],
                         ids=["D2", "D1-tied", "D3-mha"])
def test_num_params_and_flops_count_the_mtp_modules(cfg):
    with torch.device("meta"):
        model = Transformer(cfg)
    assert cfg.num_params() == sum(p.numel() for p in model.parameters())
    per_depth = sum(p.numel() for p in model.mtp[0].parameters())
    assert cfg.mtp_params == cfg.mtp_heads * per_depth
    base = dataclasses.replace(cfg, mtp_heads=0)
    D, V, d = cfg.mtp_heads, cfg.vocab_size, cfg.d_model
    assert cfg.flops_per_token(64) - base.flops_per_token(64) == 6 * (cfg.mtp_params + D * V * d) + 12 * D * d * 64


def test_the_planner_counts_the_mtp_parameters():
    from raylm.plan import memory, plan_config

    model = {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "mtp_heads": 2}
    p = memory(plan_config({"model": model, "num_gpus": 1, "precision": "fp32"}), "ddp", "none")
    assert p["parameters"] == 4 * ModelConfig(**model).num_params()


def test_mup_scales_the_mtp_matrices_too():
    cfg = small(parametrization="mup", base_width=16)  # width_mult 2
    lr = {n: g["lr"] for g in build_optimizer(Transformer(cfg), OptimConfig(lr=1e-2), mup_lr_scale(cfg)).param_groups
          for n in g["param_names"]}
    for name in ("mtp.0.proj.weight", "mtp.1.block.attention.wq.weight", "mtp.1.block.mlp.w2.weight"):
        assert lr[name] == pytest.approx(5e-3), name
    assert lr["mtp.0.hidden_norm.weight"] == pytest.approx(1e-2)
    build_optimizer(Transformer(small(mtp_heads=0, parametrization="mup", base_width=16)), OptimConfig(),
                    mup_lr_scale(small(mtp_heads=0, parametrization="mup", base_width=16)))  # no MTP patterns left over


def test_mtp_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"^mtp_heads: 1 needs a causal model"):
        small(mtp_heads=1, causal=False)
    with pytest.raises(ConfigError, match=r"^mtp_heads \(-1\) and mtp_weight"):
        small(mtp_heads=-1)
    with pytest.raises(ValueError, match="pass no labels or cache"):
        Transformer(small())(torch.zeros(1, 4, dtype=torch.long), mtp=True, labels=torch.zeros(1, 4, dtype=torch.long))


def test_mtp_losses_fall_in_training():
    """Main and both MTP depths learn a document's tokens; the depth losses sum per depth."""
    torch.manual_seed(0)
    model = Transformer(small())
    batch = packed_batch(DOC_LENS, VOCAB, seed=4)
    layout = {k: batch[k] for k in ("position_ids", "cu_seqlens", "max_seqlen")}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    history = []
    for _ in range(15):
        logits, drafts = model(batch["input_ids"], mtp=True, **layout)
        sums = model.mtp_loss_sums(drafts, batch["labels"])
        counts = [int((mtp_labels(batch["labels"], k) != IGNORE_INDEX).sum()) for k in (1, 2)]
        losses = [model.loss(logits, batch["labels"])] + [s / n for s, n in zip(sums, counts, strict=True)]
        (losses[0] + model.cfg.mtp_weight / 2 * (losses[1] + losses[2])).backward()
        optimizer.step()
        optimizer.zero_grad()
        history.append([float(x.detach()) for x in losses])
    for depth in range(3):
        assert history[-1][depth] < history[0][depth] - 2.0, (depth, history[0], history[-1])
