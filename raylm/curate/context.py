"""What a dataset step (a dedup) gets from the run: sizes, the stats actor, where its decision
is kept, and where its ``duplicates.parquet`` rows are collected."""

from __future__ import annotations

from typing import Any

from raylm.curate.workdir import WORK, WorkDir


class RunContext:
    """Sizes and the stats actor for dataset steps, and the work folder where each one's decision
    is kept for a resumed run."""

    def __init__(self, batch_size: int, num_shards: int, stats: Any, remote_args: dict[str, Any] | None,
                 work: WorkDir) -> None:
        self.batch_size, self.num_shards, self.stats = batch_size, num_shards, stats
        self.remote_args = remote_args or {}
        self.work = work
        self.step_key = ""
        """``<position>-<name>`` of the dataset step running now (set by ``build_dataset``)."""
        self.reused: list[str] = []
        self.duplicates: list[str] = []
        """Folders (URIs) of the dedup steps' duplicate rows, in step order."""
        self.cluster_sizes: dict[int, int] = {}
        """Duplicate clusters by number of documents, all dedup steps together."""

    def decision_dir(self) -> str:
        """URI of the current dataset step's decision folder (``OUT/_work/steps/<n>-<name>``)."""
        return f"{self.work.out.rstrip('/')}/{WORK}/steps/{self.step_key}"

    def add_duplicates(self, folder: str, cluster_sizes: dict[int, int]) -> None:
        self.duplicates.append(folder)
        for size, n in cluster_sizes.items():
            self.cluster_sizes[size] = self.cluster_sizes.get(size, 0) + n

    def stats_add(self, step: str, seconds: float = 0.0, counters: dict[str, int] | None = None) -> None:
        import ray

        ray.get(self.stats.add.remote(step, 0, 0, {}, seconds, counters or {}))

    def load_decision(self, step: str) -> dict[str, Any] | None:
        """The current dataset step's decision from an earlier, killed run of the same command;
        its telemetry is counted again. None: the step must decide now."""
        saved = self.work.load_decision(self.step_key)
        if saved is None:
            return None
        import ray

        decision, telemetry = saved
        ray.get(self.stats.add.remote(step, **telemetry))
        self.reused.append(self.step_key)
        return decision

    def save_decision(self, step: str, decision: dict[str, Any]) -> None:
        """Keep the current dataset step's decision (and its telemetry so far) for a rerun."""
        import ray

        telemetry = ray.get(self.stats.get.remote()).get(
            step, {"docs_in": 0, "bytes_in": 0, "dropped": {}, "seconds": 0.0, "counters": {}})
        self.work.save_decision(self.step_key, decision, telemetry)
