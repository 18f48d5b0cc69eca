"""A cluster dedup step end to end: decide on the cluster, keep the decision, mark the drops.

``cluster_dedup`` runs the moves every cluster dedup shares; a step (exact, MinHash) gives
only ``find_members``, which turns the documents into a Dataset of ``(key, root)`` rows: every
document in a cluster of two or more and the cluster's root, its smallest key (the document
read first), which is the one kept. Then, all on the cluster:

1. the members are sorted by key and written as a ``KeyedTable`` (the decision, under
   ``OUT/_work/steps/<n>-<step>/members``, so a rerun after a kill reuses it);
2. ``duplicates.parquet`` rows (removed id, kept id, cluster, size) are written next to it;
3. a map over the documents reads, per batch, the decision's rows for its keys and marks the
   members that are not their root as dropped.

The driver keeps the decision's row-group index and counters, never a document list.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylm.curate import schema as S
from raylm.curate.dedup.clusters import write_duplicates
from raylm.curate.dedup.keyed import KeyedTable, write_keyed
from raylm.curate.runner import live_mask

MEMBERS = "members"
DUPLICATES = "duplicates"


def mark_dropped(batch: pa.Table, hit: np.ndarray, step: str, reason: str) -> pa.Table:
    """``batch`` with the rows in ``hit`` marked dropped by ``step`` for ``reason``."""
    mask = pa.array(hit)
    for name, value in ((S.DROP_STEP, step), (S.DROP_REASON, reason)):
        col = pc.if_else(mask, pa.scalar(value, pa.string()), batch.column(name).cast(pa.string()))
        batch = batch.set_column(batch.schema.get_field_index(name), name, col)
    return batch


def mark_members(batch: pa.Table, table: KeyedTable, step: str, reason: str) -> pa.Table:
    """map_batches: drop the live documents that the decision names and are not their root."""
    if batch.num_rows == 0:
        return batch
    keys = batch.column(S.KEY).to_numpy()
    live = live_mask(batch).to_numpy(zero_copy_only=False)
    found = table.lookup(keys[live])
    if found is None or found.num_rows == 0:
        return batch
    key, root = found.column("key").to_numpy(), found.column("root").to_numpy()
    hit = np.isin(keys, key[key != root]) & live
    return mark_dropped(batch, hit, step, reason) if hit.any() else batch


def cluster_dedup(ds: Any, ctx: Any, *, step: str, reason: str,
                  find_members: Callable[[Any], tuple[Any, dict[str, int]]]) -> Any:
    """Decide (or reuse a kept decision), then return ``ds`` with the duplicates marked."""
    saved = ctx.load_decision(step)
    folder = ctx.decision_dir()
    if saved is None:
        ds = ds.materialize()  # upstream steps run here; the dedup is timed from now on
        t0 = time.perf_counter()
        roots, counters = find_members(ds)
        members = write_keyed(roots, f"{folder}/{MEMBERS}", unique=True)
        dups = write_duplicates(ds, members, ctx, step, f"{folder}/{DUPLICATES}")
        counters = {**counters, "removed": dups.removed, "clusters": sum(dups.cluster_sizes.values())}
        ctx.stats_add(step, seconds=time.perf_counter() - t0, counters=counters)
        saved = {"members": members.to_dict(), "cluster_sizes": {str(k): v for k, v in dups.cluster_sizes.items()}}
        ctx.save_decision(step, saved)
    members = KeyedTable.from_dict(saved["members"])
    ctx.add_duplicates(f"{folder}/{DUPLICATES}", {int(k): int(v) for k, v in saved["cluster_sizes"].items()})
    return ds.map_batches(mark_members, batch_format="pyarrow", batch_size=ctx.batch_size,
                          fn_kwargs={"table": members, "step": step, "reason": reason}, **ctx.remote_args)
