"""An elastic run (``scale.num_workers: [1, 2]``) survives a node lost and a node added back, on a
simulated multi-node cluster (``tests/train/elastic_cluster.py``, in a subprocess with its own
Ray): it shrinks to one worker and grows back to two, each time from its latest checkpoint, with
the same global batch; every step trains on exactly the sequences of the global order (the
logged seq_ids of the ranks that trained it last), and its losses follow a one-process run of
the same model and data (``raylm.train.module.TrainModule`` without Ray) within tolerance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from raylm.data.loader import TrainBatches
from raylm.data.position import global_order
from raylm.train.config import train_config
from raylm.train.module import TrainModule, build_model
from raylm.train.runlog import read_metrics
from raylm.train.strategy import build_strategy
from tests.train.elastic_cluster import run_config, seq_rows

N, WINDOW, GLOBAL = 256, 64, 8  # the ``shards`` fixture, the run's shuffle window and global batch


@pytest.fixture(scope="module")
def elastic(shards, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("elastic")
    env = {**os.environ, "RAY_TMPDIR": os.environ.get("RAY_TMPDIR", "/tmp/ray") + "c",
           # after the node is lost Ray Train first tries the old size: give up on it after 10 s, not 60
           "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "10",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "tests.train.elastic_cluster", shards, str(out)], env=env,
                            cwd=Path(__file__).parents[2], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log, _ = proc.communicate(timeout=540)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the cluster is left
        except ProcessLookupError:
            pass
    assert (out / "elastic.json").exists(), log[-5000:]
    report = json.loads((out / "elastic.json").read_text())
    report["log"] = log
    return report


def final_records(folder: Path, steps: range) -> dict[int, list[int]]:
    """step -> the seq_ids it was trained on by the last worker group that trained it: rank 0's
    last record says that group's size, and its ranks' last records say the rest."""
    ranks = [{r["step"]: r for r in seq_rows(folder, rank)} for rank in range(2)]
    out = {}
    for step in steps:
        rows = [ranks[r][step] for r in range(ranks[0][step]["world"])]
        out[step] = [i for row in rows for i in row["seq_ids"]]
    return out


def test_a_node_lost_then_added_back_is_survived(elastic, shards):
    events = [e["event"] for e in elastic["events"]]
    assert events == ["node_removed", "node_added", "regrown", "done"], (elastic["events"], elastic["log"][-5000:])
    assert not elastic["finished_early"]
    folder = Path(elastic["run"])
    worlds = [r["world"] for r in seq_rows(folder, 0)]
    assert [w for i, w in enumerate(worlds) if i == 0 or w != worlds[i - 1]] == [2, 1, 2]  # shrank, grew back
    done = next(e["rank0_step"] for e in elastic["events"] if e["event"] == "done")
    steps = range(1, done)
    trained = final_records(folder, steps)
    for step in steps:  # exactly the global order: nothing skipped, nothing seen twice
        epoch, at = divmod((step - 1) * GLOBAL, N)
        assert sorted(trained[step]) == sorted(global_order(N, WINDOW, 0, epoch)[at:at + GLOBAL].tolist()), step
    logged = {r["step"]: r["loss"] for r in read_metrics(str(folder))}
    np.testing.assert_allclose([logged[s] for s in steps], reference_losses(shards, len(steps)), rtol=1e-4)


def test_the_console_says_what_happened_to_the_worker_group(elastic):
    """The lines ``raylm train`` prints (``TrainProgress``): the group stopped when the node went,
    trained again on one worker, had room for two when the node came back, trained on two."""
    seen = [(e["event"], e["workers"]) for e in elastic["group_events"]]
    assert seen[0][0] == "restart" and "worker group stopped" in elastic["group_events"][0]["text"], seen
    assert ("running", 1) in seen and seen[-1] == ("running", 2), seen
    grow = next(e for e in elastic["group_events"] if e["event"] == "restart" and "room for 2 workers" in e["text"])
    assert seen.index(("running", 1)) < elastic["group_events"].index(grow), seen


def test_a_local_path_the_nodes_cannot_see_is_named(elastic):
    error = elastic["missing_path_error"]
    assert "data.path" in error and "nowhere" in error and "node" in error
    assert "does not exist, neither here (the driver) nor on node(s)" in error  # not on a shared FS either


def reference_losses(shards: str, steps: int) -> list[float]:
    """The same run in this process, one worker, no Ray: TrainModule over the loader's batches."""
    cfg = train_config({**run_config(shards, Path("unused")), "data": {"path": shards, "window": WINDOW}})
    device = torch.device("cpu")
    module = TrainModule(cfg, build_strategy(cfg, "fp32", device), build_model(cfg, device), world=1)
    module.setup()
    losses = []
    with TrainBatches(shards, GLOBAL, 0, 1, None, seed=0, prefetch=0, window=WINDOW) as batches:
        for step in range(steps):
            result = module.train_step([next(batches)], step)
            module.optimizer_step(result, apply=True)
            losses.append(result.loss)
    return losses
