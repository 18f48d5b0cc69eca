"""μP: the multipliers, the init and the parameter groups' learning rates scale with the width
as Tensor Programs V prescribes for Adam, μP equals SP at the base width, and the coordinate
check is flat in the width under μP and not under SP."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from raylm.config import ConfigError
from raylm.model import Transformer
from raylm.model.config import ModelConfig
from raylm.model.mup import mup_lr_scale
from raylm.optim.optimizers import OptimConfig, build_optimizer
from raylm.tune.coord_check import coord_check, growth, text_batches

SAMPLE = Path(__file__).parents[2] / "data/sample/corpus.jsonl.gz"
BASE = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, max_seq_len=32, attention="eager",
                   parametrization="mup", base_width=64, multiple_of=8)


def test_multipliers_and_attention_scale_follow_the_width():
    wide = dataclasses.replace(BASE, d_model=256)
    assert wide.width_mult == 4
    assert wide.attn_scale == pytest.approx(math.sqrt(16) / 64)  # sqrt(base head_dim) / head_dim
    assert BASE.attn_scale == pytest.approx(1 / math.sqrt(16))  # = SP at the base width
    assert dataclasses.replace(wide, parametrization="sp").attn_scale is None
    assert dataclasses.replace(wide, parametrization="sp").width_mult == 1


def test_mup_at_the_base_width_is_sp():
    torch.manual_seed(0)
    mup = Transformer(BASE)
    torch.manual_seed(0)
    sp = Transformer(dataclasses.replace(BASE, parametrization="sp"))
    ids = torch.randint(0, 256, (2, 32))
    torch.testing.assert_close(mup(ids), sp(ids))


def test_init_and_logits_scale_with_the_width():
    torch.manual_seed(0)
    wide = Transformer(dataclasses.replace(BASE, d_model=1024))
    std = lambda p: float(p.detach().std())  # noqa: E731
    assert std(wide.tok_embeddings.weight) == pytest.approx(0.02, rel=0.05)  # embeddings: constant
    assert std(wide.layers[0].attention.wq.weight) == pytest.approx(0.02 / 4, rel=0.05)  # 1/sqrt(16)
    assert std(wide.lm_head.weight) == pytest.approx(0.02, rel=0.05)
    with torch.no_grad():  # blocks as identities: the logits are the readout of the embedding
        for block in wide.layers:
            block.attention.wo.weight.zero_()
            block.mlp.w2.weight.zero_()
        ids = torch.randint(0, 256, (1, 8))
        plain = torch.nn.functional.linear(wide.norm(wide.tok_embeddings(ids)), wide.lm_head.weight)
        torch.testing.assert_close(wide(ids), plain * (64 / 1024))  # readout scaled by base/width


def test_parameter_groups_scale_hidden_matrices_only():
    cfg = dataclasses.replace(BASE, d_model=256)
    model = Transformer(cfg)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-2), mup_lr_scale(cfg))
    lr = {n: g["lr"] for g in optimizer.param_groups for n in g["param_names"]}
    assert lr["layers.0.attention.wq.weight"] == pytest.approx(1e-2 / 4)
    assert lr["layers.1.mlp.w2.weight"] == pytest.approx(1e-2 / 4)
    for name in ("tok_embeddings.weight", "lm_head.weight", "norm.weight", "layers.0.attention_norm.weight"):
        assert lr[name] == pytest.approx(1e-2), name
    assert mup_lr_scale(BASE) == {} and mup_lr_scale(dataclasses.replace(cfg, parametrization="sp")) == {}


def test_bad_mup_config_is_clear():
    with pytest.raises(ConfigError, match="parametrization"):
        dataclasses.replace(BASE, parametrization="ntk").validate()
    with pytest.raises(ConfigError, match="output_mult"):
        dataclasses.replace(BASE, output_mult=0).validate()


def test_coordinate_check_is_flat_under_mup_and_grows_under_sp():
    batches = text_batches(SAMPLE, 4, 8, 32)
    widths = [64, 128, 256, 512]
    mup = growth(coord_check(BASE, widths, batches, lr=1e-2), step=None)
    sp = growth(coord_check(dataclasses.replace(BASE, parametrization="sp"), widths, batches, lr=1e-2), step=None)
    assert max(mup.values()) < 2.0, mup  # 8x the width, under 2x the activation size
    assert sp["block.1"] > 10 and sp["logits"] > 1.5, sp
