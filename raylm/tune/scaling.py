"""A Chinchilla-form scaling law fitted to sweep runs: ``L(N, D) = E + A / N^alpha + B / D^beta``
(Hoffmann et al. 2022, "approach 3"), with ``N`` the non-embedding parameters and ``D`` the
training tokens of each run.

As in the paper, the fit minimises a Huber loss (delta 1e-3) of the log-loss residuals,
``log L_pred - log L``, over the parameters ``(log A, log B, log E, alpha, beta)``, from a grid
of starting points (the best one is kept: the objective has local minima). Uncertainty is a
bootstrap: the fit is repeated (from the full fit and 4 of the grid's starting points) on runs
resampled with replacement, and the standard deviation
and the 5-95% range of each constant (and of a prediction) are reported; with a handful of runs
it is wide, and says so.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

PARAMS = ("E", "A", "alpha", "B", "beta")
GRID = [np.array(t) for t in itertools.product([0.0, 6.0, 12.0], [0.0, 6.0, 12.0], [0.0, 1.0], [0.3], [0.3])]
"""Starting points ``(log A, log B, log E, alpha, beta)`` of the full fit."""


def law(theta: np.ndarray, n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``L(N, D)`` at parameters ``theta = (log A, log B, log E, alpha, beta)`` (a fit's ``"theta"``)."""
    log_a, log_b, log_e, alpha, beta = theta
    with np.errstate(over="ignore"):  # a far-off trial point of the optimiser: inf, rejected
        return np.exp(log_e) + np.exp(log_a - alpha * np.log(n)) + np.exp(log_b - beta * np.log(d))


def _fit_once(n: np.ndarray, d: np.ndarray, loss: np.ndarray, delta: float,
              starts: list[np.ndarray] | None = None) -> np.ndarray:
    from scipy.optimize import minimize

    def objective(theta: np.ndarray) -> float:
        r = np.log(law(theta, n, d)) - np.log(loss)
        a = np.abs(r)
        value = float(np.sum(np.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta))))
        return value if math.isfinite(value) else 1e30

    best, best_value = None, math.inf
    for start in GRID if starts is None else starts:
        res = minimize(objective, start, method="BFGS")  # unbounded; 3x faster here than L-BFGS-B
        if res.fun < best_value:
            best, best_value = res.x, res.fun
    return best


def fit_scaling_law(n: Sequence[float], d: Sequence[float], loss: Sequence[float], *,
                    bootstrap: int = 100, seed: int = 0, delta: float = 1e-3) -> dict[str, Any]:
    """Fit ``L(N, D)`` to runs ``(n[i], d[i], loss[i])``; returns ``{"fit": {E, A, alpha, B,
    beta}, "std": {...}, "p05": {...}, "p95": {...}, "runs": k, "rmse_log": ...,
    "bootstrap_thetas": [...]}`` (the last for ``predict``)."""
    n_, d_, l_ = (np.asarray(x, np.float64) for x in (n, d, loss))
    if not (len(n_) == len(d_) == len(l_)) or len(n_) < 5:
        raise ValueError(f"need at least 5 runs with n, d and loss each, got {len(n_)}, {len(d_)}, {len(l_)}")
    if (n_ <= 0).any() or (d_ <= 0).any() or (l_ <= 0).any() or not np.isfinite(l_).all():
        raise ValueError("n, d and loss must be positive and finite")
    theta = _fit_once(n_, d_, l_, delta)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(bootstrap):
        idx = rng.integers(0, len(n_), len(n_))
        if len(set(zip(n_[idx], d_[idx]))) >= 5:
            starts = [theta] + [GRID[i] for i in rng.choice(len(GRID), 4, replace=False)]
            boots.append(_fit_once(n_[idx], d_[idx], l_[idx], delta, starts))

    def named(t: np.ndarray) -> dict[str, float]:
        log_a, log_b, log_e, alpha, beta = t
        return {"E": math.exp(log_e), "A": math.exp(log_a), "alpha": alpha, "B": math.exp(log_b), "beta": beta}

    table = np.array([[named(t)[k] for k in PARAMS] for t in boots]).reshape(-1, len(PARAMS))

    def column_stat(f) -> dict[str, float]:
        return {k: float(f(table[:, i])) for i, k in enumerate(PARAMS)} if len(table) else {}

    residual = np.log(law(theta, n_, d_)) - np.log(l_)
    return {
        "fit": {k: float(v) for k, v in named(theta).items()},
        "std": column_stat(np.std),
        "p05": column_stat(lambda c: np.percentile(c, 5)),
        "p95": column_stat(lambda c: np.percentile(c, 95)),
        "runs": len(n_),
        "bootstraps": len(boots),
        "rmse_log": float(np.sqrt(np.mean(residual**2))),
        "theta": theta.tolist(),
        "bootstrap_thetas": [t.tolist() for t in boots],
    }


def predict(fit: dict[str, Any], n: float, d: float) -> dict[str, float]:
    """The fitted loss at ``(n, d)`` and its bootstrap 5-95% range."""
    point = float(law(np.asarray(fit["theta"]), np.array([n]), np.array([d]))[0])
    boots = [float(law(np.asarray(t), np.array([n]), np.array([d]))[0]) for t in fit["bootstrap_thetas"]]
    return {"loss": point, "p05": float(np.percentile(boots, 5)) if boots else point,
            "p95": float(np.percentile(boots, 95)) if boots else point}
