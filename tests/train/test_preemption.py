"""Preemption: a Ray Train worker process killed from outside (SIGKILL, as a reclaimed spot
node gives) at a random step. With ``max_failures`` the run restarts its workers from the
latest checkpoint and finishes with exactly the loss curve and the data order (the seq_ids
every rank trained on, step by step) of the uninterrupted run: the session's 2-worker DDP
reference run (``reference_runs["ddp"]``: 8 steps, checkpoints every 3, seq_ids logged)."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path

from raylm.train.config import train_config
from raylm.train.runlog import read_metrics
from raylm.train.trainer import fit, run_dir
from tests.train.sample import STEPS, config

EVERY = 3  # the reference run's checkpoint interval


def seq_log(folder: str, rank: int) -> list[dict]:
    """Complete records of a rank's ``seq_ids-rank<r>.jsonl``, in write order."""
    path = Path(folder, f"seq_ids-rank{rank}.jsonl")
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def data_order(folder: str, rank: int) -> dict[int, list[int]]:
    """step -> seq_ids; a step trained again after the restart keeps its last record."""
    return {r["step"]: r["seq_ids"] for r in seq_log(folder, rank)}


class Killer(threading.Thread):
    """SIGKILLs the process of ``rank`` once that rank has started step ``step``."""

    def __init__(self, folder: str, rank: int, step: int, timeout: float = 120.0) -> None:
        super().__init__(daemon=True)
        self.folder, self.rank, self.step, self.timeout = folder, rank, step, timeout
        self.killed: tuple[int, int] | None = None  # (pid, step it was on)

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            rows = seq_log(self.folder, self.rank)
            if rows and rows[-1]["step"] >= self.step:
                os.kill(rows[-1]["pid"], signal.SIGKILL)
                self.killed = (rows[-1]["pid"], rows[-1]["step"])
                return
            time.sleep(0.002)


def test_worker_killed_at_a_random_step_resumes_exactly(reference_runs, shards, tmp_path):
    uninterrupted = reference_runs["ddp"][0]
    assert uninterrupted["checkpoint"]["every"] == EVERY and uninterrupted["log_seq_ids"]
    kill_at = random.randint(EVERY + 1, STEPS - 1)
    d = config(shards, tmp_path, "preempted", 2, log_seq_ids=True, max_failures=1)
    folder = run_dir(train_config(d))
    os.makedirs(folder, exist_ok=True)
    killer = Killer(folder, rank=1, step=kill_at)
    killer.start()
    result = fit(train_config(d))
    killer.join(timeout=1)
    assert killer.killed is not None, f"the worker was not killed at step {kill_at}"
    pid, step = killer.killed
    assert result.error is None, f"killed at step {step}: {result.error}"

    for rank in (0, 1):  # every rank trained in two processes: before and after the kill
        rows = seq_log(folder, rank)
        pids = list(dict.fromkeys(r["pid"] for r in rows))
        assert len(pids) == 2, f"rank {rank}: processes {pids}"
        resumed = next(r["step"] for r in rows if r["pid"] == pids[1])
        # from a checkpoint (or the start) before the kill: the latest one the controller had
        # registered, which may lag the workers' last report by a poll
        assert (resumed - 1) % EVERY == 0 and resumed <= step, (resumed, step)
    assert pid in {r["pid"] for r in seq_log(folder, 1)}

    whole = run_dir(train_config(uninterrupted))
    for rank in (0, 1):
        assert data_order(folder, rank) == data_order(whole, rank)  # the same seq_ids, step by step
        assert sorted(data_order(folder, rank)) == list(range(1, STEPS + 1))
    assert [r["loss"] for r in read_metrics(folder)] == [r["loss"] for r in read_metrics(whole)]
    assert len(read_metrics(folder)) == STEPS
