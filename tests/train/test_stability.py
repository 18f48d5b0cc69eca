"""SpikeGuard: skip on a spike, rollback after repeated spikes, non-finite values, state."""

from __future__ import annotations

import json
import math
import random

import pytest

from raylm.config import ConfigError
from raylm.train.stability import SpikeGuard, SpikeGuardConfig


def warm(guard: SpikeGuard, steps: int = 30, seed: int = 0) -> int:
    """Feed ``steps`` ordinary steps (loss ~3 with 5% noise); returns the next step."""
    rng = random.Random(seed)
    for step in range(steps):
        assert guard.check(step, 3.0 * (1 + 0.05 * rng.uniform(-1, 1)), 1.0) == "ok"
    return steps


def test_normal_noise_is_ok():
    guard = SpikeGuard(SpikeGuardConfig())
    rng = random.Random(1)
    for step in range(300):  # a falling loss with 20% noise and noisy grad norms
        loss = (4.0 - step / 100) * (1 + 0.2 * rng.uniform(-1, 1))
        assert guard.check(step, loss, rng.uniform(0.5, 3.0)) == "ok"
    assert guard.records == [] and guard.skipped_steps == []


def test_ten_x_spike_is_skipped_and_kept_out_of_the_mean():
    guard = SpikeGuard(SpikeGuardConfig())
    step = warm(guard)
    mean = guard.running_mean
    assert guard.check(step, 30.0, 1.0) == "skip"
    assert guard.running_mean == mean
    assert guard.records == [{"step": step, "loss": 30.0, "grad_norm": 1.0, "reason": "loss", "action": "skip"}]
    assert guard.check(step + 1, 3.1, 1.0) == "ok"


def test_loss_test_waits_for_min_steps():
    guard = SpikeGuard(SpikeGuardConfig(min_steps=20))
    warm(guard, steps=5)
    assert guard.check(5, 30.0, 1.0) == "ok"  # the early loss falls fast: no verdict yet


def test_rollback_after_max_spikes_within_spike_window():
    guard = SpikeGuard(SpikeGuardConfig(max_spikes=3, spike_window=100))
    warm(guard)
    assert [guard.check(s, 50.0, 1.0) for s in (30, 60, 90)] == ["skip", "skip", "rollback"]
    assert guard.rollbacks == 1
    assert guard.check(91, 50.0, 1.0) == "skip"  # counting starts afresh after a rollback
    assert guard.skipped_steps == [30, 60, 90, 91]


def test_spikes_further_apart_than_spike_window_never_roll_back():
    guard = SpikeGuard(SpikeGuardConfig(max_spikes=2, spike_window=100))
    warm(guard)
    assert [guard.check(s, 50.0, 1.0) for s in (30, 130, 230)] == ["skip"] * 3
    assert guard.check(240, 50.0, 1.0) == "rollback"


@pytest.mark.parametrize(
    ("loss", "grad_norm", "reason"),
    [
        (math.nan, 1.0, "nonfinite_loss"),
        (math.inf, 1.0, "nonfinite_loss"),
        (3.0, math.nan, "nonfinite_grad_norm"),
        (3.0, math.inf, "nonfinite_grad_norm"),
        (3.0, 11.0, "grad_norm"),
    ],
)
def test_nonfinite_and_large_grad_norm_are_spikes_from_the_first_step(loss, grad_norm, reason):
    guard = SpikeGuard(SpikeGuardConfig(max_grad_norm=10.0))
    assert guard.check(0, loss, grad_norm) == "skip"
    assert guard.records[-1]["reason"] == reason
    assert guard.running_mean is None


def test_disabled_guard_says_ok():
    guard = SpikeGuard(SpikeGuardConfig(enabled=False))
    assert guard.check(0, math.nan, math.inf) == "ok" and guard.records == []


def test_state_round_trip_is_strict_json_and_resumes_identically():
    cfg = SpikeGuardConfig(max_spikes=2)
    guard = SpikeGuard(cfg)
    step = warm(guard)
    assert guard.check(step, math.nan, 1.0) == "skip"
    text = json.dumps(guard.state_dict(), allow_nan=False)

    resumed = SpikeGuard(cfg)
    resumed.load_state_dict(json.loads(text))
    assert resumed.state_dict() == guard.state_dict()
    assert resumed.running_mean == pytest.approx(guard.running_mean)
    assert resumed.records[0]["loss"] == "nan"
    # the restored spike still counts: the next one asks for the rollback in both
    assert resumed.check(step + 1, 40.0, 1.0) == guard.check(step + 1, 40.0, 1.0) == "rollback"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"window": 0}, r"^window: 0 must be at least 1"),
        ({"min_steps": 0}, r"^min_steps: 0 must be at least 1"),
        ({"window": 10, "min_steps": 20}, r"^min_steps: 20 exceeds window=10"),
        ({"factor": 1.0}, r"^factor: 1.0 must be greater than 1"),
        ({"max_grad_norm": 0.0}, r"^max_grad_norm: 0.0 must be positive"),
        ({"max_spikes": 0}, r"^max_spikes: 0 must be at least 1"),
        ({"spike_window": 0}, r"^spike_window: 0 must be at least 1"),
    ],
)
def test_validate_names_the_field(kw, message):
    with pytest.raises(ConfigError, match=message):
        SpikeGuardConfig(**kw).validate()


def test_an_fp16_step_skipped_as_a_spike_lowers_the_loss_scale_and_training_goes_on():
    """Under fp16 the gradient norm is read after ``unscale_``; a skipped step must still move the
    GradScaler on, or the next step's ``unscale_`` refuses ("already been called")."""
    import torch

    from raylm.model import Transformer
    from raylm.model.mup import mup_lr_scale
    from raylm.optim.optimizers import build_optimizer
    from raylm.train.config import train_config
    from raylm.train.strategy import build_strategy

    cfg = train_config({"name": "fp16", "data": {"path": "unused"},
                        "model": {"flavor": "debug", "vocab_size": 64, "max_seq_len": 16, "attention": "sdpa"}})
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    strategy = build_strategy(cfg, "fp16", torch.device("cpu"))
    strategy.wrap(model)
    strategy.setup(build_optimizer(model, cfg.optim, mup_lr_scale(cfg.model)))
    ids = torch.randint(0, 64, (2, 16))
    scale = strategy.scaler.get_scale()
    before = [p.detach().clone() for p in model.parameters()]
    for apply, overflow in ((False, True), (True, False)):
        strategy.backward(model.loss(model(ids), ids) * (float("inf") if overflow else 1.0), last=True)
        norm = strategy.grad_norm(1.0)
        assert math.isfinite(norm) != overflow
        strategy.step(apply=apply, lr_multiplier=1.0)
        if overflow:  # skipped: the weights are as they were and the scale went down
            assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
            assert strategy.scaler.get_scale() < scale
    assert not all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # the next step was taken
