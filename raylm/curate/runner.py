"""Run a row step on a Ray Data batch: only live rows reach the step; drops are recorded.

This is the one adapter between the step contract (``steps/base.py``) and Ray Data: a
stateless step runs as a plain function in tasks, a step with ``needs_actor`` as a callable
class in an actor pool, where ``setup()`` runs once.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raylm.curate import schema as S
from raylm.curate.stats import Telemetry
from raylm.curate.steps.base import RowStep

_READY: dict[str, RowStep] = {}  # steps set up in this worker process, by ``step.token``


def live_mask(batch: pa.Table) -> pa.Array:
    return pc.is_null(batch.column(S.DROP_REASON))


def mark_dropped(table: pa.Table, step: str, reasons: list[str | None]) -> pa.Table:
    """Set ``_drop_step``/``_drop_reason`` where a reason is given."""
    steps = [step if r else None for r in reasons]
    table = table.set_column(table.schema.get_field_index(S.DROP_STEP), S.DROP_STEP, pa.array(steps, pa.string()))
    return table.set_column(table.schema.get_field_index(S.DROP_REASON), S.DROP_REASON, pa.array(reasons, pa.string()))


def concat(parts: list[pa.Table]) -> pa.Table:
    parts = [p for p in parts if p.num_rows] or parts[:1]
    return pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]


def apply_step(step: RowStep, batch: pa.Table, stats: Any = None) -> pa.Table:
    """Run ``step`` on the live rows of ``batch``; dead rows pass through untouched."""
    mask = live_mask(batch)
    n_live = pc.sum(mask).as_py() or 0
    if n_live == 0:
        return batch
    live = batch if n_live == batch.num_rows else batch.filter(mask)
    dead = None if n_live == batch.num_rows else batch.filter(pc.invert(mask))
    t0 = time.perf_counter()
    result = step.apply(live)
    seconds = time.perf_counter() - t0
    out = result.table
    if out.num_rows != live.num_rows:
        raise RuntimeError(f"step {step.name} returned {out.num_rows} rows for {live.num_rows}")
    dropped: Counter = Counter()
    if result.reasons is not None:
        dropped.update(r for r in result.reasons if r)
        if dropped:
            out = mark_dropped(out, step.name, result.reasons)
    if stats is not None:
        bytes_in = pc.sum(pc.binary_length(live.column(S.TEXT))).as_py() or 0
        row = (step.name, live.num_rows, bytes_in, dict(dropped), seconds, dict(result.counters))
        if isinstance(stats, Telemetry):
            stats.add(*row)
        else:
            import ray

            ray.get(stats.add.remote(*row))
    return out if dead is None else concat([out, dead])


def ready(step: RowStep) -> RowStep:
    """``step`` set up, once per worker process (a step with the same config set up earlier in
    this process is reused)."""
    token = getattr(step, "token", None) or f"{type(step).__name__}:{step.cfg!r}"
    done = _READY.get(token)
    if done is None:
        step.setup()
        if len(_READY) >= 32:  # long-lived workers see many runs; keep only recent steps
            _READY.pop(next(iter(_READY)))
        _READY[token] = done = step
    return done


def run_in_task(batch: pa.Table, step: RowStep, stats: Any = None) -> pa.Table:
    """map_batches function for stateless steps (setup once per worker process)."""
    return apply_step(ready(step), batch, stats)


class StepActor:
    """map_batches callable class for steps that load something heavy in ``setup()``."""

    def __init__(self, step: RowStep, stats: Any = None) -> None:
        self.step, self.stats = step, stats
        self.step.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return apply_step(self.step, batch, self.stats)
