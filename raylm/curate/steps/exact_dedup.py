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

        return dedup.dedup(ds, step=self.name, reason="exact_duplicate", ctx=ctx, buckets_fn=buckets,
                           all_pairs_upto=0)
