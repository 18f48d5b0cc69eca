"""An elastic run on a simulated multi-node Ray cluster, for ``tests/train/test_elastic.py``.

Run in a subprocess of its own (``python -m tests.train.elastic_cluster SHARDS OUT``): it
starts a second Ray (``ray.cluster_utils.Cluster``: a head with 0 CPUs and two nodes of 2 CPUs,
as a small spot pool) while the test session's Ray stays as it is, and writes what happened to
``OUT/elastic.json`` for the test to check.

The run: ``scale.num_workers: [1, 2]`` with 2 CPUs per worker, so each node holds one worker and
nothing else (the loader reads inside the workers: no Ray Data task needs a CPU of its own);
``data.path`` relative to the driver's working directory. When rank 1 has trained a few steps
past the first checkpoint its node is removed (its worker dies, as on a reclaimed spot node);
once the run goes on with one worker a node is added back, and the run grows to two workers
again. The driver stops watching when the grown run has trained ``AFTER_GROWN`` steps (or at
``DEADLINE_S``) and records, before exiting, the step at each event. Before the run, a local path
that the cluster's nodes cannot see must fail with an error naming it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

REMOVE_AFTER = 7  # rank 1's step when its node goes (the first checkpoint is at 5)
AFTER_GROWN = 12  # steps trained by the regrown group before the driver stops watching
DEADLINE_S = 420.0


def run_config(shards: str, storage: Path) -> dict:
    from tests.train.sample import config

    return config(shards, storage, "elastic", 2, **{
        "steps": 5000, "data.path": os.path.relpath(shards), "log_seq_ids": True, "max_failures": 6,
        "global_batch": 8, "micro_batch_size": 4, "checkpoint.every": 5, "checkpoint.keep": 2,
        "spike_guard.enabled": False, "optim.schedule": {"name": "cosine", "warmup_steps": 2, "total_steps": 5000},
        "scale": {"num_workers": [1, 2], "cpus_per_worker": 2, "resize_interval_s": 1.0}})


def seq_rows(folder: Path, rank: int) -> list[dict]:
    path = folder / f"seq_ids-rank{rank}.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def main(shards: str, out: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from raylm.config import ConfigError
    from raylm.train.config import train_config
    from raylm.train.progress import TrainProgress
    from raylm.train.trainer import fit, run_dir

    out_dir = Path(out)
    os.chdir(Path(shards).parent)  # data.path is relative to here
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
    report: dict = {"events": []}

    cfg = train_config(run_config(shards, out_dir))
    try:  # a local folder the nodes cannot see: named before any worker starts
        fit(train_config({**run_config(shards, out_dir), "data": {"path": str(out_dir / "nowhere")}}))
    except ConfigError as exc:
        report["missing_path_error"] = str(exc)
    folder = Path(run_dir(cfg))
    folder.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    progress = TrainProgress(cfg).__enter__()  # what raylm train prints of the worker group (never exited:
    runner = threading.Thread(  # the process ends with os._exit below)
        target=lambda: result.setdefault("result", fit(cfg, callbacks=progress.callbacks)), daemon=True)
    runner.start()

    def event(name: str) -> None:
        rows = seq_rows(folder, 0)
        report["events"].append({"event": name, "rank0_step": rows[-1]["step"] if rows else 0, "t": time.time()})

    deadline = time.monotonic() + DEADLINE_S
    phase = "start"
    while time.monotonic() < deadline and runner.is_alive():
        time.sleep(0.05)
        rank0, rank1 = seq_rows(folder, 0), seq_rows(folder, 1)
        if phase == "start" and rank1 and rank1[-1]["step"] >= REMOVE_AFTER:
            node = next(n for n in nodes if n.node_id == rank1[-1]["node"])  # the node rank 1 trains on
            cluster.remove_node(node, allow_graceful=False)
            nodes.remove(node)
            event("node_removed")
            phase, pids = "shrinking", {r["pid"] for r in rank0}
        elif phase == "shrinking" and rank0 and rank0[-1]["pid"] not in pids:
            nodes.append(cluster.add_node(num_cpus=2))  # the group runs on one worker: a node joins
            event("node_added")
            phase, pids = "growing", {r["pid"] for r in rank0}
        elif phase == "growing" and rank0 and rank0[-1]["pid"] not in pids:
            event("regrown")
            phase, grown_from = "grown", rank0[-1]["step"]
        elif phase == "grown" and rank0[-1]["step"] >= grown_from + AFTER_GROWN:
            event("done")
            break
    report["finished_early"] = not runner.is_alive()
    if "result" in result:
        report["error"] = repr(result["result"].error)
    report["run"] = str(folder)
    report["group_events"] = list(progress.events)
    (out_dir / "elastic.json").write_text(json.dumps(report, indent=2))
    ray.shutdown()
    cluster.shutdown()  # the run, if still going, goes with it
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:3])
