"""``cluster.yaml``'s node types exercised under Ray's fake multi-node provider: a pretrain job
submitted with ``ray job submit`` scales the GPU pool up from 0, a node drained for preemption
makes the run checkpoint before the node goes and go on on another node, and the pool goes back
to 0 after its idle timeout.

The autoscaling config is ``cluster.yaml``'s, derived as ``ray up`` would hand it to the head
(its node types, labels, priorities and resources) with four changes: the provider is Ray's
``FakeMultiNodeProvider``, which starts a "node" as a raylet on this machine; CPU counts are cut
to 2 per node and each pool to one node; the idle timeout is 6 s. The GPUs are fake: a GPU is a
resource the workers ask for (``scale.use_gpu``) and so a scheduling label, and the workers
train on the CPU with gloo (``scale.device: cpu``). The head runs autoscaler v2, as ``ray up``
does since Ray 2.50 (it alone honours ``priority``: spot before on-demand).

The Ray wheel does not ship the provider's defaults file (``fake_multi_node/example.yaml``), so
the provider is named as an ``external`` module, which needs none. Nothing drains a node in the
fake cluster when its "cloud" reclaims it, so the test does what a cloud and its Ray integration
do: ``ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION --deadline-remaining-seconds N``, then
kills the node's raylet at the deadline. One job shows all of it (each Ray Train start costs
tens of seconds here); the two tests read what it recorded.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from raylm.train.runlog import read_metrics
from tests.local_head import RAY, Head, free_ports, start_head

REPO = Path(__file__).resolve().parent.parent
IDLE_TIMEOUT_MIN = 0.1  # 6 s
DEADLINE_S = 30  # the preemption notice (AWS gives 2 min); the node goes as soon as the run has checkpointed
STEPS = 200  # the first worker group must outlive the notice on a fast machine, whatever the load
JOB = "raylm-pretrain"
FAKE_HEAD = "ray.head.default"  # the node type the fake provider gives its head


def fake_cluster_config(cluster: dict, gcs: str) -> dict:
    """``cluster``'s autoscaling config for the fake multi-node provider whose head is at ``gcs``."""
    types = {}
    for name, t in cluster["available_node_types"].items():
        if name == cluster["head_node_type"]:
            types[FAKE_HEAD] = {"resources": t["resources"], "node_config": {}, "max_workers": 0}
            continue
        resources = {k: min(v, 2) if k in ("CPU", "data_cpu") else v for k, v in t["resources"].items()}
        types[name] = {"resources": resources, "labels": t["labels"], "priority": t.get("priority", 0),
                       "min_workers": t["min_workers"], "max_workers": 1, "node_config": {}}
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

    provider = {"type": "external", "module": "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider",
                "gcs_address": gcs, "head_node_id": FAKE_HEAD_NODE_ID, "launch_multiple": True,
                "use_node_id_as_ip": True, "disable_node_updaters": True, "disable_launch_config_check": True}
    return {"cluster_name": cluster["cluster_name"], "max_workers": len(types) - 1,
            "upscaling_speed": cluster["upscaling_speed"], "idle_timeout_minutes": IDLE_TIMEOUT_MIN,
            "provider": provider, "available_node_types": types, "head_node_type": FAKE_HEAD, "auth": {},
            "docker": {}, "file_mounts": {}, "file_mounts_sync_continuously": False,
            **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands",
                               "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
                               "cluster_synced_files", "rsync_exclude", "rsync_filter")}}


def ray(head: Head, *args: str, timeout: float = 60) -> str:
    out = subprocess.run([str(RAY), *args], env=head.env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert out.returncode == 0, f"ray {' '.join(args)}: {out.stdout[-2000:]}{out.stderr[-2000:]}"
    return out.stdout


def listed(head: Head, kind: str, *filters: str) -> list[dict]:
    args = [a for f in filters for a in ("--filter", f)]
    out = ray(head, "list", kind, "--address", head.address, "--format", "json", "--limit", "1000", *args)
    return json.loads(out[out.index("["):]) if "[" in out else []  # nothing at all when none match


def gpu_nodes(head: Head, alive: bool = True) -> list[dict]:
    return [n for n in listed(head, "nodes") if n["resources_total"].get("GPU") and (n["state"] == "ALIVE" or not alive)]


def wait_for(what: str, check, timeout: float, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


NODE_ID_VAR = "RAY_OVERRIDE_NODE_ID_FOR_TESTING"  # the fake provider gives each node's raylet its id so


def node_of(pid: int) -> str:
    """The fake node whose raylet started process ``pid`` (a worker's parent is its raylet)."""
    for _ in range(4):
        env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        if NODE_ID_VAR in env:
            return env[NODE_ID_VAR]
        pid = int(next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("PPid:")))
    raise AssertionError(f"process {pid} is not on a fake node")


def kill_node(node_id: str) -> list[int]:
    """SIGKILL the fake node's raylet (its workers and agents go with it), as a reclaimed machine."""
    import os
    import signal

    killed = []
    for pid in Path("/proc").iterdir():
        if pid.name.isdigit():
            try:
                env = (pid / "environ").read_bytes()
            except OSError:
                continue
            if f"{NODE_ID_VAR}={node_id}".encode() in env:
                os.kill(int(pid.name), signal.SIGKILL)
                killed.append(int(pid.name))
    return killed


def seq_log(run: Path) -> list[dict]:
    """Rank 0's complete ``seq_ids`` records (step, pid, seq_ids), in write order."""
    path = run / "seq_ids-rank0.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def checkpoint_steps(run: Path) -> list[int]:
    """Steps of the run's checkpoints whose ``state.json`` is complete (Ray copies them in)."""
    steps = []
    for path in run.glob("checkpoint_*/state.json"):
        try:
            steps.append(json.loads(path.read_text())["step"])
        except (ValueError, KeyError):  # being written
            continue
    return sorted(steps)


@pytest.fixture(scope="module")
def cluster_run(shards, tmp_path_factory) -> dict:
    """The recorded scenario: nodes before, the drained node, checkpoints when it was killed,
    the job's logs, the actors and nodes at the end, the autoscaler's log."""
    from ray._private.services import get_node_ip_address
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    gcs_port = free_ports(1)[0]
    config = fake_cluster_config(cluster, f"{get_node_ip_address()}:{gcs_port}")
    path = tmp_path_factory.mktemp("fake-cluster") / "autoscaling.yaml"
    path.write_text(yaml.safe_dump(config))
    storage = tmp_path_factory.mktemp("fake-cluster-runs")
    train_env = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1", "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "0.5",
                 "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
    env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_enable_autoscaler_v2": "1",
           "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID, **train_env}
    head_cpus = cluster["available_node_types"][cluster["head_node_type"]]["resources"]["CPU"]
    rec: dict = {"config": config}
    t0 = time.monotonic()
    timeline = rec["timeline"] = {}  # seconds from the start of the head, printed for a failing test

    def mark(event: str) -> None:
        timeline[event] = round(time.monotonic() - t0, 1)

    with start_head([f"--num-cpus={head_cpus}", f"--autoscaling-config={path}"], env, gcs_port) as head:
        mark("head up")
        rec["gpu_nodes_before"] = gpu_nodes(head)
        runtime_env = {"env_vars": {**train_env, "RAY_ADDRESS": head.gcs}}  # one of several Rays on this machine
        ray(head, "job", "submit", "--no-wait", "--submission-id", JOB, "--address", head.address,
            "--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env), "--",
            "python", "-m", "jobs.pretrain", "-c", "jobs/configs/train_tiny.yaml",
            *(a for kv in (f"data.path={shards}", f"storage_path={storage}", "name=spot", f"steps={STEPS}",
                           "log_every=10", "log_seq_ids=true", "model.vocab_size=1024", "model.max_seq_len=64",
                           "data.window=64", "scale.num_workers=1", "scale.use_gpu=true", "scale.device=cpu",
                           "checkpoint.every=0", "checkpoint.preemption_check_every=1")
              for a in ("--set", kv)))
        mark("submitted")
        run = storage / "spot"
        # watched through the run folder: a `ray` command takes seconds, in which a tiny run trains on
        first = wait_for("the first training step", lambda: seq_log(run), 300, 0.2)
        rec["drained"] = node_of(first[0]["pid"])
        mark("training")
        ray(head, "drain-node", "--address", head.gcs, "--node-id", rec["drained"], "--reason",
            "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "spot instance reclaimed (test)",
            "--deadline-remaining-seconds", str(DEADLINE_S))
        mark("drained")
        wait_for("the run's checkpoint", lambda: checkpoint_steps(run), DEADLINE_S, 0.1)
        time.sleep(2)  # for its upload to end and the controller to register it (it polls every 0.5 s)
        rec["checkpoints_when_killed"] = checkpoint_steps(run)
        rec["step_when_killed"] = max(row["step"] for row in seq_log(run))
        # the cloud takes the node: at the deadline at the latest, here as soon as the run has checkpointed
        mark("killed" if kill_node(rec["drained"]) else "already gone")
        rec["logs"] = subprocess.run([str(RAY), "job", "logs", "--follow", "--address", head.address, JOB],
                                     env=head.env, capture_output=True, text=True, timeout=300).stdout
        rec["status"] = ray(head, "job", "status", "--address", head.address, JOB)
        rec["ended"] = time.monotonic()
        mark("job ended")
        rec["gpu_nodes_after"] = wait_for("the GPU pool back at 0 nodes", lambda: not gpu_nodes(head) or None, 90)
        rec["back_to_zero_s"] = time.monotonic() - rec["ended"]
        mark("no GPU node")
        rec["workers"] = listed(head, "actors", "class_name=RayTrainWorker")
        rec["nodes"] = listed(head, "nodes")
        rec["autoscaler"] = "".join(p.read_text() for p in Path(head.temp_dir).glob("session_*/logs/monitor.log"))
    rec["metrics"] = read_metrics(str(run))
    rec["seq_ids"] = seq_log(run)
    print("timeline (s):", json.dumps(timeline))
    return rec


def test_derived_from_cluster_yaml():
    """The fake cluster's node types are cluster.yaml's, and the autoscaler v2 takes the config."""
    import copy

    from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig

    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config = fake_cluster_config(cluster, "127.0.0.1:1")
    AutoscalingConfig(copy.deepcopy(config))  # Ray's preparation and validation, as the head's monitor runs it
    types, real = config["available_node_types"], cluster["available_node_types"]
    assert set(types) - {FAKE_HEAD} == set(real) - {cluster["head_node_type"]}
    for name, t in types.items():
        if name != FAKE_HEAD:
            assert t["labels"] == real[name]["labels"] and t["priority"] == real[name].get("priority", 0)
            assert t["resources"].get("GPU") == real[name]["resources"].get("GPU")
            assert set(t["resources"]) == set(real[name]["resources"])
    assert types[FAKE_HEAD]["resources"] == real[cluster["head_node_type"]]["resources"] == {"CPU": 0}


def test_gpu_pool_scales_up_from_zero_for_a_submitted_job_and_back_after_the_idle_timeout(cluster_run):
    r = cluster_run
    assert "succeeded" in r["status"], r["logs"][-4000:]
    assert r["gpu_nodes_before"] == []  # the pool starts empty
    assert "Adding 1 node(s) of type gpu-spot" in r["logs"]  # what the job's log shows
    used = {w["node_id"] for w in r["workers"]}
    nodes = {n["node_id"]: n for n in r["nodes"]}
    assert used and all(nodes[n]["resources_total"]["GPU"] == 4 for n in used)  # workers on GPU nodes only
    assert nodes[r["drained"]]["labels"]["raylm-market"] == "spot"  # the first: priority 10, spot before on-demand
    assert sorted({row["step"] for row in r["seq_ids"]}) == list(range(1, STEPS + 1))  # every step trained
    assert r["metrics"][-1]["step"] == STEPS
    # back to zero: removed as idle once the idle timeout passed after the job ended
    assert r["gpu_nodes_after"] is True and r["back_to_zero_s"] < 60
    idle = re.findall(r"idle for ([\d.]+) secs > timeout=([\d.]+) secs", r["autoscaler"])
    assert idle and all(float(t) == 60 * IDLE_TIMEOUT_MIN for _, t in idle)
    assert "Removing 1 nodes of type gpu-spot (idle)" in r["autoscaler"]


def test_a_node_drained_for_preemption_gets_a_checkpoint_first_and_the_run_goes_on_elsewhere(cluster_run):
    r = cluster_run
    assert "succeeded" in r["status"], r["logs"][-4000:]
    notice = re.search(r"step (\d+): node\(s\) \w+ of ranks \[0\] are being preempted \((\d+) s left\): "
                       r"checkpointing now", r["logs"])
    assert notice, r["logs"][-4000:]
    step = int(notice.group(1))
    # the checkpoint of that step was written before the node went (checkpoint.every is 0: no other)
    assert r["checkpoints_when_killed"] == [step] and step <= r["step_when_killed"] < STEPS, \
        (step, r["checkpoints_when_killed"], r["step_when_killed"])
    # what the job's log says of the restart (Ray Train's own account is INFO, quiet by default):
    # raylm's lines from the Train controller, then the resumed worker's
    assert "train: the worker group stopped (Training was interrupted by node preemption" in r["logs"], \
        r["logs"][-4000:]
    assert "train: training again on 1 worker(s)" in r["logs"]
    assert re.search(rf"step {step}: resumed from this run's latest checkpoint on 1 worker", r["logs"])
    # the run went on from it on another node (the drained one was gone): a second worker process
    where = {w["node_id"] for w in r["workers"]}  # a worker group may also start and stop before training
    assert r["drained"] in where and len(where) == 2, where
    pids = list(dict.fromkeys(row["pid"] for row in r["seq_ids"]))
    assert len(pids) == 2
    assert next(row["step"] for row in r["seq_ids"] if row["pid"] == pids[1]) == step + 1
    assert r["metrics"][-1]["step"] == STEPS
