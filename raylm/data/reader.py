"""Reading packed sequences by seq_id range: token-shard folders, Parquet folders or a Dataset.

A reader of the global order (``raylm.data.position``) needs, window after window, the rows of
one range of indices. ``IdMap`` turns indices into stored seq_ids (dense ``0..N-1``, or a
token-shard folder's ``unit << 32 | position`` from its manifest), and ``SeqSource.batches``
gives the rows of one seq_id range, in Arrow record batches.

Why not ``ray.train.get_dataset_shard``: its ``streaming_split`` hands rows to workers in an
order that changes from run to run, and no bounded buffer can turn an arbitrary arrival order
into a fixed one. Instead each worker reads just one window's seq_id range and reorders it in
memory. A Parquet folder is read by the worker itself (pyarrow, in the loader's read-ahead
thread), not by Ray Data tasks: the reads use the CPUs the worker holds, so a worker group
that fills its nodes (say two workers restarted on the one node left after a node was lost)
never waits for a CPU the cluster does not have. Row groups whose footer statistics cannot
overlap the window are not read at all (a folder sorted by ``seq_id``, as the token shards are,
costs about one read of the data per worker and epoch). An in-memory ``Dataset`` is filtered
through Ray Data for every window (tests and small data).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from raylm.storage import filesystem

_COLUMNS = ["seq_id", "tokens", "cu_seqlens"]


def take(q: queue.Queue, timeout_s: float | None, what: str) -> Any:
    """The next item a read-ahead thread queued; ``TimeoutError`` naming ``what`` when none came
    for ``timeout_s`` seconds, so a stuck read fails the run instead of hanging it."""
    try:
        return q.get(timeout=timeout_s)
    except queue.Empty:
        raise TimeoutError(f"{what}: no data from the reader for {timeout_s:g} s (data.read_timeout_s): its reads "
                           "are stuck (an object store that does not answer, or a Ray Data read with no CPU to "
                           "run on)") from None


class Stopped(Exception):
    """Raised inside a read when its consumer has asked the reader to stop."""


class IdMap:
    """Index ``0..N-1`` <-> seq_id for ids ``unit << shift | position`` with ``counts[u]``
    positions in unit ``units[u]`` (units ascending). ``IdMap.identity(n)`` is the dense case."""

    def __init__(self, units: np.ndarray, counts: np.ndarray, shift: int = 32) -> None:
        self.units = np.asarray(units, np.int64)
        self.counts = np.asarray(counts, np.int64)
        if len(self.units) and (np.any(np.diff(self.units) <= 0) or np.any(self.counts < 1)):
            raise ValueError("units must be ascending with positive counts")
        self.offsets = np.concatenate(([0], np.cumsum(self.counts)))
        self.shift = shift

    @classmethod
    def identity(cls, n: int) -> IdMap:
        return cls(np.zeros(1 if n else 0, np.int64), np.array([n] if n else [], np.int64), 0)

    @property
    def size(self) -> int:
        return int(self.offsets[-1])

    def to_seq_id(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, np.int64)
        u = np.searchsorted(self.offsets, index, side="right") - 1
        return (self.units[u] << self.shift) | (index - self.offsets[u])

    def to_index(self, seq_id: np.ndarray) -> np.ndarray:
        """Indices of ``seq_id``s; -1 for ids outside the map."""
        seq_id = np.asarray(seq_id, np.int64)
        if self.shift:
            unit, pos = seq_id >> self.shift, seq_id & ((1 << self.shift) - 1)
        else:
            unit, pos = np.zeros_like(seq_id), seq_id
        u = np.clip(np.searchsorted(self.units, unit), 0, max(len(self.units) - 1, 0))
        ok = (len(self.units) > 0) & (self.units[u] == unit) & (pos >= 0) & (pos < self.counts[u])
        return np.where(ok, self.offsets[u] + pos, -1)

    def seq_id_range(self, lo: int, hi: int) -> tuple[int, int]:
        """The seq_id range ``[a, b)`` holding exactly the indices ``[lo, hi)``."""
        first, last = self.to_seq_id(np.array([lo, hi - 1]))
        return int(first), int(last) + 1


def manifest_id_map(path: str) -> IdMap | None:
    """The IdMap of a token-shard folder from its manifest (None: no manifest or no units)."""
    import pyarrow.fs as pafs

    from raylm.data.shards import MANIFEST, UNIT_SHIFT, read_manifest

    fs, root = filesystem(path)
    if fs.get_file_info(f"{root.rstrip('/')}/{MANIFEST}").type != pafs.FileType.File:
        return None
    manifest = read_manifest(path)
    if "units" not in manifest:
        return None
    units = np.array([u for u, _ in manifest["units"]], np.int64)
    counts = np.array([c for _, c in manifest["units"]], np.int64)
    return IdMap(units, counts, int(manifest.get("unit_shift", UNIT_SHIFT)))


class RowGroup(NamedTuple):
    uri: str
    index: int
    lo: int | None  # seq_id statistics; None when the footer has none
    hi: int | None
    rows: int
    size: int


def parquet_row_groups(path: str) -> list[RowGroup]:
    """Every row group of a Parquet folder (or file) with its seq_id range, from the footers.
    A token-shard folder's files are the ones its manifest lists (its ``val/`` split, which
    ``raylm prepare`` writes inside it, is not training data)."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from raylm.data.shards import MANIFEST, read_manifest

    fs, root = filesystem(path)
    scheme = path.split("://", 1)[0] + "://" if "://" in path else ""
    if fs.get_file_info(f"{root.rstrip('/')}/{MANIFEST}").type == pafs.FileType.File:
        files = [f"{root.rstrip('/')}/{s['path']}" for s in read_manifest(path)["shards"]]
    elif fs.get_file_info(root).type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        files = sorted(i.path for i in infos if i.is_file and i.path.endswith(".parquet"))
    else:
        files = [root]
    if not files:
        raise ValueError(f"{path}: no .parquet files")
    out = []
    for f in files:
        md = pq.ParquetFile(f, filesystem=fs).metadata
        col = md.schema.to_arrow_schema().get_field_index("seq_id")
        if col < 0:
            raise ValueError(f"{f}: no seq_id column")
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            st = rg.column(col).statistics
            lo, hi = (int(st.min), int(st.max)) if st is not None and st.has_min_max else (None, None)
            out.append(RowGroup(scheme + f, g, lo, hi, rg.num_rows, rg.total_byte_size))
    return out


def read_row_groups(groups: list[RowGroup], lo: int, hi: int) -> Iterator[Any]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for g in groups:
        fs, p = filesystem(g.uri)
        t = pq.ParquetFile(p, filesystem=fs).read_row_group(g.index, columns=_COLUMNS)
        sid = t.column("seq_id")
        yield t.filter(pc.and_(pc.greater_equal(sid, lo), pc.less(sid, hi)))


class SeqSource:
    """Reads one seq_id range of the packed data (see the module docstring)."""

    def __init__(self, data: Any) -> None:
        import ray.data

        self.groups: list[RowGroup] | None = None
        self.ds = None
        self.name = data if isinstance(data, str) else "the dataset"
        """What the source is, for messages: its folder, or "the dataset"."""
        self.ids: IdMap | None = None
        if isinstance(data, str):
            self.groups = parquet_row_groups(data)
            self.ids = manifest_id_map(data)
            if self.ids is not None and self.ids.size != sum(g.rows for g in self.groups):
                raise ValueError(f"{data}: the manifest counts {self.ids.size} sequences, the files "
                                 f"{sum(g.rows for g in self.groups)}")
        elif isinstance(data, ray.data.Dataset):
            self.ds = data.select_columns(_COLUMNS)
        else:
            raise TypeError(
                f"TrainBatches reads a ray.data.Dataset or a Parquet folder, not {type(data).__name__}; "
                "a get_dataset_shard() iterator cannot be used because streaming_split's order is not "
                "deterministic: pass the Dataset itself (e.g. through train_loop_config)"
            )

    def count(self) -> int:
        if self.ds is not None:
            return self.ds.count()
        return sum(g.rows for g in self.groups)

    def id_map(self, num_sequences: int) -> IdMap:
        return self.ids if self.ids is not None else IdMap.identity(num_sequences)

    def batches(self, lo: int, hi: int, batch_size: int) -> Iterator[Any]:
        """Arrow tables (of at most ``batch_size`` rows) of the rows with ``lo <= seq_id < hi``:
        from the row groups that can hold any, read here, or a Dataset's."""
        if self.ds is not None:
            from ray.data.expressions import col, lit

            ds = self.ds.filter(expr=(col("seq_id") >= lit(lo)) & (col("seq_id") < lit(hi)))
            yield from ds.iter_batches(batch_size=batch_size, batch_format="pyarrow", prefetch_batches=2)
            return
        groups = [g for g in self.groups if g.lo is None or (g.lo < hi and g.hi >= lo)]
        for table in read_row_groups(groups, lo, hi):
            for offset in range(0, table.num_rows, batch_size):
                yield table.slice(offset, batch_size)


def read_rows(source: SeqSource, id_map: IdMap, lo: int, hi: int, ids: np.ndarray, read_batch_size: int = 256,
              stop: threading.Event | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Rows of indices ``ids`` (all in ``[lo, hi)``) of ``source`` in that order: tokens ``(n, L)`` and
    cu_seqlens (``Stopped`` when ``stop`` is set meanwhile)."""
    slot = np.full(hi - lo, -1, np.int64)
    slot[ids - lo] = np.arange(len(ids))
    tokens: np.ndarray | None = None
    cu: list[np.ndarray | None] = [None] * len(ids)
    found = 0
    for t in source.batches(*id_map.seq_id_range(lo, hi), read_batch_size):
        if stop is not None and stop.is_set():
            raise Stopped
        sid = t.column("seq_id").to_numpy()
        idx = id_map.to_index(sid)
        if np.any((idx < lo) | (idx >= hi)):
            raise ValueError(f"seq_ids {sid[(idx < lo) | (idx >= hi)][:5].tolist()} are not in the data's id map")
        k = slot[idx - lo]
        keep = np.flatnonzero(k >= 0)
        if not len(keep):
            continue
        tok_col = t.column("tokens").combine_chunks()
        flat = tok_col.flatten().to_numpy()
        offsets = tok_col.offsets.to_numpy()
        seq_len = offsets[1] - offsets[0]
        if np.any(np.diff(offsets) != seq_len):
            raise ValueError(f"tokens of seq_ids {lo}..{hi - 1} are not all {seq_len} long")
        rows = flat.reshape(-1, seq_len)
        if tokens is None:
            tokens = np.empty((len(ids), seq_len), np.int32)
        elif tokens.shape[1] != seq_len:
            raise ValueError(f"tokens are {tokens.shape[1]} and {seq_len} long")
        tokens[k[keep]] = rows[keep]
        cu_list = t.column("cu_seqlens").to_pylist()
        for j in keep:
            if cu[k[j]] is not None:
                raise ValueError(f"seq_id {int(sid[j])} appears twice in the dataset")
            cu[k[j]] = np.asarray(cu_list[j], np.int64)
        found += len(keep)
    if found != len(ids):
        missing = [int(i) for i, c in zip(id_map.to_seq_id(ids), cu) if c is None][:5]
        raise ValueError(f"seq_ids {missing} are missing from the data: without a token-shard "
                         "manifest, seq_id must be dense 0..N-1")
    return tokens, cu  # type: ignore[return-value]
