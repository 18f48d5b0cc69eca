"""A run that cannot get its workers fails, with a clear error, instead of waiting for ever.

Ray Train waits as long as it takes for room for a worker group: an elastic run below its
``min`` workers (its nodes lost, none coming back) or a run asking for more than the cluster
can ever hold would wait silently for ever. ``WaitLimit`` is a Train controller callback: the
controller calls it at every iteration of its loop with its state, and once the run has had no
running worker group for ``scale.wait_for_workers_s`` (before its first start or after a
restart) it raises, which fails the run with ``NoRoomForWorkers`` naming what it waited for.
"""

from __future__ import annotations

import time
from typing import Any

from ray.train.v2._internal.execution.callback import ControllerCallback  # Ray: "custom workarounds" welcome

# controller states in which the run has no worker group training yet (or again)
WAITING = {"InitializingState", "SchedulingState", "ReschedulingState", "RestartingState", "ResizingState"}


class NoRoomForWorkers(RuntimeError):
    """The run had no running worker group for ``scale.wait_for_workers_s``."""


class WaitLimit(ControllerCallback):
    def __init__(self, limit_s: float, workers: str, resources: dict[str, float]) -> None:
        self.limit_s, self.workers, self.resources = limit_s, workers, resources
        self.since: float | None = None

    def after_controller_state_update(self, previous_state: Any, current_state: Any) -> None:
        if type(current_state).__name__ not in WAITING:
            self.since = None
            return
        now = time.monotonic()
        if self.since is None:
            self.since = now
        elif now - self.since > self.limit_s:
            each = ", ".join(f"{k} {v:g}" for k, v in self.resources.items())
            raise NoRoomForWorkers(
                f"no worker group could run for {self.limit_s:g} s (scale.wait_for_workers_s): the cluster has "
                f"no room for {self.workers} worker(s) of {each} each; add nodes (or let the autoscaler), "
                "lower scale.num_workers, or raise scale.wait_for_workers_s (0: wait for ever)")
