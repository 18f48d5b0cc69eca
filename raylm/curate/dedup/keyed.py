"""A dedup decision kept as Parquet sorted by document key, and the lookup that applies it.

A decision (which document is removed and for whom, which lines of a document go) is a table
with a ``key`` column, written by the workers after a Ray Data ``sort("key")``: each write task
writes its range as one file of small row groups and returns each row group's key range. That
index (a file name and a key range per row group of 8,192 rows: some 40,000 entries, a few MB,
for 3 x 10^8 removed documents) is what the driver keeps, and every task that looks keys up gets
it; one entry per file with the key ranges read from the Parquet footers would cut it further.

Applying the decision is then a sort-merge join by key in which the sort was the shuffle:
every document batch reads only the row groups whose key range holds one of its keys (a batch
of 1,000 documents reads one or two), never the whole table, and nothing is broadcast. NeMo
Curator removes duplicates the same way, by id ranges per input partition. A worker process
keeps the row groups it read last, since consecutive batches hit the same ones.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raylm.curate.dedup.partition import coalesced
from raylm.sinks import FolderSink
from raylm.storage import filesystem

ROW_GROUP_ROWS = 8192
_CACHE: OrderedDict[tuple[str, int], pa.Table] = OrderedDict()  # (file, row group) -> rows, per process
_CACHE_GROUPS = 32


@dataclasses.dataclass
class KeyedTable:
    """Index of a decision folder: per row group its file, index in the file and key range."""

    folder: str
    files: list[str]
    file_of: np.ndarray  # (groups,) index into ``files``
    group: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    rows: int = 0
    sums: dict[str, int] = dataclasses.field(default_factory=dict)
    """Column sums the writer counted (e.g. frequent lines' first holders)."""

    def to_dict(self) -> dict[str, Any]:
        return {"folder": self.folder, "files": self.files, "rows": self.rows, "sums": self.sums,
                "groups": [self.file_of.tolist(), self.group.tolist(), self.lo.tolist(), self.hi.tolist()]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KeyedTable:
        f, g, lo, hi = (np.asarray(x, np.int64) for x in d["groups"])
        return cls(d["folder"], list(d["files"]), f, g, lo, hi, int(d["rows"]), dict(d.get("sums", {})))

    def lookup(self, keys: np.ndarray) -> pa.Table | None:
        """The rows whose ``key`` is one of ``keys`` (None when no row group can hold any)."""
        if len(self.lo) == 0 or len(keys) == 0:
            return None
        k = np.unique(keys)
        hit = np.searchsorted(k, self.lo, "left") < np.searchsorted(k, self.hi, "right")
        parts = [self._row_group(int(i)) for i in np.flatnonzero(hit)]
        if not parts:
            return None
        t = pa.concat_tables(parts)
        return t.filter(pc.is_in(t.column("key"), value_set=pa.array(k, pa.int64())))

    def _row_group(self, i: int) -> pa.Table:
        path = f"{self.folder}/{self.files[self.file_of[i]]}"
        cache_key = (path, int(self.group[i]))
        t = _CACHE.get(cache_key)
        if t is None:
            fs, p = filesystem(path)
            with fs.open_input_file(p) as f:
                t = pq.ParquetFile(f).read_row_group(int(self.group[i]))
            _CACHE[cache_key] = t
            if len(_CACHE) > _CACHE_GROUPS:
                _CACHE.popitem(last=False)
        else:
            _CACHE.move_to_end(cache_key)
        return t


class KeyedSink(FolderSink):
    """Writes a Dataset sorted by ``key`` as a KeyedTable under ``folder``; ``unique`` keeps one
    row per key (the sort puts equal keys in one task); ``sum_columns`` are counted."""

    def __init__(self, folder: str, unique: bool = False, sum_columns: tuple[str, ...] = ()) -> None:
        super().__init__(folder)
        self.unique, self.sum_columns = unique, sum_columns
        self.table: KeyedTable | None = None

    def write(self, blocks, ctx) -> dict[str, Any]:
        parts = self.tables(blocks)
        if not parts:
            return {"file": None, "groups": [], "rows": 0, "sums": {}}
        t = pa.concat_tables(parts)
        key = t.column("key").to_numpy()
        order = np.argsort(key, kind="stable")
        if self.unique:
            sk = key[order]
            order = order[np.concatenate(([True], sk[1:] != sk[:-1]))]
        t = t.take(pa.array(order))
        key = t.column("key").to_numpy()
        name = self.part_name(ctx)
        fs, root = filesystem(self.folder)
        groups = []
        with pq.ParquetWriter(f"{root}/{name}", t.schema, filesystem=fs) as w:
            for g, start in enumerate(range(0, t.num_rows, ROW_GROUP_ROWS)):
                w.write_table(t.slice(start, ROW_GROUP_ROWS), row_group_size=ROW_GROUP_ROWS)
                end = min(start + ROW_GROUP_ROWS, t.num_rows)
                groups.append((g, int(key[start]), int(key[end - 1])))
        sums = {c: int(pc.sum(t.column(c).cast(pa.int64())).as_py() or 0) for c in self.sum_columns}
        return {"file": name, "groups": groups, "rows": t.num_rows, "sums": sums}

    def on_write_complete(self, write_result) -> None:
        files, file_of, group, lo, hi, sums, rows = [], [], [], [], [], {c: 0 for c in self.sum_columns}, 0
        for r in write_result.write_returns:
            if r["file"] is None:
                continue
            for g, a, b in r["groups"]:
                file_of.append(len(files))
                group.append(g)
                lo.append(a)
                hi.append(b)
            files.append(r["file"])
            rows += r["rows"]
            for c, n in r["sums"].items():
                sums[c] += n
        self.table = KeyedTable(self.folder, files, np.asarray(file_of, np.int64), np.asarray(group, np.int64),
                                np.asarray(lo, np.int64), np.asarray(hi, np.int64), rows, sums)


def write_keyed(ds: Any, folder: str, unique: bool = False, sum_columns: tuple[str, ...] = ()) -> KeyedTable:
    """Sort ``ds`` by ``key`` on the cluster and write it as a KeyedTable under ``folder``."""
    sink = KeyedSink(folder, unique, sum_columns)
    coalesced(ds).sort("key").write_datasink(sink)
    if sink.table is None:  # nothing was written (an empty dataset)
        sink.table = KeyedTable(folder, [], *(np.empty(0, np.int64) for _ in range(4)))
    return sink.table
