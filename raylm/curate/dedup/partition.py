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
    return ds.map_batches(_report_and_emit, batch_format="pyarrow", batch_size=ctx.batch_size,
                          fn_kwargs={"fn": fn, "step": step, "stats": ctx.stats if report else None},
                          **ctx.remote_args)


def by_shard(ds: Any, fn: Callable[..., pa.Table], ctx: Any, **kwargs: Any) -> Any:
    """``fn(rows_of_one_shard, **kwargs)`` for every shard of ``ds``, on the cluster."""
    return ds.groupby("shard", num_partitions=ctx.num_shards).map_groups(
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
