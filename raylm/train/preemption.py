"""A preemption notice turned into a checkpoint before the node goes.

When a cloud reclaims a spot node it warns first (AWS: two minutes), and the cluster drains
the node (``ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION --deadline-remaining-seconds
N``). Ray Train V2's preemption watcher sees the drain of a node that hosts workers of the run
and tells every worker; ``ray.train.get_preemption_info()`` then returns the drained nodes,
the ranks on them and the deadline (a barrier of all workers, so every rank asks at the same
steps). The loop checkpoints at the first step it learns of it and trains on; at the deadline
Ray Train stops the worker group and starts it again on other nodes (the autoscaler launches
them) from that checkpoint, counting the restart against
``FailureConfig.max_preemption_failures``, not ``max_failures``.
"""

from __future__ import annotations

import time
from typing import Any


class PreemptionNotice:
    """Asks every ``every`` steps (0: never); ``due(step)`` is True once per worker group, at
    the first step a preemption of one of its nodes is known."""

    def __init__(self, every: int, rank: int) -> None:
        self.every, self.rank = every, rank
        self.info: Any = None

    def due(self, step: int) -> bool:
        if not self.every or self.info is not None or step % self.every:
            return False
        import ray.train

        self.info = ray.train.get_preemption_info()
        if self.info is None:
            return False
        if self.rank == 0:
            left = f"{self.info.deadline_ms / 1000 - time.time():.0f} s" if self.info.deadline_ms else "no deadline"
            print(f"step {step}: node(s) {', '.join(n[:12] for n in self.info.preempted_node_ids)} of ranks "
                  f"{self.info.preempted_ranks} are being preempted ({left} left): checkpointing now", flush=True)
        return True
