"""Domain mixing (windowed shares, schedules, epochs, resumable state) and the length curriculum."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from raylm.config import ConfigError, from_dict
from raylm.data.mixing import LengthSchedule, MixConfig, Mixer, SourceExhausted

WEIGHTS = {"web": 0.45, "code": 0.17, "books": 0.20, "papers": 0.08, "other": 0.10}
BIG = {name: 10**9 for name in WEIGHTS}


def window_shares(choices: list[str], names: list[str], window: int) -> np.ndarray:
    """Share of each source in every window of ``window`` consecutive choices: (n - window + 1, sources)."""
    idx = np.array([names.index(c) for c in choices])
    onehot = np.eye(len(names))[idx]
    csum = np.vstack([np.zeros(len(names)), np.cumsum(onehot, axis=0)])
    return (csum[window:] - csum[:-window]) / window


def test_every_window_is_within_one_percent():
    mixer = Mixer(MixConfig(weights=WEIGHTS, window=1000), BIG)
    choices = mixer.take(30_000)
    names = mixer.sources
    target = np.array([WEIGHTS[n] for n in names])
    shares = window_shares(choices, names, 1000)
    assert np.abs(shares - target).max() <= 0.01
    # much tighter in fact: a few sequences per window at most
    assert np.abs(shares - target).max() <= 0.003
    for small in (100, 37):
        assert np.abs(window_shares(choices[:5000], names, small) - target).max() * small <= 3


def test_random_sampling_would_not_meet_the_bound():
    """The property is not vacuous: i.i.d. sampling at the same weights breaks it."""
    names = sorted(WEIGHTS)
    rng = np.random.default_rng(0)
    choices = list(rng.choice(names, size=30_000, p=[WEIGHTS[n] for n in names]))
    target = np.array([WEIGHTS[n] for n in names])
    assert np.abs(window_shares(choices, names, 1000) - target).max() > 0.01


def test_unnormalised_weights_and_zero_weight():
    mixer = Mixer(MixConfig(weights={"a": 3, "b": 1, "c": 0}), {"a": 10**6, "b": 10**6, "c": 10**6})
    choices = mixer.take(4000)
    assert choices.count("a") == 3000 and choices.count("b") == 1000 and "c" not in choices


def test_same_seed_same_choices_other_seed_other_tie_breaks():
    cfg = dict(weights={"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0})
    sizes = {k: 10**6 for k in "abcd"}
    a = Mixer(MixConfig(**cfg, seed=1), sizes).take(400)
    assert a == Mixer(MixConfig(**cfg, seed=1), sizes).take(400)
    firsts = {tuple(Mixer(MixConfig(**cfg, seed=s), sizes).take(4)) for s in range(10)}
    assert len(firsts) > 1  # the seed decides the tie-break order
    assert all(sorted(f) == list("abcd") for f in firsts)  # but each round has every source


def test_step_schedule_switches_weights():
    after = {"web": 0.2, "code": 0.3, "books": 0.3, "papers": 0.2}  # "other" drops to 0
    mixer = Mixer(MixConfig(weights=WEIGHTS, schedule=[(10_000, after)]), BIG)
    assert mixer.weights_at(9_999) == pytest.approx(WEIGHTS)
    assert mixer.weights_at(10_000) == pytest.approx({**after, "other": 0.0})
    choices = mixer.take(20_000)
    names = mixer.sources
    before = window_shares(choices[:10_000], names, 1000)
    later = window_shares(choices[10_000:], names, 1000)
    assert np.abs(before - np.array([WEIGHTS[n] for n in names])).max() <= 0.01
    assert np.abs(later - np.array([after.get(n, 0.0) for n in names])).max() <= 0.01
    assert choices[10_005:].count("other") == 0


def test_linear_schedule_interpolates():
    cfg = MixConfig(
        weights={"a": 1.0, "b": 0.0}, schedule=[(1000, {"a": 0.0, "b": 1.0})], interpolation="linear"
    )
    mixer = Mixer(cfg, {"a": 10**6, "b": 10**6})
    assert mixer.weights_at(250) == pytest.approx({"a": 0.75, "b": 0.25})
    assert mixer.weights_at(5000) == pytest.approx({"a": 0.0, "b": 1.0})
    choices = mixer.take(1000)
    assert choices[:500].count("b") == pytest.approx(125, abs=2)  # integral of the ramp
    assert choices[500:].count("b") == pytest.approx(375, abs=2)


def test_state_dict_round_trip_continues_exactly():
    cfg = MixConfig(weights=WEIGHTS, schedule=[(3000, {"web": 0.5, "code": 0.5})], seed=3)
    sizes = {"web": 5000, "code": 2000, "books": 3000, "papers": 1000, "other": 1500}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = Mixer(cfg, sizes)
        head = [ref.next() for _ in range(2537)]  # credits are far from 0 here
        state = json.loads(json.dumps(ref.state_dict()))  # survives a JSON checkpoint
        tail = [ref.next() for _ in range(2500)]
        resumed = Mixer(cfg, sizes)
        resumed.load_state_dict(state)
        assert [resumed.next() for _ in range(2500)] == tail
        fresh = Mixer(cfg, sizes)
        assert [fresh.next() for _ in range(5037)] == head + tail
    assert set(state) == {"step", "credit", "position", "epoch"} and state["step"] == 2537
    with pytest.raises(ValueError, match="names"):
        Mixer(MixConfig(weights={"x": 1.0}), {"x": 1}).load_state_dict(state)


def test_indices_walk_through_each_source_and_restart():
    mixer = Mixer(MixConfig(weights={"a": 0.5, "b": 0.5}, max_epochs=3), {"a": 3, "b": 1000})
    with pytest.warns(UserWarning, match="'a'.*epoch 2"):
        picks = [mixer.next() for _ in range(8)]
    assert [i for s, i in picks if s == "a"] == [0, 1, 2, 0]
    assert [i for s, i in picks if s == "b"] == [0, 1, 2, 3]
    assert mixer.epochs()["a"] == pytest.approx(4 / 3)


def test_up_sampling_warns_once_and_stops_at_max_epochs():
    cfg = MixConfig(weights={"big": 0.9, "small": 0.1}, max_epochs=2.5)
    mixer = Mixer(cfg, {"big": 10**6, "small": 100})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mixer.take(1000)  # 100 from small: exactly one epoch, no warning yet
        assert not caught
        mixer.take(1000)
        assert len(caught) == 1 and "small" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mixer.take(500)  # small reaches 250 = 2.5 epochs
        assert mixer.epochs()["small"] == pytest.approx(2.5)
        before = mixer.state_dict()
        with pytest.raises(SourceExhausted, match="small.*max_epochs=2.5"):
            mixer.take(20)
    assert mixer.state_dict()["position"]["small"] == before["position"]["small"]


def test_mix_config_validation():
    with pytest.raises(ConfigError, match="sum to 0"):
        MixConfig(weights={"a": 0.0}).validate()
    with pytest.raises(ConfigError, match="weight"):
        MixConfig(weights={"a": -1.0, "b": 2.0}).validate()
    with pytest.raises(ConfigError, match="increasing"):
        MixConfig(weights={"a": 1.0}, schedule=[(10, {"a": 1.0}), (10, {"a": 1.0})]).validate()
    with pytest.raises(ConfigError, match="max_epochs"):
        from_dict(MixConfig, {"weights": {"a": 1}, "max_epochs": 0})
    with pytest.raises(ConfigError, match="no size"):
        Mixer(MixConfig(weights={"a": 1.0, "b": 1.0}), {"a": 10})
    with pytest.raises(ConfigError, match="no sequences"):
        Mixer(MixConfig(weights={"a": 1.0, "b": 1.0}), {"a": 10, "b": 0})


def test_length_schedule():
    sched = LengthSchedule([(0, 512), (1000, 1024), (5000, 4096)])
    assert [sched.seq_len_at(s) for s in (0, 999, 1000, 4999, 5000, 10**9)] == [
        512,
        512,
        1024,
        1024,
        4096,
        4096,
    ]
    with pytest.raises(ConfigError, match="greater"):
        LengthSchedule([(0, 512), (100, 1024), (100, 2048)])
    with pytest.raises(ConfigError, match="seq_len"):
        LengthSchedule([(0, 0)])
    with pytest.raises(ConfigError, match="step 0"):
        LengthSchedule([(10, 512)])
    with pytest.raises(ValueError):
        sched.seq_len_at(-1)
