"""Deduplication across the whole corpus, on the cluster: buckets -> pairs -> clusters -> drops.

Every dedup step (exact, MinHash-LSH) follows the same four moves:

1. a map over live documents emits ``(shard, bucket, key)`` rows: the bucket is a content hash
   (exact dedup) or an LSH band key (MinHash), ``key`` the document's ``_key``;
2. Ray Data ``groupby("shard").map_groups`` brings equal buckets together on some node, where
   a vectorised pass emits one ``(a, b)`` row per pair of documents sharing a bucket (all
   pairs in small buckets, a star on the smallest key in large ones);
3. the driver counts, per pair, how many buckets it shared and keeps the pairs that pass the
   step's verification (MinHash: Jaccard estimated from the share of bands), then resolves
   clusters with connected components (min-label propagation with pointer jumping);
4. in each cluster the document read first (smallest ``_key``) is kept; a map marks the
   others dropped and ``duplicates.parquet`` records (removed id, kept id, cluster).

Only hashes, keys and pairs leave the workers; documents stay where Ray Data put them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from raylm.curate import schema as S
from raylm.curate.runner import live_mask

log = logging.getLogger(__name__)

BUCKET_SCHEMA = pa.schema([("shard", pa.int32()), ("bucket", pa.uint64()), ("key", pa.int64())])
PAIR_SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64())])


def bucket_rows(buckets: np.ndarray, keys: np.ndarray, num_shards: int) -> pa.Table:
    """``buckets`` (n, k) uint64 and ``keys`` (n,) -> one row per (document, bucket)."""
    b = buckets.reshape(-1)
    k = np.repeat(keys, buckets.shape[1] if buckets.ndim == 2 else 1)
    shard = (b % np.uint64(num_shards)).astype(np.int32)
    return pa.Table.from_arrays([pa.array(shard), pa.array(b), pa.array(k)], schema=BUCKET_SCHEMA)


def bucket_pairs(table: pa.Table, all_pairs_upto: int = 16) -> pa.Table:
    """Pairs of keys that share a bucket. Buckets of at most ``all_pairs_upto`` documents
    give all their pairs; larger ones a star on their smallest key (enough for clustering,
    and it keeps a bucket of 10,000 copies from emitting 50 million pairs)."""
    if table.num_rows < 2:
        return PAIR_SCHEMA.empty_table()
    bucket = table.column("bucket").to_numpy()
    key = table.column("key").to_numpy()
    order = np.lexsort((key, bucket))
    bucket, key = bucket[order], key[order]
    new_run = np.concatenate(([True], bucket[1:] != bucket[:-1]))
    run_id = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_size = np.diff(np.append(run_start, len(bucket)))[run_id]
    # the same document twice in one bucket (a repeated band) is not a pair
    a_parts, b_parts = [], []
    big = run_size > all_pairs_upto
    if big.any():
        sel = big & ~new_run
        a_parts.append(key[run_start[run_id[sel]]])
        b_parts.append(key[sel])
    n = len(key)
    for d in range(1, min(all_pairs_upto, n)):
        i = np.arange(n - d)
        sel = (run_id[i] == run_id[i + d]) & ~big[i]
        if not sel.any():
            if d > 1 and not (run_size[~big] > d).any():
                break
            continue
        a_parts.append(key[i[sel]])
        b_parts.append(key[i[sel] + d])
    if not a_parts:
        return PAIR_SCHEMA.empty_table()
    a, b = np.concatenate(a_parts), np.concatenate(b_parts)
    ok = a != b
    return pa.Table.from_arrays([pa.array(a[ok]), pa.array(b[ok])], schema=PAIR_SCHEMA)


def count_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (a, b) pairs (a < b) and how many rows named each."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((hi, lo))
    lo, hi = lo[order], hi[order]
    if len(lo) == 0:
        return lo, hi, np.empty(0, np.int64)
    new = np.concatenate(([True], (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])))
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, len(lo)))
    return lo[starts], hi[starts], counts


def connected_components(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (sorted keys) and, for each, the smallest key of its component."""
    if len(a) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    ea, eb = inv[: len(a)], inv[len(a):]
    label = np.arange(len(nodes))
    while True:
        m = np.minimum(label[ea], label[eb])
        new = label.copy()
        np.minimum.at(new, ea, m)
        np.minimum.at(new, eb, m)
        while True:  # pointer jumping: follow labels to their root
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, label):
            break
        label = new
    return nodes, nodes[label]


def mark_keys(batch: pa.Table, keys_ref: Any, step: str, reason: str) -> pa.Table:
    """map_batches function: drop live rows whose ``_key`` is in the broadcast sorted array."""
    removed = ray.get(keys_ref) if isinstance(keys_ref, ray.ObjectRef) else keys_ref
    if len(removed) == 0 or batch.num_rows == 0:
        return batch
    hit = np.isin(batch.column(S.KEY).to_numpy(), removed) & live_mask(batch).to_numpy(zero_copy_only=False)
    if not hit.any():
        return batch
    reasons = [reason if h else r for h, r in zip(hit, batch.column(S.DROP_REASON).to_pylist())]
    steps = [step if h else s for h, s in zip(hit, batch.column(S.DROP_STEP).to_pylist())]
    batch = batch.set_column(batch.schema.get_field_index(S.DROP_STEP), S.DROP_STEP, pa.array(steps, pa.string()))
    return batch.set_column(batch.schema.get_field_index(S.DROP_REASON), S.DROP_REASON, pa.array(reasons, pa.string()))


def _select_ids(batch: pa.Table, keys_ref: Any) -> pa.Table:
    wanted = ray.get(keys_ref) if isinstance(keys_ref, ray.ObjectRef) else keys_ref
    hit = np.isin(batch.column(S.KEY).to_numpy(), wanted)
    return batch.select([S.KEY, S.ID]).filter(pa.array(hit))


def shuffle_buckets(ds: "ray.data.Dataset", ctx: Any, step: str, emit: Callable[[pa.Table], pa.Table],
                    reduce: Callable[..., pa.Table], reduce_kwargs: dict[str, Any],
                    report: bool = True) -> dict[str, np.ndarray]:
    """``emit`` BUCKET_SCHEMA rows per batch, group them by shard across the cluster, run
    ``reduce`` on each shard, and gather its (small) output columns on the driver."""
    buckets = ds.map_batches(_report_and_bucket, batch_format="pyarrow", batch_size=ctx.batch_size,
                             fn_kwargs={"fn": emit, "step": step, "stats": ctx.stats if report else None},
                             **ctx.remote_args)
    reduced = buckets.groupby("shard", num_partitions=ctx.num_shards).map_groups(
        reduce, batch_format="pyarrow", fn_kwargs=reduce_kwargs, **ctx.remote_args)
    parts: dict[str, list[np.ndarray]] = {}
    for batch in reduced.iter_batches(batch_format="pyarrow", batch_size=None):
        for name in batch.column_names:
            parts.setdefault(name, []).append(batch.column(name).to_numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def dedup(ds: "ray.data.Dataset", *, step: str, reason: str, ctx: Any,
          buckets_fn: Callable[[pa.Table], pa.Table],
          accept: Callable[[np.ndarray], np.ndarray] | None = None,
          all_pairs_upto: int = 16) -> "ray.data.Dataset":
    """Run the four moves above; ``buckets_fn`` maps a batch to BUCKET_SCHEMA rows of its
    live documents and ``accept(counts)`` says which pairs (by shared-bucket count) are
    duplicates (default: every pair). The decision (removed keys, duplicate pairs) is kept in
    the run's work folder, so a rerun after a kill marks the same documents without
    recomputing it."""
    decision = ctx.load_decision(step)
    if decision is None:
        ds = ds.materialize()  # upstream steps run here; the dedup is timed from now on
        decision = _decide(ds, step, ctx, buckets_fn, accept, all_pairs_upto)
        ctx.save_decision(step, decision)
    sizes = decision["cluster_sizes"].column("size").to_numpy()
    ctx.add_duplicates(decision["duplicates"], cluster_sizes=sizes)
    keys_ref = ray.put(np.sort(decision["removed"].column("key").to_numpy()))
    return ds.map_batches(mark_keys, batch_format="pyarrow", batch_size=ctx.batch_size,
                          fn_kwargs={"keys_ref": keys_ref, "step": step, "reason": reason}, **ctx.remote_args)


def _decide(ds: "ray.data.Dataset", step: str, ctx: Any, buckets_fn: Callable[[pa.Table], pa.Table],
            accept: Callable[[np.ndarray], np.ndarray] | None, all_pairs_upto: int) -> dict[str, pa.Table]:
    """Moves 1-3 and the (removed id, kept id, cluster) table, as the tables kept on disk."""
    t0 = time.perf_counter()
    pairs = shuffle_buckets(ds, ctx, step, buckets_fn, bucket_pairs, {"all_pairs_upto": all_pairs_upto})
    a, b = pairs.get("a", np.empty(0, np.int64)), pairs.get("b", np.empty(0, np.int64))
    t_pairs = time.perf_counter()
    lo, hi, counts = count_pairs(a, b)
    if accept is not None and len(counts):
        ok = accept(counts)
        lo, hi = lo[ok], hi[ok]
    nodes, root = connected_components(lo, hi)
    removed = nodes[nodes != root]
    t_cc = time.perf_counter()
    ids: dict[int, str] = {}
    if len(nodes):
        ref = ray.put(nodes)
        for t in ds.map_batches(_select_ids, batch_format="pyarrow", fn_kwargs={"keys_ref": ref},
                                  **ctx.remote_args).iter_batches(
                batch_format="pyarrow", batch_size=None):
            ids.update(zip(t.column(S.KEY).to_pylist(), t.column(S.ID).to_pylist()))
    sel = nodes != root
    cluster_of = {r: i for i, r in enumerate(np.unique(root))}
    duplicates = pa.table({
        "step": pa.array([step] * int(sel.sum()), pa.string()),
        "removed_id": pa.array([ids.get(int(k)) for k in nodes[sel]], pa.string()),
        "kept_id": pa.array([ids.get(int(k)) for k in root[sel]], pa.string()),
        "cluster": pa.array([cluster_of[r] for r in root[sel]], pa.int64()),
    })
    sizes = np.bincount(np.searchsorted(np.unique(root), root)) if len(root) else np.empty(0, np.int64)
    t_ids = time.perf_counter()
    log.info("%s: buckets and pairs %.1fs (%d pair rows), clusters %.1fs, ids %.1fs", step,
             t_pairs - t0, len(a), t_cc - t_pairs, t_ids - t_cc)
    ctx.stats_add(step, seconds=time.perf_counter() - t0,
                  counters={"candidate_pairs": int(len(counts)), "duplicate_pairs": int(len(lo)),
                            "clusters": int(len(cluster_of))})
    return {"removed": pa.table({"key": pa.array(removed, pa.int64())}), "duplicates": duplicates,
            "cluster_sizes": pa.table({"size": pa.array(sizes.astype(np.int64))})}


def _report_and_bucket(batch: pa.Table, fn: Callable[[pa.Table], pa.Table], step: str, stats: Any) -> pa.Table:
    t0 = time.perf_counter()
    out = fn(batch)
    mask = live_mask(batch)
    text = batch.column(S.TEXT).filter(mask)
    if stats is not None:
        ray.get(stats.add.remote(step, len(text), pc.sum(pc.binary_length(text)).as_py() or 0, {},
                                 time.perf_counter() - t0, {}))
    return out


def live_texts(batch: pa.Table) -> tuple[list[str], np.ndarray]:
    """Texts and ``_key`` of the live rows of a batch."""
    mask = live_mask(batch)
    live = batch.filter(mask) if pc.sum(mask).as_py() != batch.num_rows else batch
    return live.column(S.TEXT).to_pylist(), live.column(S.KEY).to_numpy()
