"""Near-duplicate removal with MinHash + LSH (Broder 1997; Leskovec et al., MMDS ch. 3).

Signatures are datasketch's MinHash, computed for whole batches (``raylm.curate.minhash``).
LSH is tuned for recall: ``bands x rows`` with few rows makes documents well below the
threshold candidates, and a candidate pair is then *verified*: its Jaccard similarity is
estimated from the share of bands it shares (``P(band) = J ** rows``): a pair counts as a
duplicate when it shares at least as many bands as a pair exactly at the threshold does with
probability ``recall_at_threshold`` (a quantile of the binomial), so recall at and above the
threshold is held by construction while pairs far below it stay out. Plain banding at the threshold
loses pairs near it; clustering every candidate removes documents with no real partner;
candidates-for-recall plus verification avoids both.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pyarrow as pa

from raylm.config import ConfigError
from raylm.curate import dedup
from raylm.curate import minhash as mh
from raylm.curate.dedup.components import connected_components
from raylm.curate.dedup.pairs import candidate_pairs, verify_pairs
from raylm.curate.steps.base import DatasetStep, StepConfig

_CHUNK_CHARS = 1_000_000  # texts hashed per vectorised pass: arrays stay cache-sized (fastest measured)


@dataclasses.dataclass(kw_only=True)
class MinHashConfig(StepConfig):
    threshold: float = 0.8
    """Jaccard similarity of word n-gram sets above which documents are duplicates."""
    num_perm: int = 128
    """MinHash permutations (signature length)."""
    ngram: int = 5
    """Word n-gram size (lowercased, whitespace-split)."""
    char_ngram: int = 5
    """Character n-gram size for text written without spaces (Chinese, Japanese)."""
    bands: int | None = None
    """LSH bands; default ``num_perm // rows``."""
    rows: int | None = None
    """Rows per band; default 4 (candidates from about J=0.4 up, for recall)."""
    verify_threshold: float | None = None
    """Estimated Jaccard a candidate pair must reach. Default: set from ``recall_at_threshold``."""
    recall_at_threshold: float = 0.995
    """Chance that a pair exactly at ``threshold`` shares enough bands to pass verification:
    the shared-band count is Binomial(bands, threshold**rows), and the cut is its quantile."""
    seed: int = 1
    """Seed of datasketch's permutations."""
    all_pairs_upto: int = 16
    """Buckets up to this size emit all their pairs; larger ones a star on the first document."""
    max_rounds: int = 64
    """Most rounds of large-star / small-star for the connected components (a handful is
    typical; a run that needs more stops with an error rather than keep a wrong cluster)."""

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm < 2 or self.ngram < 1 or self.char_ngram < 1:
            raise ConfigError("num_perm must be >= 2 and ngram sizes >= 1")
        bands, rows = self.lsh()
        if bands < 1 or rows < 1 or bands * rows > self.num_perm:
            raise ConfigError(f"bands * rows = {bands} * {rows} must be <= num_perm = {self.num_perm}")
        if not 0.0 < self.recall_at_threshold < 1.0:
            raise ConfigError(f"recall_at_threshold must be in (0, 1), got {self.recall_at_threshold}")
        if self.max_rounds < 1:
            raise ConfigError(f"max_rounds must be >= 1, got {self.max_rounds}")

    def lsh(self) -> tuple[int, int]:
        rows = self.rows or mh.lsh_params(self.num_perm)[1]
        return self.bands or self.num_perm // rows, rows

    def min_shared_bands(self) -> int:
        """Bands a candidate pair must share to count as a duplicate."""
        bands, rows = self.lsh()
        if self.verify_threshold is not None:
            return max(1, int(np.ceil(bands * self.verify_threshold**rows - 1e-9)))
        return mh.min_shared_bands(self.threshold, bands, rows, self.recall_at_threshold)

    def verify(self) -> float:
        """The estimated Jaccard the cut corresponds to (for reports)."""
        bands, rows = self.lsh()
        return float(mh.band_similarity(np.array(self.min_shared_bands()), bands, rows))


def band_table(batch: pa.Table, cfg: MinHashConfig, num_shards: int) -> pa.Table:
    """Band keys of the live documents of a batch, as ``dedup.BUCKET_SCHEMA`` rows."""
    texts, keys = dedup.live_texts(batch)
    bands, rows = cfg.lsh()
    out = []
    start = 0
    while start < len(texts):
        end, size = start, 0
        while end < len(texts) and (end == start or size + len(texts[end]) <= _CHUNK_CHARS):
            size += len(texts[end])
            end += 1
        hv, doc = mh.shingle_hashes(texts[start:end], cfg.ngram, cfg.char_ngram)
        sig = mh.signatures(hv, doc, end - start, cfg.num_perm, cfg.seed)
        out.append(dedup.bucket_rows(mh.band_keys(sig, bands, rows), keys[start:end], num_shards))
        start = end
    return pa.concat_tables(out) if out else dedup.BUCKET_SCHEMA.empty_table()


class MinHashDedup(DatasetStep):
    name = "minhash_dedup"
    Config = MinHashConfig

    def run(self, ds: Any, ctx: Any) -> Any:
        from ray.data.expressions import col

        cfg: MinHashConfig = self.cfg
        num_shards = ctx.num_shards  # captured alone: the closure travels to every task

        def buckets(batch: pa.Table) -> pa.Table:
            return band_table(batch, cfg, num_shards)

        def find_members(docs: Any) -> tuple[Any, dict[str, int]]:
            rows = dedup.emit_buckets(docs, ctx, self.name, buckets)
            pairs = dedup.by_shard(rows, candidate_pairs, ctx, all_pairs_upto=cfg.all_pairs_upto, num_shards=num_shards)
            verified = dedup.by_shard(pairs, verify_pairs, ctx, min_count=cfg.min_shared_bands()).materialize()
            edges = verified.filter(expr=col("ok")).select_columns(["a", "b"]).materialize()
            counters = {"candidate_pairs": verified.count(), "duplicate_pairs": edges.count()}
            cc = connected_components(edges, ctx, max_rounds=cfg.max_rounds)
            counters.update(cc_rounds=cc.rounds, cc_converged=int(cc.converged))
            if not cc.converged:
                raise RuntimeError(f"{self.name}: connected components did not converge in {cc.rounds} rounds "
                                   f"(edges changed per round: {cc.changed_per_round}); raise max_rounds")
            return cc.roots, counters

        return dedup.cluster_dedup(ds, ctx, step=self.name, reason="near_duplicate", find_members=find_members)
