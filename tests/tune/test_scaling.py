"""The Chinchilla-form fit recovers known constants and predicts an unseen size; bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest

from raylm.tune.scaling import fit_scaling_law, predict


def law(n, d):
    return 1.7 + 40 / n**0.34 + 120 / d**0.28


def test_recovers_exponents_and_predicts_a_larger_model():
    rng = np.random.default_rng(1)
    runs = [(n, d) for n in (1e5, 4e5, 1.6e6) for d in (2e5, 4e5, 8e5, 1.6e6)]
    loss = [law(n, d) * np.exp(rng.normal(0, 0.002)) for n, d in runs]
    fit = fit_scaling_law([r[0] for r in runs], [r[1] for r in runs], loss, bootstrap=3)
    assert fit["fit"]["alpha"] == pytest.approx(0.34, abs=0.05)
    assert fit["fit"]["beta"] == pytest.approx(0.28, abs=0.05)
    assert fit["rmse_log"] < 0.005 and fit["bootstraps"] == 3
    assert set(fit["std"]) == {"E", "A", "alpha", "B", "beta"}
    pred = predict(fit, 6.4e6, 1.6e6)  # 4x past the largest fitted model
    assert pred["loss"] == pytest.approx(law(6.4e6, 1.6e6), rel=0.01)
    assert pred["p05"] <= pred["p95"] and pred["p95"] - pred["p05"] < 0.05 * pred["loss"]


def test_bad_input():
    with pytest.raises(ValueError, match="at least 5 runs"):
        fit_scaling_law([1, 2], [1, 2], [3, 2])
    with pytest.raises(ValueError, match="positive and finite"):
        fit_scaling_law([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [3, 2, float("inf"), 1, 1])
