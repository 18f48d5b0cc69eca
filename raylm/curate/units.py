"""The row steps before the first dedup, run per read unit, their output kept for a resumed run.

Normalise, quality, langid and PII are most of a curate run's CPU time and need no other
document, so each read unit (``raylm.curate.split``) is read and run through them by one Ray
task, which writes the documents that come out under ``OUT/_work/files`` and marks the unit
done (``raylm.curate.workdir``). A run killed midway and started again redoes only the units
without a marker; a task retried after a lost node rewrites the same part names. The driver
shows the units as they finish (``raylm.console``: documents/s and MB/s read).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raylm import console
from raylm.curate import read as R
from raylm.curate.runner import apply_step, ready
from raylm.curate.stats import Telemetry
from raylm.curate.steps import RowStep
from raylm.curate.workdir import WorkDir


def read_units(batch: pa.Table, cfg: R.ReadConfig, stats: Any):
    """map_batches (one row per unit): the unit's documents as read; how many, once the unit is
    read whole, into the run's ``stats`` actor (per unit: a retried read sets it again)."""
    import ray

    for d in batch.column("unit").to_pylist():
        unit, n = R.ReadUnit(**d), 0
        for table in R.read_unit(unit, cfg):
            n += table.num_rows
            yield table
        ray.get(stats.set_read.remote({unit.name: n}))


def read_parts(batch: pa.Table, out: str, batch_rows: int):
    """map_batches (one row per part): the documents of a finished unit, as kept."""
    work = WorkDir(out)
    for name in batch.column("part").to_pylist():
        with work.fs.open_input_file(work.part_path(name)) as f:
            for rb in pq.ParquetFile(f).iter_batches(batch_size=batch_rows):
                yield pa.Table.from_batches([rb])


def _curate_unit(batch: pa.Table, cfg: R.ReadConfig, steps: list[RowStep], out: str, batch_size: int) -> pa.Table:
    """map_batches (one row per unit): read the unit, run the row steps on it batch by batch,
    write what comes out under ``OUT/_work/files`` and mark the unit done."""
    work = WorkDir(out)
    steps = [ready(step) for step in steps]
    done, docs, size = [], [], []
    for d in batch.column("unit").to_pylist():
        unit = R.ReadUnit(**d)
        telemetry, parts, rows, read, writer = Telemetry(), [], 0, 0, None
        for table in R.read_unit(unit, cfg):
            read += table.num_rows
            for start in range(0, table.num_rows, batch_size):
                chunk = table.slice(start, batch_size)
                for step in steps:
                    chunk = apply_step(step, chunk, telemetry)
                if writer is None or not chunk.schema.equals(writer.schema):  # a new column: a new part
                    if writer is not None:
                        writer.close()
                    parts.append(work.part_name(unit.name, len(parts)))
                    writer = pq.ParquetWriter(work.part_path(parts[-1]), chunk.schema, filesystem=work.fs)
                writer.write_table(chunk)
                rows += chunk.num_rows
        if writer is not None:
            writer.close()
        work.mark_unit_done(unit.name, parts, rows, telemetry.get(), read)
        done.append(unit.name)
        first = telemetry.get().get(steps[0].name, {}) if steps else {}  # what was read: for progress
        docs.append(first.get("docs_in", 0))
        size.append(first.get("bytes_in", 0))
    return pa.table({"unit": pa.array(done, pa.string()), "docs": pa.array(docs, pa.int64()),
                     "bytes": pa.array(size, pa.int64())})


def curate_units(units: list[R.ReadUnit], read_cfg: R.ReadConfig, steps: list[RowStep], out: str, stats: Any,
                 batch_size: int, remote_args: dict[str, Any], quiet: bool = False) -> tuple[list[str], int]:
    """Run the row ``steps`` on every unit not yet done; returns the part files of all units in
    input order, and how many units were done before this run."""
    import ray

    work = WorkDir(out)
    done = work.done_units()
    work.clear_unfinished(done)
    pending = [{"unit": u.to_dict()} for u in units if u.name not in done]
    if done and not quiet:
        print(f"resuming {out}: {len(done)} of {len(units)} read units already curated, {len(pending)} to go")
    if pending:
        ds = ray.data.from_items(pending, override_num_blocks=len(pending))
        ds = ds.map_batches(_curate_unit, batch_size=1, batch_format="pyarrow",
                            fn_kwargs={"cfg": read_cfg, "steps": steps, "out": out, "batch_size": batch_size},
                            **remote_args)
        names = ", ".join(step.name for step in steps)
        with console.stage("curate", total=len(pending), unit="unit") as progress:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                progress.advance(batch.num_rows, docs=pc.sum(batch["docs"]).as_py() or 0,
                                 bytes=pc.sum(batch["bytes"]).as_py() or 0)
            progress.done(f"{progress.counts.get('docs', 0):.0f} docs in {len(pending)} read "
                          f"unit{'s' * (len(pending) > 1)}: {names}")
    markers = work.done_units()
    missing = [u.name for u in units if u.name not in markers]
    if missing:
        raise RuntimeError(f"curate: read units {missing[:5]} finished without their marker in {work.root}")
    telemetry = Telemetry()
    for m in markers.values():
        telemetry.add_all(m["telemetry"])
    ray.get(stats.add_all.remote(telemetry.get()))
    ray.get(stats.set_read.remote({name: m.get("read", m["rows"]) for name, m in markers.items()}))
    return [p for u in units for p in markers[u.name]["parts"]], len(done)
