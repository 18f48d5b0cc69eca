"""Hash partitioning for the dedup shuffles, and the rows every dedup emits first.

A dedup step never brings rows to the driver: it gives each row a ``shard`` (a hash of the
value the next decision groups by, modulo the number of partitions) and lets Ray Data's
``groupby("shard").map_groups`` move equal values to one task, which then decides for all of
them at once with NumPy. Grouping by a hash of the value, rather than by the value itself,
keeps the number of groups (Python calls) at ``num_shards`` whatever the corpus size.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylm.curate import schema as S
from raylm.curate.minhash import fmix64
from raylm.curate.runner import live_mask

WHOLE_BLOCKS = None
"""``batch_size`` of the maps that turn documents into a few small rows each (bucket keys,
members' ids): one batch per block. Ray returns an object under 100 KB to its owner's heap
instead of the object store, and the owner of every block is the driver, so 1,000 documents'
worth of such rows per block would put the corpus's keys and ids in the driver's memory
(measured: 21 bytes per document). A whole block's rows are large enough to stay out."""

MIN_PIECE_BYTES = 1 << 20
"""Smallest average piece a sort shuffle may cut a block into (see ``coalesced``)."""

BUCKET_SCHEMA = pa.schema([("shard", pa.int32()), ("bucket", pa.uint64()), ("key", pa.int64())])


def shard_of(values: np.ndarray, num_shards: int) -> np.ndarray:
    """The partition of each value: a 64-bit mix of it, modulo ``num_shards`` (int32)."""
    with np.errstate(over="ignore"):
        return (fmix64(np.asarray(values).astype(np.uint64)) % np.uint64(num_shards)).astype(np.int32)


def bucket_rows(buckets: np.ndarray, keys: np.ndarray, num_shards: int) -> pa.Table:
    """``buckets`` (n, k) or (n,) uint64 and ``keys`` (n,) -> one BUCKET_SCHEMA row per
    (document, bucket), partitioned by bucket."""
    b = np.asarray(buckets, np.uint64).reshape(-1)
    k = np.repeat(keys, buckets.shape[1] if buckets.ndim == 2 else 1)
    return pa.Table.from_arrays([pa.array(shard_of(b, num_shards)), pa.array(b), pa.array(k, pa.int64())],
                                schema=BUCKET_SCHEMA)


def live_texts(batch: pa.Table) -> tuple[list[str], np.ndarray]:
    """Texts and ``_key`` of the live rows of a batch."""
    mask = live_mask(batch)
    live = batch.filter(mask) if pc.sum(mask).as_py() != batch.num_rows else batch
    return live.column(S.TEXT).to_pylist(), live.column(S.KEY).to_numpy()


def emit_buckets(ds: Any, ctx: Any, step: str, fn: Callable[[pa.Table], pa.Table], report: bool = True) -> Any:
    """``fn``'s BUCKET_SCHEMA rows for every batch of ``ds``; the batches' live documents and
    bytes count as the step's input in the run's telemetry (unless ``report`` is off)."""
    return ds.map_batches(_report_and_emit, batch_format="pyarrow", batch_size=WHOLE_BLOCKS,
                          fn_kwargs={"fn": fn, "step": step, "stats": ctx.stats if report else None},
                          **ctx.remote_args)


def coalesced(ds: Any, keys: int | None = None) -> Any:
    """``ds``, materialised, with adjacent blocks combined so that a sort shuffle cuts them into
    pieces of ``MIN_PIECE_BYTES`` or more on average. A sort makes as many partitions as there
    are blocks, and a block is cut into at most ``keys`` non-empty pieces when the sort key has
    ``keys`` values (None: unique keys).

    A sort shuffle cuts every block into one piece per partition, and each piece is a task's
    return value, owned by the driver: Ray keeps a return value under 100 KB in its owner's
    heap, not in the object store. Blocks of a few thousand 16-48 byte rows cut 8 ways put
    the shuffle's data in the driver's memory (measured: 21 bytes per document at 3M
    documents). The hash shuffle sends its pieces to aggregator actors and is left as it is."""
    from ray.data.context import DataContext, ShuffleStrategy

    if DataContext.get_current().shuffle_strategy == ShuffleStrategy.HASH_SHUFFLE:
        return ds
    ds = ds.materialize()
    blocks, size = ds.num_blocks(), ds.size_bytes() or 0
    want = size // ((keys or 1) * MIN_PIECE_BYTES)  # k blocks cut into `keys` pieces each ...
    if keys is None or want < keys:  # ... or into k pieces each: size / k**2 per piece
        want = int((size / MIN_PIECE_BYTES) ** 0.5)
    want = max(1, want)
    return ds.repartition(want) if want < blocks else ds


def by_shard(ds: Any, fn: Callable[..., pa.Table], ctx: Any, **kwargs: Any) -> Any:
    """``fn(rows_of_one_shard, **kwargs)`` for every shard of ``ds``, on the cluster."""
    return coalesced(ds, ctx.num_shards).groupby("shard", num_partitions=ctx.num_shards).map_groups(
        fn, batch_format="pyarrow", fn_kwargs=kwargs, **ctx.remote_args)


def _report_and_emit(batch: pa.Table, fn: Callable[[pa.Table], pa.Table], step: str, stats: Any) -> pa.Table:
    t0 = time.perf_counter()
    out = fn(batch)
    if stats is not None:
        import ray

        text = batch.column(S.TEXT).filter(live_mask(batch))
        ray.get(stats.add.remote(step, len(text), pc.sum(pc.binary_length(text)).as_py() or 0, {},
                                 time.perf_counter() - t0, {}))
    return out
