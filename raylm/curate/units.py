"""The row steps before the first dedup, run per read unit, their output kept for a resumed run.

Normalise, quality, langid and PII are most of a curate run's CPU time and need no other
document, so each read unit (``raylm.curate.split``) is read and run through them by one Ray
task, which writes the documents that come out under ``OUT/_work/files`` and marks the unit
done (``raylm.curate.workdir``). A run killed midway and started again redoes only the units
without a marker; a task retried after a lost node rewrites the same part names.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raylm.curate import read as R
from raylm.curate.runner import apply_step, ready
from raylm.curate.stats import Telemetry
from raylm.curate.steps import RowStep
from raylm.curate.workdir import WorkDir


def read_units(batch: pa.Table, cfg: R.ReadConfig):
    """map_batches (one row per unit): the unit's documents as read."""
    for unit in batch.column("unit").to_pylist():
        yield from R.read_unit(R.ReadUnit(**unit), cfg)


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
    done = []
    for d in batch.column("unit").to_pylist():
        unit = R.ReadUnit(**d)
        telemetry, parts, rows, writer = Telemetry(), [], 0, None
        for table in R.read_unit(unit, cfg):
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
        work.mark_unit_done(unit.name, parts, rows, telemetry.get())
        done.append(unit.name)
    return pa.table({"unit": pa.array(done, pa.string())})


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
        for _ in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            pass
    markers = work.done_units()
    missing = [u.name for u in units if u.name not in markers]
    if missing:
        raise RuntimeError(f"curate: read units {missing[:5]} finished without their marker in {work.root}")
    telemetry = Telemetry()
    for m in markers.values():
        telemetry.add_all(m["telemetry"])
    ray.get(stats.add_all.remote(telemetry.get()))
    return [p for u in units for p in markers[u.name]["parts"]], len(done)
