"""ModelConfig: validation, from_dict/overrides, flavors, analytic parameter and FLOP counts."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from raylm.config import ConfigError, from_dict
from raylm.model import FLAVORS, ModelConfig, Transformer, model_config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_heads": 8, "d_model": 64, "n_kv_heads": 3}, r"^n_kv_heads: 3 does not divide n_heads=8"),
        ({"n_kv_heads": 0}, r"^n_kv_heads: 0 does not divide"),
        ({"d_model": 30, "n_heads": 4}, r"^n_heads: 4 does not divide d_model=30"),
        ({"d_model": 12, "n_heads": 4}, r"^n_heads: head_dim .* must be even"),
        ({"vocab_size": 0}, r"^vocab_size: 0 must be at least 1"),
        ({"norm_eps": 0.0}, r"^norm_eps: 0.0 must be positive"),
        ({"ffn_hidden": 0}, r"^ffn_hidden: 0"),
        ({"attention": "fast"}, r"^attention: 'fast' is not one of"),
        ({"label_smoothing": 1.0}, r"^label_smoothing: 1.0 must be in"),
        ({"z_loss": -1.0}, r"^z_loss: -1.0 must not be negative"),
    ],
)
def test_validate_names_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**overrides).validate()


def test_from_dict_coerces_and_prefixes_errors():
    cfg = from_dict(ModelConfig, {"d_model": "128", "attention": "sdpa", "n_kv_heads": 2, "causal": "false"})
    assert (cfg.d_model, cfg.attention, cfg.n_kv_heads, cfg.causal) == (128, "sdpa", 2, False)

    @dataclasses.dataclass(kw_only=True)
    class Train:
        model: ModelConfig = dataclasses.field(default_factory=ModelConfig)

    with pytest.raises(ConfigError, match=r"^model: n_kv_heads: 3 does not divide n_heads=4"):
        from_dict(Train, {"model": {"n_kv_heads": 3}})
    with pytest.raises(ConfigError, match=r"model.attention: 'fast' is not one of"):
        from_dict(Train, {"model": {"attention": "fast"}})


def test_model_config_overrides():
    cfg = model_config("125m", vocab_size="8000", n_layers=2)
    assert (cfg.vocab_size, cfg.n_layers, cfg.d_model) == (8000, 2, 768)
    assert FLAVORS["125m"].n_layers == 12  # the flavor itself is untouched
    assert model_config(cfg, causal=False).causal is False
    with pytest.raises(ConfigError, match=r"flavor 'huge' is unknown \(known: debug, tiny"):
        model_config("huge")
    with pytest.raises(ConfigError, match=r"unknown key 'n_layer'"):
        model_config("debug", n_layer=3)
    with pytest.raises(ConfigError, match=r"^n_kv_heads"):
        model_config("debug", n_kv_heads=3)


def test_ffn_default_is_rounded_swiglu_width():
    assert FLAVORS["7b"].ffn_dim == 11008  # Llama 2 7B
    assert FLAVORS["125m"].ffn_dim == 2048
    assert ModelConfig(d_model=64).ffn_dim == 256
    assert ModelConfig(d_model=64, multiple_of=32).ffn_dim == 192
    assert ModelConfig(ffn_hidden=100).ffn_dim == 100


def _count(model: torch.nn.Module, include_embedding: bool = True) -> int:
    params = dict(model.named_parameters())
    if not include_embedding:
        params = {k: p for k, p in params.items() if k not in ("tok_embeddings.weight", "lm_head.weight")}
    return sum(p.numel() for p in params.values())


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(),
        ModelConfig(tie_embeddings=True),
        ModelConfig(n_kv_heads=1, ffn_hidden=100),
        ModelConfig(d_model=96, n_heads=6, n_kv_heads=3, n_layers=3, vocab_size=1000, multiple_of=64),
        *FLAVORS.values(),
    ],
    ids=lambda c: f"d{c.d_model}-L{c.n_layers}-kv{c.kv_heads}-tied{int(c.tie_embeddings)}",
)
def test_num_params_matches_the_module(cfg):
    with torch.device("meta"):
        model = Transformer(cfg)
    assert cfg.num_params() == _count(model)
    assert cfg.num_params(include_embedding=False) == _count(model, include_embedding=False)


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("debug", 0, 1e6),
        ("tiny", 5e6, 10e6),
        ("125m", 100e6, 160e6),
        ("350m", 300e6, 420e6),
        ("1b", 0.9e9, 1.4e9),
        ("3b", 2.6e9, 3.6e9),
        ("7b", 6.5e9, 7e9),
    ],
)
def test_flavor_sizes(name, low, high):
    assert low <= FLAVORS[name].num_params() <= high
    FLAVORS[name].validate()


def test_flops_per_token():
    cfg = FLAVORS["7b"]  # untied: 6 * (params - embedding) + 12 * n_layers * d_model * seq_len
    expected = 6 * (cfg.num_params() - cfg.vocab_size * cfg.d_model) + 12 * 32 * 4096 * 4096
    assert cfg.flops_per_token(4096) == expected == cfg.flops_per_token()
    assert 4.5e10 < expected < 4.7e10  # ~46 GFLOPs per token for Llama 2 7B at 4k
    # Tying saves parameters, not compute; longer sequences cost more attention.
    tied = dataclasses.replace(cfg, tie_embeddings=True)
    assert tied.flops_per_token(2048) == cfg.flops_per_token(2048) < cfg.flops_per_token(4096)


def test_config_imports_without_torch():
    code = "import sys, raylm.model, raylm.model.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
