"""What raylm's Ray Data sinks share: a folder, part files named so that a retry rewrites its own.

Curated documents (``raylm.curate.sink``), dedup decisions (``raylm.curate.dedup.keyed``),
duplicate rows (``raylm.curate.dedup.clusters``) and token shards (``raylm.data.shards``) are
each written by many write tasks into one folder. A task Ray retries (a node lost while it
wrote) runs with the same task index, so a file named by the write (a token made once, on the
driver) and the task index is rewritten by the retry instead of left beside it, half written
or whole.
"""

from __future__ import annotations

import uuid

import pyarrow as pa
from ray.data import Datasink

from raylm.storage import filesystem


class FolderSink(Datasink):
    """A Datasink writing its tasks' files under ``folder`` (created when the write starts)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.token = uuid.uuid4().hex[:8]  # this write's: the same in every task and retry of it

    def on_write_start(self, schema=None) -> None:
        fs, root = filesystem(self.folder)
        fs.create_dir(root, recursive=True)

    def tag(self, ctx) -> str:
        """This write task's name: the same when Ray retries the task."""
        return f"{self.token}-{ctx.task_idx:05d}"

    def part_name(self, ctx) -> str:
        return f"part-{self.tag(ctx)}.parquet"

    @staticmethod
    def tables(blocks) -> list[pa.Table]:
        """The task's blocks as Arrow tables, the empty ones left out."""
        return [t for t in (b if isinstance(b, pa.Table) else pa.table(b) for b in blocks) if t.num_rows]
