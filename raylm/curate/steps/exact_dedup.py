"""Exact duplicate removal: documents whose normalised text hashes equal (first one kept)."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np
import pyarrow as pa

from raylm.curate import dedup
from raylm.curate.steps.base import DatasetStep, StepConfig


@dataclasses.dataclass(kw_only=True)
class ExactDedupConfig(StepConfig):
    lowercase: bool = False
    """Compare case-insensitively."""
    collapse_whitespace: bool = True
    """Compare with runs of whitespace folded to one space and the ends stripped."""


def text_hash(text: str, cfg: ExactDedupConfig) -> int:
    if cfg.collapse_whitespace:
        text = " ".join(text.split())
    if cfg.lowercase:
        text = text.lower()
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def bucket_roots(table: pa.Table) -> pa.Table:
    """map_groups over one hash partition: ``(key, root)`` for every document whose hash another
    document shares, ``root`` the smallest key with that hash."""
    bucket, key = table.column("bucket").to_numpy(), table.column("key").to_numpy()
    order = np.lexsort((key, bucket))
    bucket, key = bucket[order], key[order]
    new = np.concatenate(([True], bucket[1:] != bucket[:-1])) if len(bucket) else np.zeros(0, bool)
    starts = np.flatnonzero(new)
    group = np.cumsum(new) - 1
    sizes = np.diff(np.append(starts, len(key)))
    sel = sizes[group] >= 2
    return pa.table({"key": pa.array(key[sel], pa.int64()), "root": pa.array(key[starts][group][sel], pa.int64())})


class ExactDedup(DatasetStep):
    name = "exact_dedup"
    Config = ExactDedupConfig

    def run(self, ds: Any, ctx: Any) -> Any:
        cfg = self.cfg
        num_shards = ctx.num_shards  # captured alone: the closure travels to every task

        def buckets(batch: pa.Table) -> pa.Table:
            texts, keys = dedup.live_texts(batch)
            h = np.fromiter((text_hash(t, cfg) for t in texts), dtype=np.uint64, count=len(texts))
            return dedup.bucket_rows(h, keys, num_shards)

        def find_members(docs: Any) -> tuple[Any, dict[str, int]]:
            return dedup.by_shard(dedup.emit_buckets(docs, ctx, self.name, buckets), bucket_roots, ctx), {}

        return dedup.cluster_dedup(ds, ctx, step=self.name, reason="exact_duplicate", find_members=find_members)
