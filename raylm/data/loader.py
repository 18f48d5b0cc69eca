"""Feeding Ray Train: packed sequences -> per-worker torch batches in a deterministic, resumable order.

Input: a packed dataset, i.e. a ``ray.data.Dataset`` or a Parquet folder with ``seq_id``
(int64), ``tokens`` (list<int32>, all ``seq_len`` long) and ``cu_seqlens`` (list<int32>, from
0 to ``seq_len``). The order below works on *indices* ``0..N-1``: for a Dataset or a plain
folder the index is the seq_id (which must then be dense); for a token-shard folder written by
``raylm prepare`` (seq_id ``unit << 32 | position``, see ``shards``) the manifest's per-unit
counts map index ``i`` to the ``i``-th smallest seq_id (``IdMap``), so a window of consecutive
indices is one seq_id range. Batches carry the stored seq_ids.

Global order (a pure function of ``seed``, ``epoch``, ``N`` and ``window``): the id space is cut
into *windows* of ``window`` consecutive seq_ids; each epoch visits the windows in a seeded
random order and the ids inside each window in a seeded random order (``global_order``). That
concatenation is the epoch's order ``O``. With ``B`` sequences per worker and ``W`` workers,
global batch ``g`` is ``O[g*B*W:(g+1)*B*W]`` and worker ``r`` takes its ``r``-th block of ``B``.
An epoch has ``N // (B*W)`` global batches; the ``< B*W`` remaining positions (different
sequences every epoch) are skipped, so every worker always gets a full batch.

Why not ``ray.train.get_dataset_shard``: its ``streaming_split`` hands rows to workers in an
order that changes from run to run, and no bounded buffer can turn an arbitrary arrival order
into a fixed one. Instead each worker reads, window after window in the epoch's order, just
that window's seq_id range through Ray Data (``ds.filter(expr=lo <= seq_id < hi)`` then
``iter_batches(prefetch_batches=...)``), keeps only the rows of its own blocks and reorders
them in memory. For a Parquet folder, files whose footer statistics cannot overlap the window
are not read at all and the range predicate is pushed into the Parquet scan (row groups are
skipped on their statistics), so a folder sorted by ``seq_id`` (as the token shards are) costs
about one read of the data per worker and epoch; an in-memory ``Dataset`` is re-filtered for
every window (fine for tests and small data). A background thread reads ``prefetch`` windows
ahead, so memory is bounded by ``(prefetch + 1) * window / W`` sequences per worker (plus one
batch), never the whole dataset.

Resume: ``DataPosition`` (epoch, sequences of that epoch consumed by all workers together,
seed, world size, batch size, window, N) is global, so rank 0 alone saves it
(``state_dict()`` -> JSON in the checkpoint) and every rank restores it; the next batch is
global batch ``consumed // (B*W)`` of that epoch, exactly what an uninterrupted run would have
produced next. The world size, per-worker batch size, seed, window and N must be the ones the
position was saved with (``ValueError`` otherwise).

``TrainBatches.data_wait_s`` is the total time the training loop spent blocked in ``next()``
(``last_wait_s`` the latest one): near zero when the prefetching keeps up.

Batches are dicts of tensors: ``seq_id`` (int64 ``(B,)``), ``input_ids`` (int64 ``(B, L)``),
``labels`` (int64 ``(B, L)``, already shifted: ``labels[:, t]`` is the token after ``t`` in the
same document segment, -100 at the last token of every segment, so no loss crosses a document
boundary), ``position_ids`` (int64 ``(B, L)``, restarting at every segment), ``cu_seqlens``
(int32, the segment boundaries of the flattened ``B*L`` tokens, as ``flash_attn_varlen_func``
takes them) and ``max_seqlen`` (int).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

IGNORE_INDEX = -100
_POSITION_VERSION = 1


@dataclasses.dataclass(frozen=True)
class DataPosition:
    """Where a data-parallel run is in its global data order; the same on every rank."""

    epoch: int = 0
    consumed: int = 0
    """Sequences of ``epoch`` already consumed, all workers together (a multiple of the
    global batch size)."""
    seed: int = 0
    world_size: int = 1
    batch_size: int = 1
    """Sequences per worker and step."""
    window: int = 4096
    num_sequences: int = 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.num_sequences // self.global_batch_size

    @property
    def sequences_seen(self) -> int:
        """Sequences consumed since the start of training, all workers together."""
        return self.epoch * self.steps_per_epoch * self.global_batch_size + self.consumed

    def advance(self) -> DataPosition:
        """The position after one more global batch (rolling over to the next epoch)."""
        consumed = self.consumed + self.global_batch_size
        if consumed // self.global_batch_size >= self.steps_per_epoch:
            return dataclasses.replace(self, epoch=self.epoch + 1, consumed=0)
        return dataclasses.replace(self, consumed=consumed)

    def state_dict(self) -> dict[str, int]:
        return {"version": _POSITION_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataPosition:
        d = dict(d)
        version = d.pop("version", _POSITION_VERSION)
        if version != _POSITION_VERSION:
            raise ValueError(f"data position version {version} is not {_POSITION_VERSION}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"data position has unknown keys {sorted(unknown)}")
        return cls(**{k: int(v) for k, v in d.items()})

    def check_compatible(self, other: DataPosition) -> None:
        """Raise ``ValueError`` unless ``other`` (this run's settings) can resume ``self``."""
        for name, what in (
            ("world_size", "number of workers"),
            ("batch_size", "per-worker batch size"),
            ("seed", "data seed"),
            ("window", "shuffle window"),
            ("num_sequences", "number of sequences in the dataset"),
        ):
            saved, now = getattr(self, name), getattr(other, name)
            if saved != now:
                raise ValueError(
                    f"cannot resume the data position exactly: it was saved with {name}={saved} "
                    f"({what}) but this run has {name}={now}; exact resume needs the same {name}"
                )


def position_from_dict(d: dict[str, Any]) -> Any:
    """A saved data position: ``DataPosition``, or ``MixPosition`` for a mixed run."""
    if d.get("kind") == "mix":
        from raylm.data.mixed_loader import MixPosition

        return MixPosition.from_dict(d)
    return DataPosition.from_dict(d)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([k & 0xFFFFFFFF for k in key] + [len(key)]))


def window_order(num_sequences: int, window: int, seed: int, epoch: int) -> np.ndarray:
    """Indices of the windows in the order epoch ``epoch`` visits them."""
    n_windows = -(-num_sequences // window)
    return _rng(seed, epoch).permutation(n_windows)


def window_ids(num_sequences: int, window: int, seed: int, epoch: int, w: int) -> np.ndarray:
    """The seq_ids of window ``w`` in the order epoch ``epoch`` visits them."""
    lo, hi = w * window, min((w + 1) * window, num_sequences)
    return lo + _rng(seed, epoch, w, 1).permutation(hi - lo)


def global_order(num_sequences: int, window: int, seed: int, epoch: int) -> np.ndarray:
    """The whole epoch order (``O`` of the module docstring); for tests and small data only."""
    parts = [window_ids(num_sequences, window, seed, epoch, int(w))
             for w in window_order(num_sequences, window, seed, epoch)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


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


def _manifest_units(path: str) -> IdMap | None:
    """The IdMap of a token-shard folder from its manifest (None: no manifest or no units)."""
    import pyarrow.fs as pafs

    from raylm.data.shards import MANIFEST, UNIT_SHIFT, read_manifest

    fs, root = _open(path)
    if fs.get_file_info(f"{root.rstrip('/')}/{MANIFEST}").type != pafs.FileType.File:
        return None
    manifest = read_manifest(path)
    if "units" not in manifest:
        return None
    units = np.array([u for u, _ in manifest["units"]], np.int64)
    counts = np.array([c for _, c in manifest["units"]], np.int64)
    return IdMap(units, counts, int(manifest.get("unit_shift", UNIT_SHIFT)))


_COLUMNS = ["seq_id", "tokens", "cu_seqlens"]
_READ_TASK_BYTES = 64 << 20


class _RowGroup(NamedTuple):
    uri: str
    index: int
    lo: int | None  # seq_id statistics; None when the footer has none
    hi: int | None
    rows: int
    size: int


def _open(uri: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), uri)


def _parquet_row_groups(path: str) -> list[_RowGroup]:
    """Every row group of a Parquet folder (or file) with its seq_id range, from the footers.
    A token-shard folder's files are the ones its manifest lists (its ``val/`` split, which
    ``raylm prepare`` writes inside it, is not training data)."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from raylm.data.shards import MANIFEST, read_manifest

    fs, root = _open(path)
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
            out.append(_RowGroup(scheme + f, g, lo, hi, rg.num_rows, rg.total_byte_size))
    return out


def _read_row_groups(groups: list[_RowGroup], lo: int, hi: int) -> Iterator[Any]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for g in groups:
        fs, p = _open(g.uri)
        t = pq.ParquetFile(p, filesystem=fs).read_row_group(g.index, columns=_COLUMNS)
        sid = t.column("seq_id")
        yield t.filter(pc.and_(pc.greater_equal(sid, lo), pc.less(sid, hi)))


def _range_datasource(groups: list[_RowGroup], lo: int, hi: int):
    """A Ray Data datasource of the rows ``lo <= seq_id < hi`` of ``groups``: one read task
    per few row groups, nothing else opened (no file listing or sampling per window)."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class _SeqIdRange(Datasource):
        def estimate_inmemory_data_size(self) -> int:
            return sum(g.size for g in groups)

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
            chunks = [c.tolist() for c in np.array_split(np.arange(len(groups)), max(1, min(parallelism, len(groups))))]
            tasks = []
            for c in chunks:
                part = [groups[i] for i in c]
                meta = BlockMetadata(num_rows=None, size_bytes=sum(g.size for g in part), exec_stats=None,
                                     input_files=tuple(g.uri for g in part))
                tasks.append(ReadTask(lambda part=part: _read_row_groups(part, lo, hi), meta))
            return tasks

    return _SeqIdRange()


class _Source:
    """Reads one seq_id range of the packed data through Ray Data."""

    def __init__(self, data: Any) -> None:
        import ray.data

        self.groups: list[_RowGroup] | None = None
        self.ds = None
        self.ids: IdMap | None = None
        if isinstance(data, str):
            self.groups = _parquet_row_groups(data)
            self.ids = _manifest_units(data)
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

    def window(self, lo: int, hi: int):
        """The rows with ``lo <= seq_id < hi`` as a Dataset (None when no row group can hold any)."""
        import ray.data

        if self.ds is not None:
            from ray.data.expressions import col, lit

            return self.ds.filter(expr=(col("seq_id") >= lit(lo)) & (col("seq_id") < lit(hi)))
        groups = [g for g in self.groups if g.lo is None or (g.lo < hi and g.hi >= lo)]
        if not groups:
            return None
        # one read task per ~64 MiB: each task is a Ray task hop (~0.1 s on a small machine)
        tasks = min(len(groups), 1 + sum(g.size for g in groups) // _READ_TASK_BYTES)
        return ray.data.read_datasource(_range_datasource(groups, lo, hi), override_num_blocks=tasks)


def read_rows(source: _Source, id_map: IdMap, lo: int, hi: int, ids: np.ndarray, read_batch_size: int = 256,
              stop: threading.Event | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Rows of indices ``ids`` (all in ``[lo, hi)``) of ``source`` in that order: tokens ``(n, L)`` and
    cu_seqlens (``_Stopped`` when ``stop`` is set meanwhile)."""
    slot = np.full(hi - lo, -1, np.int64)
    slot[ids - lo] = np.arange(len(ids))
    tokens: np.ndarray | None = None
    cu: list[np.ndarray | None] = [None] * len(ids)
    found = 0
    ds = source.window(*id_map.seq_id_range(lo, hi))
    batches = [] if ds is None else ds.iter_batches(
        batch_size=read_batch_size, batch_format="pyarrow", prefetch_batches=2)
    for t in batches:
        if stop is not None and stop.is_set():
            raise _Stopped
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


class TrainBatches:
    """This worker's batches of the global order, from ``position`` on (see the module docstring).

    Iterate it (it ends after ``num_epochs`` epochs counted from 0, or never when None);
    ``position`` is the position after the last batch it yielded, to checkpoint after the
    optimiser step on that batch. Close it (or use it as a context manager) when breaking off
    early, to stop the read-ahead thread.
    """

    def __init__(
        self,
        data: Any,
        batch_size: int,
        world_rank: int,
        world_size: int,
        position: DataPosition | None = None,
        seed: int | None = None,
        prefetch: int = 1,
        *,
        window: int = 4096,
        num_sequences: int | None = None,
        num_epochs: int | None = None,
        read_batch_size: int = 256,
    ) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= world_rank < world_size:
            raise ValueError(f"bad batch_size={batch_size}, world_rank={world_rank}, world_size={world_size}")
        if window < 1 or prefetch < 0:
            raise ValueError(f"bad window={window} or prefetch={prefetch}")
        if position is not None and num_sequences is None:
            num_sequences = position.num_sequences
        if seed is None:  # the saved seed, or 0
            seed = position.seed if position is not None else 0
        self._source = _Source(data)
        if num_sequences is None:
            num_sequences = self._source.count()
        now = DataPosition(seed=seed, world_size=world_size, batch_size=batch_size, window=window,
                           num_sequences=num_sequences)
        if position is not None:
            position.check_compatible(now)
            if position.consumed % position.global_batch_size:
                raise ValueError(f"data position consumed={position.consumed} is not a multiple of "
                                 f"the global batch size {position.global_batch_size}")
        if now.steps_per_epoch < 1:
            raise ValueError(f"{num_sequences} sequences make no global batch of {now.global_batch_size}")
        self.position = position if position is not None else now
        self.ids = self._source.id_map(num_sequences)
        if self.ids.size != num_sequences:
            raise ValueError(f"num_sequences={num_sequences} but the data holds {self.ids.size}")
        self.rank = world_rank
        self.prefetch = prefetch
        self.num_epochs = num_epochs
        self.read_batch_size = read_batch_size
        self.data_wait_s = 0.0
        self.last_wait_s = 0.0
        self.batches = 0
        self._gen: Iterator[dict[str, Any]] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- iteration ---------------------------------------------------------------------------

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._gen is None:
            self._gen = self._batches()
        t0 = time.perf_counter()
        batch = next(self._gen)
        self.last_wait_s = time.perf_counter() - t0
        self.data_wait_s += self.last_wait_s
        self.batches += 1
        return batch

    def close(self) -> None:
        self._stop.set()
        if self._gen is not None:
            self._gen.close()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> TrainBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, float]:
        return {"data_wait_s": self.data_wait_s, "last_data_wait_s": self.last_wait_s,
                "data_batches": float(self.batches)}

    # -- planning ----------------------------------------------------------------------------

    def _plan(self) -> Iterator[tuple[int, int, int, np.ndarray]]:
        """``(epoch, lo, hi, ids)`` per window to read: ``ids`` are this rank's seq_ids of the
        window in order, from the start position on (windows without any are left out)."""
        p = self.position
        B, BW, N, S = p.batch_size, p.global_batch_size, p.num_sequences, p.window
        end = p.steps_per_epoch * BW  # positions past it are the skipped tail
        epoch, start = p.epoch, p.consumed
        while self.num_epochs is None or epoch < self.num_epochs:
            pos = 0
            for w in window_order(N, S, p.seed, epoch):
                lo, hi = int(w) * S, min((int(w) + 1) * S, N)
                n = hi - lo
                a, b = max(pos, start), min(pos + n, end)
                if a < b:
                    offs = np.arange(a, b)
                    mine = offs[(offs % BW) // B == self.rank]
                    if len(mine):
                        ids = window_ids(N, S, p.seed, epoch, int(w))[mine - pos]
                        yield epoch, lo, hi, ids
                pos += n
                if pos >= end:
                    break
            epoch, start = epoch + 1, 0

    def _read(self, lo: int, hi: int, ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        return read_rows(self._source, self.ids, lo, hi, ids, self.read_batch_size, self._stop)

    def _put(self, out: queue.Queue, item: Any) -> bool:
        """Queue ``item`` unless stopped first; False when stopped."""
        while not self._stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _reader(self, out: queue.Queue) -> None:
        try:
            for epoch, lo, hi, ids in self._plan():
                if not self._put(out, (epoch, self.ids.to_seq_id(ids), *self._read(lo, hi, ids))):
                    return
            self._put(out, None)
        except _Stopped:
            return
        except BaseException as e:  # handed to the consuming thread
            self._put(out, e)

    def _windows(self) -> Iterator[tuple[int, np.ndarray, np.ndarray, list[np.ndarray]]]:
        if self.prefetch == 0:
            for epoch, lo, hi, ids in self._plan():
                yield (epoch, self.ids.to_seq_id(ids), *self._read(lo, hi, ids))
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._reader, args=(q,), daemon=True, name="TrainBatches")
        self._thread.start()
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _batches(self) -> Iterator[dict[str, Any]]:
        B = self.position.batch_size
        pend_ids: list[np.ndarray] = []
        pend_tok: list[np.ndarray] = []
        pend_cu: list[np.ndarray] = []
        n_pend = 0
        epoch_of_pending = self.position.epoch
        try:
            for epoch, ids, tokens, cu in self._windows():
                if epoch != epoch_of_pending:
                    assert n_pend == 0, "a batch cannot span two epochs"
                    epoch_of_pending = epoch
                pend_ids.append(ids)
                pend_tok.append(tokens)
                pend_cu.extend(cu)
                n_pend += len(ids)
                while n_pend >= B:
                    all_ids = np.concatenate(pend_ids)
                    all_tok = np.concatenate(pend_tok)
                    batch = make_batch(all_ids[:B], all_tok[:B], pend_cu[:B])
                    pend_ids, pend_tok, pend_cu = [all_ids[B:]], [all_tok[B:]], pend_cu[B:]
                    n_pend -= B
                    self.position = self.position.advance()
                    yield batch
        finally:
            self._stop.set()


class _Stopped(Exception):
    pass


def make_batch(seq_ids: np.ndarray, tokens: np.ndarray, cu_seqlens: list[np.ndarray]) -> dict[str, Any]:
    """The torch batch of ``B`` packed sequences (see the module docstring)."""
    import torch

    B, L = tokens.shape
    flat_cu = np.unique(np.concatenate([np.asarray(c, np.int64) + i * L for i, c in enumerate(cu_seqlens)]))
    if flat_cu[0] != 0 or flat_cu[-1] != B * L or any(c[-1] != L or c[0] != 0 for c in cu_seqlens):
        raise ValueError(f"cu_seqlens must run from 0 to seq_len={L}")
    t = np.arange(B * L)
    seg = np.searchsorted(flat_cu, t, side="right") - 1
    position_ids = (t - flat_cu[seg]).reshape(B, L)
    labels = np.full(B * L, IGNORE_INDEX, np.int64)
    flat_tok = tokens.reshape(-1).astype(np.int64)
    labels[:-1] = flat_tok[1:]
    labels[flat_cu[1:] - 1] = IGNORE_INDEX
    return {
        "seq_id": torch.from_numpy(np.ascontiguousarray(seq_ids, dtype=np.int64)),
        "input_ids": torch.from_numpy(flat_tok.reshape(B, L)),
        "labels": torch.from_numpy(labels.reshape(B, L)),
        "position_ids": torch.from_numpy(position_ids),
        "cu_seqlens": torch.from_numpy(flat_cu.astype(np.int32)),
        "max_seqlen": int(np.diff(flat_cu).max()),
    }


def split_rows(batch: dict[str, Any], seq_len: int) -> dict[str, Any]:
    """``batch`` with every row of ``L`` tokens cut into ``L // seq_len`` rows of ``seq_len``
    (a length curriculum at a constant number of tokens per step). Each cut is a new segment
    boundary: its position ids restart and the token before it gets no label, as at a document
    boundary, so attention and loss never reach across it."""
    import torch

    B, L = batch["input_ids"].shape
    if seq_len == L:
        return batch
    if seq_len > L or L % seq_len:
        raise ValueError(f"seq_len {seq_len} of the length schedule must divide the stored seq_len {L}")
    cu = batch["cu_seqlens"].long()
    cuts = torch.arange(0, B * L + 1, seq_len, dtype=torch.long)
    flat_cu = torch.unique(torch.cat([cu, cuts]))
    t = torch.arange(B * L)
    seg = torch.searchsorted(flat_cu, t, right=True) - 1
    labels = batch["labels"].reshape(-1).clone()
    labels[flat_cu[1:] - 1] = IGNORE_INDEX
    n = B * L // seq_len
    return {
        **batch,
        "input_ids": batch["input_ids"].reshape(n, seq_len),
        "labels": labels.reshape(n, seq_len),
        "position_ids": (t - flat_cu[seg]).reshape(n, seq_len),
        "cu_seqlens": flat_cu.to(torch.int32),
        "max_seqlen": int(torch.diff(flat_cu).max()),
    }
