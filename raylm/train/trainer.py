"""Driver side of ``raylm train``: a Ray Train V2 ``TorchTrainer`` from a ``TrainConfig``.

The config travels to the workers as a plain dict (``to_dict``) and is rebuilt and validated
there. ``RunConfig(name, storage_path)`` is where checkpoints go; a rerun with the same name
resumes from the latest one. With local storage, rank 0 also writes ``metrics.jsonl`` and
``tensorboard/`` into the run folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from raylm.config import to_dict
from raylm.train.config import TrainConfig


def run_dir(cfg: TrainConfig) -> str | None:
    """The run's local folder (None when storage is an object store URI)."""
    if "://" in cfg.storage_path and not cfg.storage_path.startswith("file://"):
        return None
    root = cfg.storage_path.removeprefix("file://")
    return os.path.join(os.path.abspath(root), cfg.name)


def fit(cfg: TrainConfig, *, env: dict[str, str] | None = None, callbacks: list | None = None):
    """Train; returns Ray's ``Result`` (``result.checkpoint`` is the latest checkpoint).
    ``callbacks``: Ray Train callbacks, e.g. Tune's ``TuneReportCallback`` in a sweep trial."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from raylm.train.loop import train_loop_per_worker

    folder = run_dir(cfg)
    if folder:
        os.makedirs(folder, exist_ok=True)
        Path(folder, "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    storage = os.path.abspath(cfg.storage_path) if folder else cfg.storage_path
    resources: dict[str, Any] = {"CPU": cfg.scale.cpus_per_worker, **cfg.scale.resources_per_worker}
    if cfg.scale.use_gpu:
        resources["GPU"] = 1
    ckpt = cfg.checkpoint
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": to_dict(cfg), "run_dir": folder},
        torch_config=TorchConfig(backend="nccl" if cfg.scale.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.scale.num_workers, use_gpu=cfg.scale.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=cfg.name, storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=ckpt.keep, checkpoint_score_attribute=ckpt.score,
                                               checkpoint_score_order=ckpt.score_order),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            worker_runtime_env={"env_vars": env} if env else None,
            callbacks=callbacks,
        ),
    )
    return trainer.fit()


def read_metrics(folder: str) -> list[dict[str, Any]]:
    """The run's ``metrics.jsonl`` by step (a step logged twice, before a failure and after
    the resume, keeps its last record)."""
    by_step: dict[int, dict[str, Any]] = {}
    path = Path(folder, "metrics.jsonl")
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            by_step[row["step"]] = row
    return [by_step[s] for s in sorted(by_step)]
