"""Experiment tracking with MLflow and Weights & Biases, the way Ray Train's guides do it: the
training function logs from rank 0 only, with the libraries' own clients.

``tracking: {mlflow: {...}}`` and/or ``tracking: {wandb: {...}}`` in a train config. Rank 0
logs the resolved config (MLflow: flattened params and ``config.json``; W&B: the run config),
every metric it writes to TensorBoard at the same step (generation samples as text: an MLflow
artifact, a W&B HTML panel), and at the end the final checkpoint's path (MLflow tag, W&B
summary ``checkpoint``). A run that resumes (a restart after a failure, or the same name run
again) continues the same tracked run: MLflow finds it by its ``raylm.run`` tag, W&B by an id
made from the storage path and name.

Both libraries are optional (``pip install 'raylm[tracking]'``); a config that asks for one
that is not installed fails before any worker starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import importlib.util
import os
from typing import Any, Literal

from raylm.config import ConfigError


@dataclasses.dataclass(kw_only=True)
class MLflowConfig:
    tracking_uri: str | None = None
    """An MLflow server (``http://host:5000``), a database (``sqlite:///mlflow.db``) or a file
    store folder (``file:///abs/mlruns``, allowed explicitly although MLflow deprecates it);
    None: ``MLFLOW_TRACKING_URI``, else ``./mlruns`` in rank 0's working directory."""
    experiment: str = "raylm"
    """The experiment the run goes into (created if missing)."""
    run_name: str | None = None
    """The MLflow run's name; None: the train run's ``name``."""
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    """Extra tags on the run."""


@dataclasses.dataclass(kw_only=True)
class WandbConfig:
    project: str = "raylm"
    """The W&B project the run goes into."""
    entity: str | None = None
    """Team or user; None: the API key's default."""
    mode: Literal["online", "offline", "disabled"] = "online"
    """``offline`` writes the run locally (``wandb sync`` uploads it later)."""
    dir: str | None = None
    """Where W&B keeps its files; None: the run's folder (local storage), else W&B's default."""
    name: str | None = None
    """The W&B run's display name; None: the train run's ``name``."""
    group: str | None = None
    """Groups runs in the W&B UI (e.g. the trials of one sweep)."""
    tags: list[str] = dataclasses.field(default_factory=list)
    """Tags on the W&B run."""


@dataclasses.dataclass(kw_only=True)
class TrackingConfig:
    mlflow: MLflowConfig | None = None
    """Log to MLflow (``{}`` for the defaults)."""
    wandb: WandbConfig | None = None
    """Log to Weights & Biases (``{}`` for the defaults)."""

    def validate(self) -> None:
        for name, cfg in (("mlflow", self.mlflow), ("wandb", self.wandb)):
            if cfg is None:
                continue
            if importlib.util.find_spec(name) is None:
                raise ConfigError(f"tracking.{name}: the {name} package is not installed "
                                  f"(pip install 'raylm[tracking]')")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run_key(config: dict[str, Any]) -> str:
    """What names one train run across restarts: its storage path and name."""
    return f"{config.get('storage_path', '')}/{config.get('name', '')}"


class _MLflow:
    def __init__(self, cfg: MLflowConfig, config: dict[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None or uri.startswith("file:") or "://" not in uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # asked for by name (or by default)
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(cfg.experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(cfg.experiment)
        key = run_key(config)
        found = self.client.search_runs([exp_id], filter_string=f"tags.`raylm.run` = '{key}'",
                                        order_by=["attributes.start_time DESC"], max_results=1)
        if found:  # a resumed run goes on in the same MLflow run
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(exp_id, run_name=cfg.run_name or config.get("name"),
                                         tags={"raylm.run": key, **cfg.tags})
            self.run_id = run.info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in flatten(config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
                self.client.log_batch(self.run_id, params=params[i:i + 100])
            self.client.log_dict(self.run_id, config, "config.json")

    def log(self, step: int, scalars: dict[str, float], texts: dict[str, str]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in scalars.items()])
        for k, v in texts.items():
            self.client.log_text(self.run_id, v, f"{k}/step-{step:08d}.txt")

    def finish(self, checkpoint: str | None, ok: bool) -> None:
        if checkpoint:
            self.client.set_tag(self.run_id, "checkpoint", checkpoint)
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


class _Wandb:
    def __init__(self, cfg: WandbConfig, config: dict[str, Any], run_dir: str | None) -> None:
        import wandb

        key = run_key(config)
        self.wandb = wandb
        folder = cfg.dir or run_dir
        if folder:
            os.makedirs(folder, exist_ok=True)
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, mode=cfg.mode, dir=folder,
                              name=cfg.name or config.get("name"), group=cfg.group, tags=cfg.tags or None,
                              id=hashlib.sha1(key.encode()).hexdigest()[:16], resume="allow", config=config,
                              settings=wandb.Settings(silent=True, console="off", disable_git=True,
                                                      x_disable_stats=True))

    def log(self, step: int, scalars: dict[str, float], texts: dict[str, str]) -> None:
        panels = {k: self.wandb.Html(f"<pre>{html.escape(v)}</pre>") for k, v in texts.items()}
        self.run.log({**scalars, **panels}, step=step)

    def finish(self, checkpoint: str | None, ok: bool) -> None:
        if checkpoint:
            self.run.summary["checkpoint"] = checkpoint
        self.run.finish(exit_code=0 if ok else 1)


class Tracker:
    """Rank 0's trackers; every method is a no-op on other ranks or without ``tracking``."""

    def __init__(self, cfg: TrackingConfig, rank: int, config: dict[str, Any], run_dir: str | None) -> None:
        self.backends: list[Any] = []
        if rank != 0:
            return
        if cfg.mlflow is not None:
            self.backends.append(_MLflow(cfg.mlflow, config))
        if cfg.wandb is not None:
            self.backends.append(_Wandb(cfg.wandb, config, run_dir))

    def log(self, metrics: dict[str, Any]) -> None:
        """One row of rank 0's metrics, as TensorBoard gets it (bools as 0/1, texts apart)."""
        if not self.backends:
            return
        scalars = {k: float(v) for k, v in metrics.items() if k != "step" and isinstance(v, (int, float))}
        texts = {k: v for k, v in metrics.items() if isinstance(v, str)}
        for b in self.backends:
            b.log(int(metrics["step"]), scalars, texts)

    def finish(self, ok: bool = True) -> None:
        """The run ended: the final checkpoint's path (as Ray Train persisted it), and close."""
        if not self.backends:
            return
        checkpoint = None
        if ok:
            import ray.train

            reported = [r for r in ray.train.get_all_reported_checkpoints() if r.checkpoint is not None]
            if reported:
                checkpoint = max(reported, key=lambda r: r.metrics.get("step", 0)).checkpoint.path
        for b in self.backends:
            b.finish(checkpoint, ok)
