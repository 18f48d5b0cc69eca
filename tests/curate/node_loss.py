"""The node-loss scenarios, run in a process of their own (``python -m tests.curate.node_loss
ARGS_JSON``): they need a Ray cluster of several nodes, not the test session's one-node Ray.

A simulated cluster (``ray.cluster_utils.Cluster``): a head with 1 CPU, where the driver and the
run's stats actor live, and two worker nodes of 2 CPUs each.

* ``retry``: a curate run in this process loses a worker node (killed, not drained) as soon as
  its first read unit is done; Ray Data retries the lost tasks and rebuilds lost blocks from
  their lineage, and the run finishes on what is left.
* ``resume``: a ``raylm curate`` driver process joins the cluster (``RAY_ADDRESS``) and is
  killed together with a worker node as soon as its first read unit is done; a new node joins
  (what an autoscaler does), and the same command run again resumes from ``OUT/_work``.

Writes ``ARGS.summary`` (JSON): what each scenario saw at the moment of the loss.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

STALL_S = 300


def _wait_for_first_unit(out: Path, done: threading.Event | None = None, proc=None) -> int:
    markers = out / "_work" / "files"
    deadline = time.monotonic() + STALL_S
    while time.monotonic() < deadline:
        n = len(list(markers.glob("*.json"))) if markers.is_dir() else 0
        if n or (done is not None and done.is_set()) or (proc is not None and proc.poll() is not None):
            return n
        time.sleep(0.01)
    raise TimeoutError(f"no read unit of {out} finished in {STALL_S}s")


def main(args: dict) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from raylm.config import from_dict
    from raylm.curate.pipeline import CurateConfig, run

    steps, inputs = args["steps"], args["inputs"]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    summary: dict = {}

    # retry: the run goes on after its node is gone
    out = Path(args["retry"])
    result: dict = {}
    finished = threading.Event()

    def curate() -> None:
        try:
            result["stats"] = run(from_dict(CurateConfig, {"steps": steps}), inputs, str(out), quiet=True)
        except BaseException as exc:  # reported to the test
            result["error"] = repr(exc)
        finally:
            finished.set()

    thread = threading.Thread(target=curate)
    thread.start()
    units = _wait_for_first_unit(out, finished)
    summary["retry"] = {"units_done_at_loss": units, "finished_at_loss": finished.is_set()}
    cluster.remove_node(workers[0], allow_graceful=False)
    thread.join(STALL_S)
    summary["retry"].update(error=result.get("error"), alive=thread.is_alive())
    workers.append(cluster.add_node(num_cpus=2))  # the replacement an autoscaler would start
    cluster.wait_for_nodes()

    # resume: driver and node lost together; the rerun resumes
    out = Path(args["resume"])
    cmd = [sys.executable, "-m", "raylm.cli", "curate", *inputs, "-o", str(out),
           "--set", f"steps={json.dumps(steps)}", "--set", "keep_work=true"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "RAY_ADDRESS": cluster.address, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
    units = _wait_for_first_unit(out, proc=proc)
    cluster.remove_node(workers[1], allow_graceful=False)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    summary["resume"] = {"units_done_at_loss": units, "returncode": proc.returncode,
                         "finished_at_loss": (out / "stats.json").exists(), "stderr": proc.stderr.read().decode()[-2000:]}
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    stats = run(from_dict(CurateConfig, {"steps": steps, "keep_work": True}), inputs, str(out), quiet=True)
    summary["resume"]["resume_stats"] = stats["resume"]
    Path(args["summary"]).write_text(json.dumps(summary))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
