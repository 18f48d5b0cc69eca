"""Hyperparameter sweeps with Ray Tune over ``raylm train`` runs, and the transfer of the best
one to a larger model (``raylm tune -c tune/NAME.yaml``; ``raylm train --from-sweep``).

Each trial is a Tune function that builds a ``TrainConfig`` from the base config and the
trial's values (dotted keys, ``optim.lr``, ``model.init_std``, ...) and fits it with a Ray
Train ``TorchTrainer`` whose ``TuneReportCallback`` hands every ``ray.train.report`` of rank 0
to Tune (the Train V2 pattern: ``Tuner(trainer)`` is gone). The trial function itself takes
(almost) no CPU, its Train workers take what ``scale`` asks, and ``max_concurrent_trials`` keeps the
trials from starving each other (or Ray Data). ASHA (Li et al. 2020) stops the worst trials
early on the reported metric.

The sweep folder gets ``results.csv`` (one row per trial: its values, the final and best
metric, the status) and ``best.json`` (the best trial's values, its metric, and the model it
ran: width, depth, parametrisation). ``transfer(best, cfg)`` applies those values to a larger
run's config: under μP it sets ``model.base_width`` to the sweep's width, so the same
learning rate, init std and multipliers mean the same updates at the new width (Yang et al.
2022); depth and width may both change. A sweep run in SP transfers its values too, with a
warning that SP's best learning rate moves with width.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Literal

from raylm.config import ConfigError, load_data, load_yaml, merge, set_dotted, to_dict
from raylm.train.config import TrainConfig, train_config

SPACES = ("grid", "choice", "loguniform", "uniform")


@dataclasses.dataclass(kw_only=True)
class SweepConfig:
    name: str = "sweep"
    """The sweep's name: its folder under ``storage_path`` and the prefix of its trials' runs."""
    storage_path: str = "runs/sweeps"
    train_config: str | None = None
    """A train YAML to start from (relative to the sweep YAML's folder, or absolute)."""
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Overrides of the base train config (nested, as in a train YAML)."""
    search: dict[str, dict[str, list[Any]]] = dataclasses.field(default_factory=dict)
    """Dotted train-config key -> ``{grid: [...]}`` (every value), ``{choice: [...]}``,
    ``{loguniform: [lo, hi]}`` or ``{uniform: [lo, hi]}``."""
    num_samples: int = 1
    """Samples of the random dimensions (each grid point is run ``num_samples`` times)."""
    metric: str = "loss"
    mode: Literal["min", "max"] = "min"
    scope: str = "last-5-avg"
    """How a trial's metric is read for ``best.json`` (Tune's ``get_best_result`` scope)."""
    max_concurrent_trials: int = 2
    trial_cpus: float = 0.1
    """CPUs held by each trial's driver function (it only waits on its TorchTrainer, whose
    workers take ``train.scale``'s resources); Tune needs more than 0."""
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = 2
    """ASHA: reports a trial makes before it can be stopped."""
    reduction_factor: float = 2.0
    seed: int = 0

    def validate(self) -> None:
        if not self.search:
            raise ConfigError("search: at least one dotted key with a space is needed")
        for key, space in self.search.items():
            if len(space) != 1 or next(iter(space)) not in SPACES:
                raise ConfigError(f"search.{key}: expected one of {list(SPACES)} with a list, got {space!r}")
            kind, values = next(iter(space.items()))
            if not values or (kind in ("loguniform", "uniform") and len(values) != 2):
                raise ConfigError(f"search.{key}.{kind}: {values!r} is not a valid list")
        if self.num_samples < 1 or self.max_concurrent_trials < 1:
            raise ConfigError("num_samples and max_concurrent_trials must be at least 1")


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> tuple[SweepConfig, dict[str, Any]]:
    """The sweep config and its base train config as a dict (validated by building it once)."""
    from raylm.config import from_dict

    data = load_data(path, overrides)[0]
    try:
        sweep = from_dict(SweepConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    base: dict[str, Any] = {}
    if sweep.train_config:
        tpath = Path(sweep.train_config)
        if not tpath.is_absolute() and not tpath.exists():
            tpath = Path(path).parent / tpath
        base = load_yaml(tpath)
    base = merge(base, sweep.train)
    for key in sweep.search:
        set_dotted(copy.deepcopy(base), key, None, f"search: {key!r}")  # the key must name a place in the config
    train_config(base, f"{path}: train")
    return sweep, base


def trial_config(base: dict[str, Any], values: dict[str, Any], name: str, storage: str) -> TrainConfig:
    """The train config of one trial: ``base`` with the trial's dotted ``values``."""
    d = copy.deepcopy(base)
    for key, value in values.items():
        set_dotted(d, key, value, f"search: {key!r}")
    d["name"], d["storage_path"] = name, storage
    return train_config(d, f"trial {name}")


def _param_space(sweep: SweepConfig) -> dict[str, Any]:
    from ray import tune

    make = {"grid": tune.grid_search, "choice": tune.choice,
            "loguniform": lambda v: tune.loguniform(*v), "uniform": lambda v: tune.uniform(*v)}
    return {key: make[kind](values) for key, spec in sweep.search.items() for kind, values in spec.items()}


def run_sweep(sweep: SweepConfig, base: dict[str, Any], callbacks: list | None = None) -> dict[str, Any]:
    """Run the sweep on the current Ray cluster; returns ``best.json``'s content. ``callbacks``:
    Tune callbacks on the driver (``raylm tune`` passes ``raylm.tune.table.TrialTable``)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from raylm.train.trainer import fit

    root = Path(sweep.storage_path).absolute() / sweep.name
    root.mkdir(parents=True, exist_ok=True)
    storage = str(root / "trials")

    def trial(config: dict[str, Any]) -> None:
        name = f"{sweep.name}-{tune.get_context().get_trial_id()}"
        result = fit(trial_config(base, config, name, storage), callbacks=[TuneReportCallback()])
        if result.error is not None:
            raise result.error

    steps = int(base.get("steps", 100))
    reports = max(1, math.ceil(steps / int(base.get("log_every", 10))))
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=reports, grace_period=sweep.grace_period,
                               reduction_factor=sweep.reduction_factor)
                 if sweep.scheduler == "asha" else FIFOScheduler())
    tuner = tune.Tuner(
        tune.with_resources(trial, {"CPU": sweep.trial_cpus}),
        param_space=_param_space(sweep),
        tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, scheduler=scheduler,
                                    num_samples=sweep.num_samples, max_concurrent_trials=sweep.max_concurrent_trials),
        run_config=tune.RunConfig(name="tune", storage_path=str(root), verbose=0, callbacks=callbacks),
    )
    grid = tuner.fit()
    rows = []
    for r in grid:
        hist = r.metrics_dataframe
        values = {k: r.config[k] for k in sweep.search}
        final = r.metrics.get(sweep.metric) if r.metrics else None
        best = None
        if hist is not None and sweep.metric in hist:
            best = float(hist[sweep.metric].min() if sweep.mode == "min" else hist[sweep.metric].max())
        rows.append({**values, f"final_{sweep.metric}": final, f"best_{sweep.metric}": best,
                     "iterations": len(hist) if hist is not None else 0, "error": repr(r.error) if r.error else ""})
    with open(root / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    best = grid.get_best_result(metric=sweep.metric, mode=sweep.mode, scope=sweep.scope)
    model = train_config(base).model
    out = {
        "sweep": sweep.name, "metric": sweep.metric, "mode": sweep.mode,
        "value": best.metrics_dataframe[sweep.metric].tail(5).mean() if best.metrics_dataframe is not None else None,
        "values": {k: best.config[k] for k in sweep.search},
        "model": {"d_model": model.d_model, "n_layers": model.n_layers, "parametrization": model.parametrization,
                  "base_width": model.base_width or model.d_model},
        "trials": len(rows),
    }
    (root / "best.json").write_text(json.dumps(out, indent=2))
    return out


def transfer(best: dict[str, Any] | str | os.PathLike, cfg: TrainConfig) -> TrainConfig:
    """``cfg`` (a larger run) with the sweep's best values, and under μP ``model.base_width``
    set to the width they were tuned at (see the module docstring)."""
    if not isinstance(best, dict):
        best = json.loads(Path(best).read_text())
    d = to_dict(cfg)
    for key, value in best["values"].items():
        set_dotted(d, key, value, f"search: {key!r}")
    swept = best["model"]
    d["model"]["parametrization"] = swept["parametrization"]
    if swept["parametrization"] == "mup":
        d["model"]["base_width"] = swept["base_width"]
    elif d["model"]["d_model"] != swept["d_model"]:
        warnings.warn(f"the sweep ran in SP at width {swept['d_model']}: its best lr need not hold at width "
                      f"{d['model']['d_model']} (sweep in μP to transfer)", stacklevel=2)
    return train_config(d, f"transfer of {best.get('sweep', 'sweep')}")
