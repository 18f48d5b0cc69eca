"""Boilerplate line removal across documents (Dolma's paragraph dedup, Soldaini et al. 2024).

A line (or paragraph) that occurs in at least ``min_docs`` documents is navigation, a
licence notice or a template: it is removed from every document but the first one that has
it (smallest ``_key``, as Dolma's streaming Bloom filter keeps the first occurrence). Counting
is a shuffle of line hashes across the cluster; only the frequent hashes come back to the
driver. A document left with too little text is dropped as ``boilerplate``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import ray

from raylm.config import ConfigError
from raylm.curate import dedup
from raylm.curate import schema as S
from raylm.curate.runner import run_in_task
from raylm.curate.steps.base import DatasetStep, RowStep, StepConfig, StepResult, replace_text

_FREQ_SCHEMA = pa.schema([("bucket", pa.uint64()), ("first", pa.int64())])


@dataclasses.dataclass(kw_only=True)
class LineDedupConfig(StepConfig):
    unit: Literal["line", "paragraph"] = "line"
    """Deduplicate lines, or paragraphs (blocks separated by a blank line)."""
    min_docs: int = 3
    """A unit found in at least this many documents is boilerplate."""
    min_unit_chars: int = 20
    """Shorter units (blank lines, '}', '1.') are never counted or removed."""
    min_keep_chars: int = 50
    """A document with fewer characters left is dropped as ``boilerplate``."""

    def validate(self) -> None:
        if self.min_docs < 2:
            raise ConfigError(f"min_docs must be >= 2, got {self.min_docs}")


def _units(text: str, unit: str) -> list[str]:
    return text.split("\n\n") if unit == "paragraph" else text.split("\n")


def unit_hash(u: str) -> int:
    return int.from_bytes(hashlib.blake2b(u.strip().encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _emit(batch: pa.Table, cfg: LineDedupConfig, num_shards: int) -> pa.Table:
    texts, keys = dedup.live_texts(batch)
    hashes, owners = [], []
    for text, key in zip(texts, keys):
        hs = {unit_hash(u) for u in _units(text, cfg.unit) if len(u.strip()) >= cfg.min_unit_chars}
        hashes.extend(hs)
        owners.extend([key] * len(hs))
    return dedup.bucket_rows(np.array(hashes, dtype=np.uint64), np.array(owners, dtype=np.int64), num_shards)


def frequent_units(table: pa.Table, min_docs: int) -> pa.Table:
    """Buckets (unit hashes) held by at least ``min_docs`` documents, with the first holder."""
    if table.num_rows == 0:
        return _FREQ_SCHEMA.empty_table()
    bucket, key = table.column("bucket").to_numpy(), table.column("key").to_numpy()
    order = np.lexsort((key, bucket))
    bucket, key = bucket[order], key[order]
    starts = np.flatnonzero(np.concatenate(([True], bucket[1:] != bucket[:-1])))
    counts = np.diff(np.append(starts, len(bucket)))
    hot = starts[counts >= min_docs]
    return pa.Table.from_arrays([pa.array(bucket[hot]), pa.array(key[hot])], schema=_FREQ_SCHEMA)


class _RemoveUnits(RowStep):
    name = "line_dedup"

    def __init__(self, cfg: LineDedupConfig, freq_ref: Any) -> None:
        super().__init__(cfg)
        self.freq_ref = freq_ref

    def setup(self) -> None:
        hashes, first = ray.get(self.freq_ref)
        self.first = dict(zip(hashes.tolist(), first.tolist()))

    def apply(self, batch: pa.Table) -> StepResult:
        cfg: LineDedupConfig = self.cfg
        sep = "\n\n" if cfg.unit == "paragraph" else "\n"
        texts, reasons, removed = [], [], 0
        for text, key in zip(batch.column(S.TEXT).to_pylist(), batch.column(S.KEY).to_pylist()):
            keep = []
            for u in _units(text, cfg.unit):
                if len(u.strip()) >= cfg.min_unit_chars and self.first.get(unit_hash(u), key) != key:
                    removed += 1
                else:
                    keep.append(u)
            new = sep.join(keep).strip() if len(keep) < len(_units(text, cfg.unit)) else text
            texts.append(new)
            reasons.append("boilerplate" if len(new) < cfg.min_keep_chars and new != text else None)
        return StepResult(replace_text(batch, texts), reasons, {"units_removed": removed})


class LineDedup(DatasetStep):
    name = "line_dedup"
    Config = LineDedupConfig

    def run(self, ds: Any, ctx: Any) -> Any:
        cfg: LineDedupConfig = self.cfg
        decision = ctx.load_decision(self.name)  # kept by an earlier, killed run of the same command
        if decision is None:
            ds = ds.materialize()
            num_shards = ctx.num_shards

            def emit(batch: pa.Table) -> pa.Table:
                return _emit(batch, cfg, num_shards)

            freq = dedup.shuffle_buckets(ds, ctx, self.name, emit, frequent_units, {"min_docs": cfg.min_docs},
                                         report=False)  # the removal pass below reports this step
            decision = {"frequent": pa.Table.from_arrays(
                [pa.array(freq.get("bucket", np.empty(0, np.uint64))), pa.array(freq.get("first", np.empty(0, np.int64)))],
                schema=_FREQ_SCHEMA)}
            ctx.stats_add(self.name, counters={"frequent_units": decision["frequent"].num_rows})
            ctx.save_decision(self.name, decision)
        hashes = decision["frequent"].column("bucket").to_numpy()
        first = decision["frequent"].column("first").to_numpy()
        step = _RemoveUnits(cfg, ray.put((hashes, first)))
        step.token = uuid.uuid4().hex
        return ds.map_batches(run_in_task, fn_kwargs={"step": step, "stats": ctx.stats},
                              batch_format="pyarrow", batch_size=ctx.batch_size, **ctx.remote_args)
