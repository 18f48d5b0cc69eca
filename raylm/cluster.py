"""Where raylm's Ray work runs: the cluster a command joins (or the local Ray it starts), and the
custom resources its data tasks hold.

Every command that runs Ray Data or Ray Train work (curate, tokenizer training, prepare,
train, tune, recipe) starts here, so the rules are one: join ``address`` or ``RAY_ADDRESS`` if
given, else start a local Ray sized by ``num_cpus``.
"""

from __future__ import annotations

import dataclasses
import os
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
    With Ray already running nothing is passed: set them before it starts, as ``run_recipe`` does."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env={"env_vars": env} if env else None)
    else:
        # a local Ray offers the custom resources the config asks for, one unit per CPU
        cpus = float(cfg.num_cpus or os.cpu_count() or 1)
        ray.init(num_cpus=cfg.num_cpus, resources={k: cpus for k in cfg.resources} or None,
                 include_dashboard=False, log_to_driver=True)
