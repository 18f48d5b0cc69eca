"""Driver side of ``raylm train``: a Ray Train V2 ``TorchTrainer`` from a ``TrainConfig``.

The run is resolved once, here, before any worker starts (``raylm.train.resolve.resolve_run``:
absolute paths, a continual run's checkpoint, the schedule's length, every manifest read once
and every check of the run against its data); the ``ResolvedRun`` travels to the workers as a
plain dict (``train_loop_config``) and is rebuilt there, and the run folder's ``config.json``
is its resolved config. ``RunConfig(name, storage_path)`` is where checkpoints go; a rerun with
the same name resumes from the latest one, and with ``max_failures`` a run whose worker dies (a
preempted spot node) restarts its workers from the latest checkpoint by itself. With local
storage, rank 0 writes ``metrics.jsonl`` and ``tensorboard/`` into the run folder; with an
object store (``s3://``, ``storage_endpoint`` for S3-compatible ones)
``raylm.train.runlog.RunLog`` writes them there from the driver. Next to ``config.json``,
``hardware.json`` records the cluster the run had (for ``raylm.train.report``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from raylm import console, storage
from raylm.cluster import check_paths_on_nodes
from raylm.config import to_dict
from raylm.train.config import TrainConfig
from raylm.train.report import hardware
from raylm.train.runlog import RunLog
from raylm.train.waiting import WaitLimit


def run_dir(cfg: TrainConfig) -> str | None:
    """The run's local folder (None when storage is an object store URI)."""
    if storage.is_remote(cfg.storage_path):
        return None
    root = cfg.storage_path.removeprefix("file://")
    return os.path.join(os.path.abspath(root), cfg.name)


def worker_resources(cfg: TrainConfig) -> dict[str, float]:
    """What each Train worker asks Ray for: its CPUs, a GPU with ``use_gpu`` (so workers land
    on GPU nodes only) and ``scale.resources_per_worker``."""
    resources: dict[str, float] = {"CPU": cfg.scale.cpus_per_worker, **cfg.scale.resources_per_worker}
    if cfg.scale.use_gpu:
        resources["GPU"] = 1
    return resources


def _data_stats_on_this_node() -> None:
    """Ray Data keeps one detached ``_StatsActor`` per cluster on the node of the process that
    first runs a dataset. Left to the loader, that is a Train worker's GPU node, which then never
    becomes idle and is never scaled down; made here first, it lives on the driver's node."""
    import ray
    from ray.data._internal.stats import get_or_create_stats_actor

    if ray.is_initialized():
        get_or_create_stats_actor()


def fit(cfg: TrainConfig, *, env: dict[str, str] | None = None, callbacks: list | None = None):
    """Train; returns Ray's ``Result`` (``result.checkpoint`` is the latest checkpoint).
    ``callbacks``: Ray Train callbacks, e.g. Tune's ``TuneReportCallback`` in a sweep trial."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from raylm.train.loop import train_loop_per_worker
    from raylm.train.resolve import resolve_run

    env = {**storage.use_endpoint(cfg.storage_endpoint), **(env or {})}
    run = resolve_run(cfg)  # the run it means, checked against its data, before anything starts
    cfg = run.cfg
    folder = run_dir(cfg)
    if folder:
        os.makedirs(folder, exist_ok=True)
        Path(folder, "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    check_paths_on_nodes(run.paths())  # on a cluster: every node sees the local folders
    fs, path = storage.filesystem(cfg.storage_path, cfg.storage_endpoint)
    callbacks = list(callbacks or [])
    if not folder:
        callbacks.append(RunLog(fs, path, cfg.name))
    if cfg.scale.wait_for_workers_s:
        workers = f"{cfg.scale.min_workers} (scale.num_workers' minimum)" if cfg.scale.elastic \
            else str(cfg.scale.num_workers)
        callbacks.append(WaitLimit(cfg.scale.wait_for_workers_s, workers, worker_resources(cfg)))
    ckpt = cfg.checkpoint
    _data_stats_on_this_node()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run": run.to_dict(), "run_dir": folder},
        torch_config=TorchConfig(backend="nccl" if cfg.scale.use_gpu and cfg.scale.device == "auto" else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.scale.num_workers, use_gpu=cfg.scale.use_gpu,
                                     resources_per_worker=worker_resources(cfg),
                                     elastic_resize_monitor_interval_s=cfg.scale.resize_interval_s),
        run_config=RunConfig(
            name=cfg.name, storage_path=path, storage_filesystem=fs if folder is None else None,
            checkpoint_config=CheckpointConfig(num_to_keep=ckpt.keep, checkpoint_score_attribute=ckpt.score,
                                               checkpoint_score_order=ckpt.score_order),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            worker_runtime_env={"env_vars": env} if env else None,
            callbacks=callbacks or None,
            logging_config=console.train_logging(),
        ),
    )
    _write_json(fs, f"{path}/{cfg.name}/hardware.json", hardware())
    return trainer.fit()


def _write_json(fs, path: str, data: dict[str, Any]) -> None:
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(data, indent=2).encode())
