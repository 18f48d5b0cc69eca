"""Boilerplate line removal across documents (Dolma's paragraph dedup, Soldaini et al. 2024).

A line (or paragraph) that occurs in at least ``min_docs`` documents is navigation, a
licence notice or a template: it is removed from every document but the first one that has
it (smallest ``_key``, as Dolma's streaming Bloom filter keeps the first occurrence). Units are
counted by a shuffle of their hashes (each hash partition counts its own); the holders of the
frequent ones are written sorted by document key, and the removal pass reads, per batch, only
its own documents' rows (``raylm.curate.dedup.keyed``). The driver sees one counter. A
document left with too little text is dropped as ``boilerplate``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylm.config import ConfigError
from raylm.curate import dedup
from raylm.curate import schema as S
from raylm.curate.runner import run_in_task
from raylm.curate.steps.base import DatasetStep, RowStep, StepConfig, StepResult, replace_text

_UNIT_SCHEMA = pa.schema([("key", pa.int64()), ("unit", pa.uint64()), ("first", pa.bool_())])


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
    """map_groups over one unit-hash partition: every holder ``(key, unit, first)`` of a unit
    held by at least ``min_docs`` documents; ``first`` marks the one that keeps it."""
    if table.num_rows == 0:
        return _UNIT_SCHEMA.empty_table()
    bucket, key = table.column("bucket").to_numpy(), table.column("key").to_numpy()
    order = np.lexsort((key, bucket))
    bucket, key = bucket[order], key[order]
    new = np.concatenate(([True], bucket[1:] != bucket[:-1]))
    starts = np.flatnonzero(new)
    group = np.cumsum(new) - 1
    hot = (np.diff(np.append(starts, len(bucket))) >= min_docs)[group]
    return pa.Table.from_arrays([pa.array(key[hot]), pa.array(bucket[hot]), pa.array(new[hot])], schema=_UNIT_SCHEMA)


class _RemoveUnits(RowStep):
    name = "line_dedup"

    def __init__(self, cfg: LineDedupConfig, units: dedup.KeyedTable) -> None:
        super().__init__(cfg)
        self.units = units

    def _to_remove(self, keys: np.ndarray) -> dict[int, set[int]]:
        """Per document key, the hashes of its units that another document keeps."""
        found = self.units.lookup(keys)
        if found is None:
            return {}
        found = found.filter(pc.invert(found.column("first")))
        out: dict[int, set[int]] = {}
        for k, u in zip(found.column("key").to_pylist(), found.column("unit").to_pylist()):
            out.setdefault(k, set()).add(u)
        return out

    def apply(self, batch: pa.Table) -> StepResult:
        cfg: LineDedupConfig = self.cfg
        sep = "\n\n" if cfg.unit == "paragraph" else "\n"
        drop = self._to_remove(batch.column(S.KEY).to_numpy())
        texts, reasons, removed = [], [], 0
        for text, key in zip(batch.column(S.TEXT).to_pylist(), batch.column(S.KEY).to_pylist()):
            gone = drop.get(key)
            if not gone:
                texts.append(text)
                reasons.append(None)
                continue
            units = _units(text, cfg.unit)
            keep = [u for u in units if len(u.strip()) < cfg.min_unit_chars or unit_hash(u) not in gone]
            removed += len(units) - len(keep)
            new = sep.join(keep).strip() if len(keep) < len(units) else text
            texts.append(new)
            reasons.append("boilerplate" if len(new) < cfg.min_keep_chars and new != text else None)
        return StepResult(replace_text(batch, texts), reasons, {"units_removed": removed})


class LineDedup(DatasetStep):
    name = "line_dedup"
    Config = LineDedupConfig

    def run(self, ds: Any, ctx: Any) -> Any:
        cfg: LineDedupConfig = self.cfg
        saved = ctx.load_decision(self.name)  # kept by an earlier, killed run of the same command
        if saved is None:
            ds = ds.materialize()
            num_shards = ctx.num_shards

            def emit(batch: pa.Table) -> pa.Table:
                return _emit(batch, cfg, num_shards)

            rows = dedup.emit_buckets(ds, ctx, self.name, emit, report=False)  # the removal pass reports
            units = dedup.write_keyed(dedup.by_shard(rows, frequent_units, ctx, min_docs=cfg.min_docs),
                                      f"{ctx.decision_dir()}/units", sum_columns=("first",))
            ctx.stats_add(self.name, counters={"frequent_units": units.sums.get("first", 0)})
            saved = {"units": units.to_dict()}
            ctx.save_decision(self.name, saved)
        step = _RemoveUnits(cfg, dedup.KeyedTable.from_dict(saved["units"]))
        step.token = uuid.uuid4().hex
        return ds.map_batches(run_in_task, fn_kwargs={"step": step, "stats": ctx.stats},
                              batch_format="pyarrow", batch_size=ctx.batch_size, **ctx.remote_args)
