"""Parameter groups (weight-decay rule, lr_scale patterns), build_optimizer, apply_lr, DTensor."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from raylm.config import ConfigError, from_dict
from raylm.model import Transformer, model_config
from raylm.optim import Lion, OptimConfig, ScheduleConfig, apply_lr, build_optimizer, param_groups


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(10, 8)
        self.proj = nn.Linear(8, 8)
        self.norm = nn.RMSNorm(8)
        self.head = nn.Linear(8, 10, bias=False)
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)


def by_name(groups):
    return {g["name"]: set(g["param_names"]) for g in groups}


def test_decay_only_on_non_embedding_matrices():
    model = Tiny()
    groups = param_groups(model, OptimConfig(weight_decay=0.1))
    assert by_name(groups) == {
        "no_decay": {"tok_embeddings.weight", "proj.bias", "norm.weight"},
        "decay": {"proj.weight", "head.weight"},
    }
    assert {g["name"]: g["weight_decay"] for g in groups} == {"no_decay": 0.0, "decay": 0.1}
    assert all(g["lr_scale"] == 1.0 and g["lr"] == 3e-4 for g in groups)
    listed = [p for g in groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(listed) == len({id(p) for p in listed}) == len(trainable)  # each exactly once
    assert {id(p) for p in listed} == {id(p) for p in trainable}
    for g in groups:  # names line up with tensors
        for name, p in zip(g["param_names"], g["params"]):
            assert model.get_parameter(name) is p


@pytest.mark.parametrize("tie", [False, True])
def test_transformer_groups(tie):
    cfg = model_config("debug", tie_embeddings=tie)
    groups = param_groups(Transformer(cfg), OptimConfig())
    names = by_name(groups)
    assert all(n.endswith("norm.weight") or n == "tok_embeddings.weight" for n in names["no_decay"])
    assert len(names["no_decay"]) == 2 * cfg.n_layers + 2  # two norms per block, final norm, embedding
    assert ("lm_head.weight" in names["decay"]) is not tie
    assert sum(p.numel() for g in groups for p in g["params"]) == cfg.num_params()  # tied: once


def test_lr_scale_patterns_split_the_groups():
    model = Tiny()
    cfg = OptimConfig(lr=1e-3)
    groups = param_groups(model, cfg, {"proj.*": 0.5, "*.weight": 2.0})  # first match wins
    assert by_name(groups) == {
        "no_decay:*.weight": {"tok_embeddings.weight", "norm.weight"},
        "decay:proj.*": {"proj.weight"},
        "no_decay:proj.*": {"proj.bias"},
        "decay:*.weight": {"head.weight"},
    }
    scales = {g["name"]: (g["lr_scale"], g["lr"]) for g in groups}
    assert scales["decay:proj.*"] == (0.5, pytest.approx(5e-4))
    assert scales["decay:*.weight"] == (2.0, pytest.approx(2e-3))
    assert len({id(p) for g in groups for p in g["params"]}) == 5

    with pytest.raises(ValueError, match=r"pattern 'layers\.\*' matches no trainable parameter"):
        param_groups(model, cfg, {"proj.*": 0.5, "layers.*": 0.5})
    with pytest.raises(ValueError, match=r"lr_scale\['proj.\*'\]: 0.0 must be positive"):
        param_groups(model, cfg, {"proj.*": 0.0})


def test_wrapper_prefixes_are_removed_from_names():
    class Compiled(nn.Module):  # torch.compile's OptimizedModule keeps the model as _orig_mod
        def __init__(self) -> None:
            super().__init__()
            self._orig_mod = Tiny()

    groups = param_groups(Compiled(), OptimConfig(), {"proj.*": 0.5})
    assert "decay:proj.*" in by_name(groups)
    assert all(not n.startswith("_orig_mod") for g in groups for n in g["param_names"])


def test_apply_lr_multiplies_peak_schedule_and_scale():
    opt = build_optimizer(Tiny(), OptimConfig(lr=1e-3), {"proj.*": 0.5})
    apply_lr(opt, 2e-3, 0.25)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["decay:proj.*"] == pytest.approx(2e-3 * 0.25 * 0.5)
    assert lrs["decay"] == pytest.approx(2e-3 * 0.25)


def test_build_optimizer_kinds_and_settings():
    model = Tiny()
    adamw = build_optimizer(model, OptimConfig(beta1=0.8, beta2=0.9, eps=1e-6))
    assert type(adamw) is torch.optim.AdamW
    assert adamw.defaults["betas"] == (0.8, 0.9) and adamw.defaults["eps"] == 1e-6
    assert not adamw.defaults["fused"]  # auto: CPU parameters -> not fused
    assert build_optimizer(model, OptimConfig(fused=True)).defaults["fused"] is True
    lion = build_optimizer(model, OptimConfig(name="lion", beta2=0.99))
    assert type(lion) is Lion and lion.defaults["betas"] == (0.9, 0.99)
    assert type(build_optimizer(model, OptimConfig(name="adafactor"))) is torch.optim.Adafactor


@pytest.mark.parametrize(("name", "lr"), [("adamw", 3e-2), ("lion", 3e-3), ("adafactor", 1e-1)])
def test_each_optimizer_reduces_a_regression_loss(name, lr):
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = x @ torch.randn(8, 1) + 0.5
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = build_optimizer(model, OptimConfig(name=name, lr=lr, weight_decay=0.01))

    def loss_fn() -> torch.Tensor:
        return nn.functional.mse_loss(model(x), y)

    first = loss_fn().item()
    for _ in range(150):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    assert loss_fn().item() < 0.1 * first


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"name": "sgd"}, r"^name: 'sgd' is not one of"),
        ({"lr": 0.0}, r"^lr: 0.0 must be positive"),
        ({"beta1": 1.0}, r"^beta1: 1.0 must be in \[0, 1\)"),
        ({"beta2": -0.1}, r"^beta2: -0.1 must be in"),
        ({"eps": 0.0}, r"^eps: 0.0 must be positive"),
        ({"weight_decay": -1.0}, r"^weight_decay: -1.0 must not be negative"),
        ({"name": "lion", "fused": True}, r"^fused: only adamw has a fused kernel"),
    ],
)
def test_validate_names_the_field(kw, message):
    with pytest.raises(ConfigError, match=message):
        OptimConfig(**kw).validate()


def test_nested_schedule_errors_name_the_dotted_key():
    with pytest.raises(ConfigError, match=r"^schedule\.warmup_steps: -1 must not be negative"):
        OptimConfig(schedule=ScheduleConfig(warmup_steps=-1)).validate()
    cfg = from_dict(OptimConfig, {"name": "lion", "lr": "1e-4", "schedule": {"name": "wsd"}})
    assert (cfg.name, cfg.lr, cfg.schedule.name) == ("lion", 1e-4, "wsd")
    with pytest.raises(ConfigError, match=r"^schedule: min_lr_ratio: 2.0"):
        from_dict(OptimConfig, {"schedule": {"min_lr_ratio": 2.0}})


@pytest.fixture
def one_rank_group():
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_fsdp2_dtensor_parameters(one_rank_group):
    """AdamW and Lion step DTensor parameters exactly as plain ones; Adafactor is refused."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    x = torch.randn(5, 8)
    for name in ("adamw", "lion"):
        ref, sharded = copy.deepcopy(plain), fully_shard(copy.deepcopy(plain))
        assert isinstance(next(sharded.parameters()), DTensor)
        cfg = OptimConfig(name=name, lr=1e-2)
        for model in (ref, sharded):
            opt = build_optimizer(model, cfg, {"2.*": 0.5})
            for _ in range(2):
                opt.zero_grad()
                model(x).square().mean().backward()
                opt.step()
        for p, q in zip(ref.parameters(), sharded.parameters()):
            torch.testing.assert_close(p, q.full_tensor())
    with pytest.raises(ConfigError, match=r"^name: torch.optim.Adafactor does not support DTensor"):
        build_optimizer(fully_shard(copy.deepcopy(plain)), OptimConfig(name="adafactor"))
