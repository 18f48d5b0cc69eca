"""A curate run killed midway and started again redoes only what it had not finished.

The killed run is a real ``raylm curate`` process (with its own local Ray), SIGKILLed with its
whole process group as soon as its first input files are done; the rerun, in this process,
must keep those files' output untouched, curate the rest, and write exactly what an
uninterrupted run writes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from raylm.config import from_dict
from raylm.curate.pipeline import CurateConfig, run
from raylm.curate.workdir import WORK
from raylm.storage import InputError
from tests.curate.runs import N_FILES, STEPS, counts, outputs


def test_killed_run_resumes_with_only_the_unfinished_files(ray_session, inputs, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "raylm.cli", "curate", str(inputs), "-o", str(out),
           "--set", f"steps={json.dumps(STEPS)}", "--set", "keep_work=true", "--set", "ray.num_cpus=2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
    markers = out / WORK / "files"
    deadline = time.monotonic() + 180
    while not list(markers.glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its local Ray and every worker: a lost node
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-3000:]
    done_before = {p.name: p.stat().st_mtime_ns for p in markers.glob("*.json")}
    assert 1 <= len(done_before) < N_FILES and not (out / "stats.json").exists()

    cfg = from_dict(CurateConfig, {"steps": STEPS, "keep_work": True})
    stats = run(cfg, [str(inputs)], str(out), quiet=True)
    assert stats["resume"] == {"resumed": True, "units": N_FILES, "units_done_before": len(done_before),
                               "units_curated": N_FILES - len(done_before), "steps_reused": []}
    # the finished files were not redone: their markers are the ones the killed run wrote
    assert {p: (markers / p).stat().st_mtime_ns for p in done_before} == done_before
    assert len(list(markers.glob("*.json"))) == N_FILES
    data, rejected, resumed = outputs(out)
    ref_data, ref_rejected, ref_stats = reference
    assert data == ref_data and rejected == ref_rejected
    assert counts(resumed) == counts(ref_stats) and resumed["conservation_ok"]
    assert {r[2] for r in rejected} >= {"exact_duplicate"}


def test_rerun_after_the_dedup_decisions_reuses_them(ray_session, inputs, reference, tmp_path):
    """A run killed while writing its output (every dedup decided) only writes it again."""
    out = tmp_path / "out"
    cfg = from_dict(CurateConfig, {"steps": STEPS, "keep_work": True})
    run(cfg, [str(inputs)], str(out), quiet=True)
    (out / "stats.json").unlink()  # what a kill before the last write leaves
    stats = run(cfg, [str(inputs)], str(out), quiet=True)
    assert stats["resume"] == {"resumed": True, "units": N_FILES, "units_done_before": N_FILES, "units_curated": 0,
                               "steps_reused": ["04-exact_dedup", "05-line_dedup", "06-minhash_dedup"]}
    data, rejected, resumed = outputs(out)
    assert (data, rejected) == reference[:2] and counts(resumed) == counts(reference[2])
    line = next(s for s in resumed["steps"] if s["step"] == "line_dedup")
    assert line["counters"]["frequent_units"] > 0 and line["counters"]["units_removed"] > 0


def test_rerun_with_another_config_is_refused_and_a_finished_run_cleans_up(ray_session, inputs, tmp_path):
    out = tmp_path / "out"
    one_file = [str(inputs / "part-00.jsonl")]
    run(from_dict(CurateConfig, {"steps": ["normalize", "exact_dedup"], "keep_work": True}), one_file, str(out),
        quiet=True)
    (out / "stats.json").unlink()
    other = from_dict(CurateConfig, {"steps": ["normalize", "quality", "exact_dedup"], "keep_work": True})
    with pytest.raises(InputError, match=r"unfinished curate run .*config keys differ: steps.*--overwrite"):
        run(other, one_file, str(out), quiet=True)
    assert (out / WORK).is_dir()  # nothing was deleted by the refused run
    stats = run(other, one_file, str(out), overwrite=True, quiet=True)
    assert stats["resume"]["resumed"] is False and stats["resume"]["units_curated"] == 1
    run(from_dict(CurateConfig, {"steps": ["normalize"]}), one_file, str(out), overwrite=True, quiet=True)
    assert not (out / WORK).exists()  # keep_work false: the work folder goes once the run is done
