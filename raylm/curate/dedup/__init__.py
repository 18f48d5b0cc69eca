"""Deduplication across the whole corpus, decided on the cluster: no document list on the driver.

Every dedup step is a few Ray Data shuffles, each grouped by a hash of the value it decides on
(``partition``), with NumPy doing the work inside each partition:

* exact: documents by content hash -> each bucket of two or more is a cluster;
* MinHash-LSH: documents by band key -> candidate pairs -> pairs by pair, their shared bands
  counted and verified (``pairs``) -> connected components by large-star / small-star rounds
  (``components``, Kiveris et al. 2014), until no edge changes;
* lines: units (lines or paragraphs) by hash -> the frequent ones and their holders.

A decision is written by the workers as Parquet sorted by document key (``keyed``), with
``duplicates.parquet`` (``clusters``); a last map over the documents reads, per batch, only the
decision's rows for its own keys and marks the drops (a sort-merge join by key). The driver
holds counters (pairs, rounds, clusters, removed), a per-size cluster count for the report and
the decision's row-group index; a rerun after a kill reuses every finished decision
(``OUT/_work/steps``).
"""

from raylm.curate.dedup.decide import cluster_dedup, mark_dropped
from raylm.curate.dedup.keyed import KeyedTable, write_keyed
from raylm.curate.dedup.partition import (
           BUCKET_SCHEMA,
           bucket_rows,
           by_shard,
           emit_buckets,
           live_texts,
           shard_of,
)

__all__ = ["BUCKET_SCHEMA", "KeyedTable", "bucket_rows", "by_shard", "cluster_dedup", "emit_buckets", "live_texts",
           "mark_dropped", "shard_of", "write_keyed"]
