"""``duplicates.parquet``: which document was removed for which, written by the workers.

The members table of a decision (``key``, ``root``: its cluster's kept document) knows keys,
not ids. One pass over the documents looks up each batch's members (``KeyedTable.lookup``) and
emits ``(root, key, id)`` to the partition of its root; there every cluster is whole, and a
task writes one row per removed document: step, removed id, kept id, cluster (the kept
document's key) and the cluster's size. The sink returns counts per cluster size, so the
report's histogram needs no document list on the driver either.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raylm.curate import schema as S
from raylm.curate.dedup.keyed import KeyedTable
from raylm.curate.dedup.partition import WHOLE_BLOCKS, by_shard, shard_of
from raylm.sinks import FolderSink
from raylm.storage import filesystem

DUPLICATE_SCHEMA = pa.schema([("step", pa.string()), ("removed_id", pa.string()), ("kept_id", pa.string()),
                              ("cluster", pa.int64()), ("cluster_size", pa.int64())])
_MEMBER_SCHEMA = pa.schema([("shard", pa.int32()), ("root", pa.int64()), ("key", pa.int64()), ("id", pa.string())])


def member_ids(batch: pa.Table, table: KeyedTable, num_shards: int) -> pa.Table:
    """map_batches over the documents: ``(root, key, id)`` of the batch's cluster members."""
    keys = batch.column(S.KEY).to_numpy()
    found = table.lookup(keys)
    if found is None or found.num_rows == 0:
        return _MEMBER_SCHEMA.empty_table()
    fk, root = found.column("key").to_numpy(), found.column("root").to_numpy()
    sorter = np.argsort(keys)
    rows = sorter[np.searchsorted(keys, fk, sorter=sorter)]
    ids = batch.column(S.ID).take(pa.array(rows))
    return pa.Table.from_arrays([pa.array(shard_of(root, num_shards)), pa.array(root), pa.array(fk), ids.cast(pa.string())],
                                schema=_MEMBER_SCHEMA)


def cluster_rows(table: pa.Table, step: str) -> pa.Table:
    """map_groups over one root partition: one DUPLICATE_SCHEMA row per removed member."""
    root, key = table.column("root").to_numpy(), table.column("key").to_numpy()
    if len(root) == 0:
        return DUPLICATE_SCHEMA.empty_table()
    ids = np.asarray(table.column("id").to_pylist(), dtype=object)
    order = np.lexsort((key, root))  # the root is the smallest key of its cluster: first in it
    root, key, ids = root[order], key[order], ids[order]
    new = np.concatenate(([True], root[1:] != root[:-1]))
    starts = np.flatnonzero(new)
    group = np.cumsum(new) - 1
    size = np.diff(np.append(starts, len(root)))[group]
    kept = ids[starts][group]
    if not np.array_equal(key[starts], root[starts]):
        raise RuntimeError("a duplicate cluster's kept document was not found among the documents")
    sel = ~new
    n = int(sel.sum())
    return pa.Table.from_arrays([pa.array([step] * n, pa.string()), pa.array(ids[sel].tolist(), pa.string()),
                                 pa.array(kept[sel].tolist(), pa.string()), pa.array(root[sel]),
                                 pa.array(size[sel])], schema=DUPLICATE_SCHEMA)


class DuplicatesSink(FolderSink):
    """Writes duplicate rows under ``folder``; sums removed documents per cluster size."""

    def __init__(self, folder: str) -> None:
        super().__init__(folder)
        self.removed = 0
        self.cluster_sizes: dict[int, int] = {}

    def write(self, blocks, ctx) -> dict[str, Any]:
        t = pa.concat_tables(self.tables(blocks) or [DUPLICATE_SCHEMA.empty_table()])
        if t.num_rows:
            fs, root = filesystem(self.folder)
            pq.write_table(t, f"{root}/{self.part_name(ctx)}", filesystem=fs)
        return {"rows_by_size": dict(Counter(t.column("cluster_size").to_pylist()))}

    def on_write_complete(self, write_result) -> None:
        rows: Counter = Counter()
        for r in write_result.write_returns:
            rows.update(r["rows_by_size"])
        self.removed = sum(rows.values())
        # a cluster of s documents has s - 1 rows, wherever its rows were written
        self.cluster_sizes = {int(s): n // (int(s) - 1) for s, n in sorted(rows.items())}


def write_duplicates(ds: Any, members: KeyedTable, ctx: Any, step: str, folder: str) -> DuplicatesSink:
    """Look up every cluster member's id in ``ds`` and write ``folder``'s duplicate rows."""
    sink = DuplicatesSink(folder)
    if members.rows == 0:
        return sink
    found = ds.map_batches(member_ids, batch_format="pyarrow", batch_size=WHOLE_BLOCKS,
                           fn_kwargs={"table": members, "num_shards": ctx.num_shards}, **ctx.remote_args)
    by_shard(found, cluster_rows, ctx, step=step).write_datasink(sink)
    return sink


def publish_duplicates(folders: list[str], out: str) -> None:
    """Gather the steps' duplicate files into ``out/duplicates.parquet/`` (a Parquet dataset
    folder): file copies, no rows read. Copied, not moved: a run killed before its
    ``stats.json`` is resumed from the work folder, whose decisions must still hold them."""
    fs, root = filesystem(out)
    target = f"{root}/duplicates.parquet"
    fs.create_dir(target, recursive=True)
    moved = 0
    for folder in folders:
        ffs, src = filesystem(folder)
        if ffs.get_file_info(src).type != pafs.FileType.Directory:
            continue
        step = src.rstrip("/").split("/")[-2]  # .../steps/<n>-<name>/duplicates
        for info in ffs.get_file_info(pafs.FileSelector(src)):
            if info.is_file and info.base_name.endswith(".parquet"):
                fs.copy_file(info.path, f"{target}/{step}-{info.base_name}")
                moved += 1
    if not moved:  # readers of an empty dataset still need its schema
        pq.write_table(DUPLICATE_SCHEMA.empty_table(), f"{target}/empty.parquet", filesystem=fs)
