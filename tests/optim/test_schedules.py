"""Learning-rate schedules: warmup, the shape of each decay, validation, the plot."""

from __future__ import annotations

import math

import pytest

from raylm.config import ConfigError, from_dict
from raylm.optim import ScheduleConfig, lr_at, lr_multiplier, noam_peak_lr, plot_schedules

W, T, FLOOR = 10, 100, 0.1


def sched(name: str, **kw) -> ScheduleConfig:
    cfg = ScheduleConfig(name=name, warmup_steps=W, total_steps=T, min_lr_ratio=FLOOR, **kw)
    cfg.validate()
    return cfg


@pytest.mark.parametrize("name", ["cosine", "wsd", "linear", "inverse_sqrt", "constant"])
def test_linear_warmup_reaches_the_peak_at_warmup_steps(name):
    cfg = sched(name)
    ramp = [lr_multiplier(cfg, s) for s in range(W + 1)]
    assert ramp[0] == pytest.approx(1 / (W + 1))  # ~0, but the first update is not wasted
    assert ramp[W] == pytest.approx(1.0)
    assert ramp == pytest.approx([(s + 1) / (W + 1) for s in range(W + 1)])


def test_no_warmup_starts_at_the_peak():
    assert lr_multiplier(ScheduleConfig(name="cosine", warmup_steps=0, total_steps=T), 0) == 1.0


def test_cosine_ends_at_min_lr_ratio():
    cfg = sched("cosine")
    values = [lr_multiplier(cfg, s) for s in range(W, T + 1)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert lr_multiplier(cfg, (W + T) // 2) == pytest.approx((1 + FLOOR) / 2)
    assert lr_multiplier(cfg, T) == pytest.approx(FLOOR)
    assert lr_multiplier(cfg, T + 50) == pytest.approx(FLOOR)  # past the end: stays there
    assert lr_at(cfg, 3e-4, T) == pytest.approx(3e-5)


@pytest.mark.parametrize(
    ("shape", "step", "expected"),
    [("linear", 90, 0.5), ("cosine", 90, 0.5), ("sqrt", 85, 0.5), ("sqrt", 81, 1 - math.sqrt(1 / 20))],
)
def test_wsd_is_flat_then_decays_over_the_last_fraction(shape, step, expected):
    cfg = sched("wsd", decay_fraction=0.2, decay_shape=shape)
    assert cfg.decay_start == 80
    assert [lr_multiplier(cfg, s) for s in range(W, 81)] == [1.0] * (81 - W)
    assert lr_multiplier(cfg, 81) < 1.0
    # expected is the decay's own value in [0, 1], mapped onto [FLOOR, 1]
    assert lr_multiplier(cfg, step) == pytest.approx(FLOOR + (1 - FLOOR) * expected)
    assert lr_multiplier(cfg, T) == pytest.approx(FLOOR)


def test_wsd_sqrt_cooldown_drops_faster_than_linear_early():
    sqrt, linear = sched("wsd", decay_shape="sqrt"), sched("wsd", decay_shape="linear")
    assert lr_multiplier(sqrt, 82) < lr_multiplier(linear, 82)


def test_linear_decay_end_value():
    cfg = sched("linear")
    assert lr_multiplier(cfg, (W + T) // 2) == pytest.approx((1 + FLOOR) / 2)
    assert lr_multiplier(cfg, T) == pytest.approx(FLOOR)
    assert lr_multiplier(ScheduleConfig(name="linear", total_steps=T, min_lr_ratio=0.0), T) == 0.0


def test_inverse_sqrt_is_continuous_at_the_warmup_boundary():
    cfg = sched("inverse_sqrt")
    before, at, after = (lr_multiplier(cfg, s) for s in (W - 1, W, W + 1))
    assert at == 1.0
    assert at - before == pytest.approx(1 / (W + 1))  # one warmup increment, no jump
    assert after < at
    assert lr_multiplier(cfg, 4 * W) == pytest.approx(0.5)
    assert lr_multiplier(cfg, 10_000) > 0  # never ends; total_steps unused
    assert lr_multiplier(ScheduleConfig(name="inverse_sqrt", warmup_steps=W), 10_000) > 0


def test_noam_peaks_at_one_at_warmup_and_matches_the_paper():
    cfg = ScheduleConfig(name="noam", warmup_steps=W, d_model=512)
    values = [lr_multiplier(cfg, s) for s in range(5 * W)]
    assert max(values) == pytest.approx(1.0)
    assert values.index(max(values)) == W - 1  # step_num = step + 1 = warmup_steps
    assert lr_multiplier(cfg, 4 * W - 1) == pytest.approx(0.5)
    for step in (0, 3, W - 1, W, 37, 500):
        s = step + 1
        paper = 512**-0.5 * min(s**-0.5, s * W**-1.5)
        assert lr_at(cfg, noam_peak_lr(cfg), step) == pytest.approx(paper)


def test_constant_after_warmup():
    cfg = sched("constant")
    assert {lr_multiplier(cfg, s) for s in range(W, 3 * T)} == {1.0}


def test_decaying_schedule_without_total_steps_names_the_field():
    with pytest.raises(ConfigError, match=r"^total_steps: the 'cosine' schedule needs it"):
        lr_multiplier(ScheduleConfig(name="cosine", warmup_steps=2), 5)
    with pytest.raises(ValueError, match="negative"):
        lr_multiplier(sched("cosine"), -1)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"name": "step"}, r"^name: 'step' is not one of"),
        ({"warmup_steps": -1}, r"^warmup_steps: -1 must not be negative"),
        ({"name": "inverse_sqrt", "warmup_steps": 0}, r"^warmup_steps: the 'inverse_sqrt' schedule"),
        ({"name": "noam"}, r"^warmup_steps: the 'noam' schedule needs at least 1"),
        ({"total_steps": 0}, r"^total_steps: 0 must be at least 1"),
        ({"min_lr_ratio": 1.5}, r"^min_lr_ratio: 1.5 must be in \[0, 1\]"),
        ({"decay_fraction": 0.0}, r"^decay_fraction: 0.0 must be in \(0, 1\]"),
        ({"decay_shape": "exp"}, r"^decay_shape: 'exp' is not one of"),
        ({"d_model": 0}, r"^d_model: 0 must be at least 1"),
        ({"warmup_steps": 20, "total_steps": 10}, r"^warmup_steps: 20 exceeds total_steps=10"),
        (
            {"name": "wsd", "warmup_steps": 90, "total_steps": 100, "decay_fraction": 0.2},
            r"^decay_fraction: the decay would start at step 80, inside the warmup",
        ),
    ],
)
def test_validate_names_the_field(kw, message):
    with pytest.raises(ConfigError, match=message):
        ScheduleConfig(**kw).validate()


def test_from_dict_builds_and_checks_a_schedule():
    cfg = from_dict(ScheduleConfig, {"name": "wsd", "warmup_steps": "5", "decay_shape": "sqrt"})
    assert (cfg.name, cfg.warmup_steps, cfg.decay_shape, cfg.total_steps) == ("wsd", 5, "sqrt", None)
    with pytest.raises(ConfigError, match=r"^decay_shape: 'exp' is not one of"):
        from_dict(ScheduleConfig, {"decay_shape": "exp"})


def test_plot_schedules_writes_a_png(tmp_path):
    cfgs = {
        "cosine": ScheduleConfig(name="cosine", warmup_steps=10),
        "wsd 1-sqrt": ScheduleConfig(name="wsd", warmup_steps=10, decay_shape="sqrt"),
        "inverse_sqrt": ScheduleConfig(name="inverse_sqrt", warmup_steps=10),
    }
    path = plot_schedules(cfgs, 3e-4, 200, tmp_path / "plots" / "lr.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5_000
    assert cfgs["cosine"].total_steps is None  # the caller's configs are left alone
