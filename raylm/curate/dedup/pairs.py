"""Candidate pairs from LSH buckets, and their verification by shared-band count.

Two shuffles, both grouped by a hash (``partition.shard_of``):

1. by bucket: the documents sharing a band key become candidate pairs (all pairs in a small
   bucket, a star on the smallest key in a large one, so 10,000 copies do not emit 50 million
   pairs); a pair found in several buckets of the same partition is counted there once with
   its multiplicity, and each pair row goes on to the partition of the pair;
2. by pair: the shared-band counts of a pair are summed and the pair is a duplicate when the
   sum reaches the step's cut (MinHash: the bands a pair exactly at the threshold shares with
   probability ``recall_at_threshold``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raylm.curate.dedup.partition import shard_of

PAIR_SCHEMA = pa.schema([("shard", pa.int32()), ("a", pa.int64()), ("b", pa.int64()), ("n", pa.int64())])
VERIFIED_SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("ok", pa.bool_())])


def _runs(bucket: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by (bucket, key), with each row's run (bucket) id, run starts and run sizes."""
    order = np.lexsort((key, bucket))
    bucket, key = bucket[order], key[order]
    new_run = np.concatenate(([True], bucket[1:] != bucket[:-1])) if len(bucket) else np.zeros(0, bool)
    run_id = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_size = np.diff(np.append(run_start, len(bucket)))
    return key, new_run, run_id, run_start, run_size


def pairs_in_buckets(bucket: np.ndarray, key: np.ndarray, all_pairs_upto: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(a, b)`` of keys that share a bucket (``a != b``; either order). Buckets of at
    most ``all_pairs_upto`` keys give all their pairs; larger ones a star on their smallest key
    (enough for clustering)."""
    if len(key) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    key, new_run, run_id, run_start, run_size = _runs(bucket, key)
    size = run_size[run_id]
    a_parts, b_parts = [], []
    big = size > all_pairs_upto
    if big.any():
        sel = big & ~new_run
        a_parts.append(key[run_start[run_id[sel]]])
        b_parts.append(key[sel])
    n = len(key)
    for d in range(1, min(all_pairs_upto, n)):
        i = np.arange(n - d)
        sel = (run_id[i] == run_id[i + d]) & ~big[i]
        if not sel.any():
            if d > 1 and not (size[~big] > d).any():
                break
            continue
        a_parts.append(key[i[sel]])
        b_parts.append(key[i[sel] + d])
    if not a_parts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    a, b = np.concatenate(a_parts), np.concatenate(b_parts)
    ok = a != b  # the same document twice in one bucket (a repeated band) is not a pair
    return a[ok], b[ok]


def count_pairs(a: np.ndarray, b: np.ndarray, n: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct pairs ``(lo, hi)`` (lo < hi) and the summed count of each (``n`` per row, 1 by default)."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    n = np.ones(len(lo), np.int64) if n is None else np.asarray(n, np.int64)
    if len(lo) == 0:
        return lo, hi, n
    order = np.lexsort((hi, lo))
    lo, hi, n = lo[order], hi[order], n[order]
    new = np.concatenate(([True], (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])))
    starts = np.flatnonzero(new)
    return lo[starts], hi[starts], np.add.reduceat(n, starts)


def candidate_pairs(table: pa.Table, all_pairs_upto: int, num_shards: int) -> pa.Table:
    """map_groups over one bucket partition: its candidate pairs with their counts there,
    each sent on to the partition of the pair."""
    a, b = pairs_in_buckets(table.column("bucket").to_numpy(), table.column("key").to_numpy(), all_pairs_upto)
    lo, hi, n = count_pairs(a, b)
    with np.errstate(over="ignore"):
        pair_hash = lo.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + hi.astype(np.uint64)
    return pa.Table.from_arrays([pa.array(shard_of(pair_hash, num_shards)), pa.array(lo), pa.array(hi), pa.array(n)],
                                schema=PAIR_SCHEMA)


def verify_pairs(table: pa.Table, min_count: int) -> pa.Table:
    """map_groups over one pair partition: every distinct pair, ``ok`` when its summed count
    reaches ``min_count``."""
    lo, hi, n = count_pairs(table.column("a").to_numpy(), table.column("b").to_numpy(), table.column("n").to_numpy())
    return pa.Table.from_arrays([pa.array(lo), pa.array(hi), pa.array(n >= min_count)], schema=VERIFIED_SCHEMA)
