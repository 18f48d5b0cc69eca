"""Where raylm's Ray work runs: the cluster a command joins (or the local Ray it starts), and the
custom resources its data tasks hold.

Every command that runs Ray Data or Ray Train work (curate, tokenizer training, prepare,
train, tune, recipe) starts here, so the rules are one: join ``address`` or ``RAY_ADDRESS`` if
given, else start a local Ray sized by ``num_cpus``. On a cluster of several nodes,
``check_paths_on_nodes`` asks every node whether it sees the local paths a run will read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any


@dataclasses.dataclass(kw_only=True)
class RayConfig:
    address: str | None = None
    """Cluster to join; None joins ``RAY_ADDRESS`` if set, else starts a local Ray."""
    num_cpus: int | None = None
    """Logical CPUs of a local Ray (None: all cores)."""
    resources: dict[str, float] = dataclasses.field(default_factory=dict)
    """Custom resources each data task and actor holds besides its CPU: ``{data_cpu: 1}``
    keeps curation and tokenisation on the nodes that offer ``data_cpu`` (the CPU pool of
    ``cluster.yaml``), off the GPU nodes."""

    @property
    def remote_args(self) -> dict[str, Any]:
        """``ray_remote_args`` for every ``map_batches``/``map_groups`` of a data job."""
        return {"resources": dict(self.resources)} if self.resources else {}


def ensure_ray(cfg: RayConfig, env: dict[str, str] | None = None) -> None:
    """Connect to ``cfg.address`` (or ``RAY_ADDRESS``) or start a local Ray; ``env``: variables
    every worker of this job needs (a local Ray's workers inherit this process's environment).
    With Ray already running nothing is passed: set them before it starts, as ``run_recipe`` does.
    Ray logs at the console's level (``raylm.console``: quiet unless ``-v``)."""
    import ray

    from raylm import console

    console.quiet_ray_data()
    if ray.is_initialized():
        return
    env = {**console.ray_env(), **(env or {})}
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        # a submitted job's runtime_env may set some already: Ray refuses the same key twice
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("runtime_env") or {}
        env = {k: v for k, v in env.items() if k not in (job.get("env_vars") or {})}
        ray.init(address=address, runtime_env={"env_vars": env} if env else None, **console.ray_init_kwargs())
    else:
        os.environ.update(env)
        # a local Ray offers the custom resources the config asks for, one unit per CPU
        cpus = float(cfg.num_cpus or os.cpu_count() or 1)
        ray.init(num_cpus=cfg.num_cpus, resources={k: cpus for k in cfg.resources} or None,
                 **local_ray_options(), **console.ray_init_kwargs())


def local_ray_options() -> dict[str, Any]:
    """What a local Ray needs so that Ray's own helpers work quietly on one machine.

    - The dashboard, with its port chosen here and named in ``RAY_API_SERVER_ADDRESS``: Ray
      Train's placement-group cleaner asks the state API (served by the dashboard) every second
      whether the run's controller is alive; without a dashboard each query fails with a warning
      ("State API may be temporarily unavailable"), and with other Ray instances on the machine
      it cannot tell which one is its own.
    - No spot-preemption watcher in Train runs: a local machine gets no preemption notices
      (a default: ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER`` set by the user wins)."""
    import socket

    with socket.socket() as s:  # a free port for the dashboard
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    return {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port}


def worker_nodes() -> list[dict[str, Any]]:
    """The alive nodes of the connected Ray cluster that can run workers (they have CPUs or GPUs)."""
    import ray

    return [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) + n["Resources"].get("GPU", 0) > 0]


def check_paths_on_nodes(paths: dict[str, str], timeout_s: float = 60.0) -> None:
    """On a cluster of several nodes, every local path of ``paths`` (config key -> path) must be
    there on every node that may run a worker: ``ConfigError`` naming the key, the path and the
    nodes that cannot see it (or saying it is nowhere, when the driver cannot see it either).
    Each node answers with a task of 0 CPUs pinned to it, all within one ``timeout_s``; a node
    that does not answer (busy, or gone meanwhile) is named in a warning, not an error. Nothing
    is checked for URIs (``s3://``), outside Ray, or on one node; a node that joins later (an
    elastic run growing) is not asked."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from raylm.config import ConfigError

    local = {k: p for k, p in paths.items() if p and "://" not in p}
    nodes = worker_nodes() if ray.is_initialized() and local else []
    if len(nodes) < 2:
        return

    @ray.remote(num_cpus=0, max_retries=0)
    def missing(ps: list[str]) -> list[str]:
        return [p for p in ps if not os.path.exists(p)]

    asked = {f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})": missing.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(list(local.values()))
        for n in nodes}
    ready, _ = ray.wait(list(asked.values()), num_returns=len(asked), timeout=timeout_s)
    absent: dict[str, list[str]] = {}
    unanswered = []
    for node, ref in asked.items():
        if ref not in ready:
            ray.cancel(ref, force=True)
            unanswered.append(node)
            continue
        try:
            for p in ray.get(ref):
                absent.setdefault(p, []).append(node)
        except ray.exceptions.RayError:  # the node went away meanwhile
            unanswered.append(node)
    for key, p in local.items():
        if p in absent and not os.path.exists(p):
            raise ConfigError(f"{key}: {p} does not exist, neither here (the driver) nor on node(s) "
                              f"{', '.join(absent[p])} of the {len(nodes)}-node cluster")
        if p in absent:
            raise ConfigError(f"{key}: {p} is not there on node(s) {', '.join(absent[p])} of the {len(nodes)}-node "
                              "cluster; every worker reads it: put it on a file system all nodes share, or in "
                              "object storage (s3://...)")
    if unanswered:
        warnings.warn(f"could not check that node(s) {', '.join(unanswered)} see {', '.join(local.values())} "
                      f"(no answer within {timeout_s:.0f} s)", stacklevel=2)
