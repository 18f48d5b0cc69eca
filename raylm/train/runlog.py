"""``RunLog``: a run's ``metrics.jsonl`` and TensorBoard files in its object-store folder.

A Ray Train callback on the driver side that keeps ``metrics.jsonl`` and ``tensorboard/`` of a
run whose storage is an object store (rank 0 writes them directly into a local run folder):
it writes locally, then copies both into ``<storage>/<name>/`` after every report, so
``tensorboard --logdir s3://...`` follows a run from anywhere.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import pyarrow.fs as pafs
from ray.train import UserCallback

from raylm import storage


class RunLog(UserCallback):
    """``metrics.jsonl`` and TensorBoard scalars (and samples) of rank 0's reports, copied to
    ``<storage>/<name>/``."""

    def __init__(self, fs: pafs.FileSystem, root: str, name: str) -> None:
        self.fs, self.run, self.name = fs, f"{root}/{name}", name
        self.local: str | None = None
        self.rows: list[dict[str, Any]] = []
        self.writer = None

    def _start(self) -> None:
        from raylm.train.metrics import TensorBoard

        self.local = tempfile.mkdtemp(prefix=f"raylm-runlog-{self.name}-")
        try:  # a run started again under the same name continues its log
            with self.fs.open_input_stream(f"{self.run}/metrics.jsonl") as f:
                self.rows = [json.loads(line) for line in f.read().decode().splitlines() if line]
        except (FileNotFoundError, OSError):
            self.rows = []
        self.writer = TensorBoard(os.path.join(self.local, "tensorboard"))

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if not metrics or "step" not in metrics[0]:
            return
        if self.writer is None:
            self._start()
        row = metrics[0]
        self.rows.append(row)
        self.writer.log(row["step"], {k: v for k, v in row.items() if k != "step"})
        self.upload()

    def upload(self) -> None:
        fs, run = self.fs, self.run
        fs.create_dir(f"{run}/tensorboard", recursive=True)
        with fs.open_output_stream(f"{run}/metrics.jsonl") as f:
            f.write("".join(json.dumps(r) + "\n" for r in self.rows).encode())
        tb = os.path.join(self.local, "tensorboard")
        for name in os.listdir(tb):
            pafs.copy_files(os.path.join(tb, name), f"{run}/tensorboard/{name}",
                            source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def read_metrics(folder: str, endpoint: str | None = None) -> list[dict[str, Any]]:
    """The run's ``metrics.jsonl`` (a local folder or a URI) by step (a step logged twice,
    before a failure and after the resume, keeps its last record)."""
    fs, root = storage.filesystem(folder, endpoint)
    try:
        with fs.open_input_stream(f"{root}/metrics.jsonl") as f:
            lines = f.read().decode().splitlines()
    except FileNotFoundError:
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in lines:
        row = json.loads(line)
        by_step[row["step"]] = row
    return [by_step[s] for s in sorted(by_step)]
