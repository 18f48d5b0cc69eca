"""A worker node lost in the middle of a curate run, on a simulated three-node cluster.

Both scenarios run in one process of their own (``tests/curate/node_loss.py``: a multi-node
cluster cannot share the test session's Ray), and each output must equal what an undisturbed
run writes (the session's ``reference``): the data, the rejected documents with their reasons,
and every step's counts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.curate.runs import N_FILES, STEPS, counts, outputs

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def lost(inputs, tmp_path_factory) -> tuple[dict, Path, Path]:
    work = tmp_path_factory.mktemp("node-loss")
    args = {"steps": STEPS, "inputs": [str(inputs)], "retry": str(work / "retry"), "resume": str(work / "resume"),
            "summary": str(work / "summary.json")}
    ray_tmp = tempfile.mkdtemp(prefix="rl", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_ADDRESS", None)
    try:
        res = subprocess.run([sys.executable, "-m", "tests.curate.node_loss", json.dumps(args)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=900)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert res.returncode == 0, res.stderr[-5000:]
    return json.loads(Path(args["summary"]).read_text()), work / "retry", work / "resume"


def test_a_run_that_loses_a_node_finishes_with_the_same_output(lost, reference):
    summary, out, _ = lost
    seen = summary["retry"]
    assert seen["units_done_at_loss"] < N_FILES and not seen["finished_at_loss"]  # lost mid-run
    assert seen["error"] is None and not seen["alive"]
    data, rejected, stats = outputs(out)
    assert (data, rejected) == reference[:2]
    assert counts(stats) == counts(reference[2]) and stats["conservation_ok"]


def test_a_driver_lost_with_a_node_resumes_from_its_work_folder(lost, reference):
    summary, _, out = lost
    seen = summary["resume"]
    assert seen["returncode"] == -9 and not seen["finished_at_loss"], seen["stderr"]
    resume = seen["resume_stats"]
    assert resume["resumed"] and resume["units"] == N_FILES
    assert 1 <= resume["units_done_before"] < N_FILES  # the finished units were kept, not redone
    data, rejected, stats = outputs(out)
    assert (data, rejected) == reference[:2]
    assert counts(stats) == counts(reference[2]) and stats["conservation_ok"]
