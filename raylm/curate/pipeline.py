"""``raylm curate``: read -> steps -> Parquet, on Ray Data, streaming.

The config lists steps in the order they run. The row steps before the first dedup step run
per input file, one Ray Data task per file, whose output is kept under ``OUT/_work``
(``raylm.curate.workdir``): a run killed midway and started again with the same command redoes
only the files that were not finished. Dedup steps see the whole corpus: each materialises
what came before it, finds duplicates on the cluster and marks them, and its decision is kept
too. Row steps after a dedup step become ``map_batches`` operators. Dropped documents ride
along untouched to the sink, which writes ``data/`` and ``rejected/`` and counts both
exactly, so ``stats.json`` can state ``documents_in == kept + sum(dropped)`` for every run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raylm import storage
from raylm.cluster import RayConfig, ensure_ray
from raylm.config import ConfigError, from_dict, to_dict
from raylm.curate import read as R
from raylm.curate.runner import StepActor, apply_step, ready, run_in_task
from raylm.curate.sink import CurateSink
from raylm.curate.stats import StatsActor, Telemetry, build_stats, merge_sink_results, summary_table
from raylm.curate.steps import REGISTRY, RowStep, StepConfig, step_class
from raylm.curate.workdir import WorkDir, fingerprint
from raylm.storage import filesystem

# The default pipeline follows FineWeb's recipe for C4's rules: documents are judged by them,
# but lines without terminal punctuation are not cut (that rule guts code, lists and tables).
# langid runs before quality, which judges each document by its language's words and thresholds.
DEFAULT_STEPS: list[Any] = [
    "normalize", "langid", {"quality": {"c4": {"filter_no_terminal_punct": False}}}, "pii",
    "exact_dedup", "line_dedup", "minhash_dedup",
]


@dataclasses.dataclass(kw_only=True)
class CurateConfig(R.ReadConfig):
    steps: list[Any] = dataclasses.field(default_factory=lambda: list(DEFAULT_STEPS))
    """Steps in run order: a name, or a one-key mapping ``{name: {option: value}}``."""
    write_rejected: bool = True
    """Write dropped documents with their reason under ``OUT/rejected/``."""
    report: bool = True
    """Write ``OUT/report.html`` with plots of lengths, languages, duplicates and drops."""
    batch_size: int = 1000
    """Documents per batch handed to a step."""
    num_shards: int = 0
    """Partitions of the dedup shuffles; 0 = 4 x the cluster's CPUs."""
    actor_pool_size: int = 2
    """Most actors for a step that loads a model (langid)."""
    rows_per_file: int = 50_000
    """Rows per output Parquet file (at least)."""
    shuffle: Literal["sort", "hash"] = "sort"
    """Ray Data shuffle for the dedup groupbys: task-based sort shuffle (starts fast) or the
    actor-based hash shuffle (better on large clusters)."""
    reserve_per_operator: bool = False
    """Ray Data's per-operator resource reservation; worth it on large clusters, it serialises
    the stages on a node with few CPUs."""
    keep_work: bool = False
    """Keep ``OUT/_work`` (the per-file outputs and dedup decisions a rerun resumes from) after
    the run has finished; by default it is deleted once ``stats.json`` is written."""
    storage_endpoint: str | None = None
    """Endpoint of an S3-compatible store (``http://minio:9000``) for ``s3://`` inputs and
    output; None: AWS S3 (or ``AWS_ENDPOINT_URL`` if set). It reaches the Ray workers too."""
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)

    def validate(self) -> None:
        self.parsed_steps()
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.storage_endpoint and not self.storage_endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"storage_endpoint: {self.storage_endpoint!r} must be an http:// or https:// URL")

    def parsed_steps(self) -> list[tuple[str, StepConfig]]:
        out = []
        for i, item in enumerate(self.steps):
            if isinstance(item, str):
                name, options = item, {}
            elif isinstance(item, dict) and len(item) == 1:
                name, options = next(iter(item.items()))
                options = options or {}
            else:
                raise ConfigError(f"steps[{i}]: expected a step name or a one-key mapping, got {item!r}")
            if name not in REGISTRY:
                raise ConfigError(f"steps[{i}]: unknown step {name!r} (known: {', '.join(REGISTRY)})")
            out.append((name, from_dict(step_class(name).Config, options, f"steps[{i}].{name}")))
        return out


class RunContext:
    """What a dataset step needs from the run: sizes, the stats actor, output collectors, and
    the work folder where its decision is kept for a resumed run."""

    def __init__(self, batch_size: int, num_shards: int, stats: Any,
                 remote_args: dict[str, Any] | None = None, work: WorkDir | None = None) -> None:
        self.batch_size, self.num_shards, self.stats = batch_size, num_shards, stats
        self.remote_args = remote_args or {}
        self.work = work
        self.step_key = ""
        """``<position>-<name>`` of the dataset step running now (set by ``build_dataset``)."""
        self.reused: list[str] = []
        self.duplicates: list[pa.Table] = []
        self.cluster_sizes: list[np.ndarray] = []

    def add_duplicates(self, table: pa.Table, cluster_sizes: np.ndarray) -> None:
        self.duplicates.append(table)
        self.cluster_sizes.append(cluster_sizes)

    def stats_add(self, step: str, seconds: float = 0.0, counters: dict[str, int] | None = None) -> None:
        import ray

        ray.get(self.stats.add.remote(step, 0, 0, {}, seconds, counters or {}))

    def load_decision(self, step: str) -> dict[str, pa.Table] | None:
        """The current dataset step's decision from an earlier, killed run of the same command;
        its telemetry is counted again. None: the step must decide now."""
        saved = self.work.load_decision(self.step_key) if self.work else None
        if saved is None:
            return None
        import ray

        tables, telemetry = saved
        ray.get(self.stats.add.remote(step, **telemetry))
        self.reused.append(self.step_key)
        return tables

    def save_decision(self, step: str, tables: dict[str, pa.Table]) -> None:
        """Keep the current dataset step's decision (and its telemetry so far) for a rerun."""
        if self.work is None:
            return
        import ray

        telemetry = ray.get(self.stats.get.remote()).get(
            step, {"docs_in": 0, "bytes_in": 0, "dropped": {}, "seconds": 0.0, "counters": {}})
        self.work.save_decision(self.step_key, tables, telemetry)


def _read_batch(batch: pa.Table, cfg: R.ReadConfig):
    for path, index in zip(batch.column("path").to_pylist(), batch.column("index").to_pylist()):
        yield from R.read_file(path, index, cfg)


def _read_parts(batch: pa.Table, out: str, batch_rows: int):
    """map_batches (one row per part): the documents of a finished input file, as kept."""
    work = WorkDir(out)
    for name in batch.column("part").to_pylist():
        with work.fs.open_input_file(work.part_path(name)) as f:
            for rb in pq.ParquetFile(f).iter_batches(batch_size=batch_rows):
                yield pa.Table.from_batches([rb])


def _curate_file(batch: pa.Table, cfg: R.ReadConfig, steps: list[RowStep], out: str, batch_size: int) -> pa.Table:
    """map_batches (one row per input file): read the file, run the row steps on it batch by
    batch, write what comes out under ``OUT/_work/files`` and mark the file done."""
    work = WorkDir(out)
    steps = [ready(step) for step in steps]
    done = []
    for path, index in zip(batch.column("path").to_pylist(), batch.column("index").to_pylist()):
        telemetry, parts, rows, writer = Telemetry(), [], 0, None
        for table in R.read_file(path, index, cfg):
            for start in range(0, table.num_rows, batch_size):
                chunk = table.slice(start, batch_size)
                for step in steps:
                    chunk = apply_step(step, chunk, telemetry)
                if writer is None or not chunk.schema.equals(writer.schema):  # a new column: a new part
                    if writer is not None:
                        writer.close()
                    parts.append(work.part_name(index, len(parts)))
                    writer = pq.ParquetWriter(work.part_path(parts[-1]), chunk.schema, filesystem=work.fs)
                writer.write_table(chunk)
                rows += chunk.num_rows
        if writer is not None:
            writer.close()
        work.mark_file_done(index, parts, rows, telemetry.get())
        done.append(index)
    return pa.table({"index": pa.array(done, pa.int64())})


def curate_files(cfg: CurateConfig, files: list[str], steps: list[RowStep], out: str, stats: Any,
                 quiet: bool = False) -> tuple[dict[int, dict[str, Any]], int]:
    """Run the per-file row ``steps`` on every input file not yet done; returns every file's
    marker (``WorkDir.done_files``) and how many were done before this run."""
    import ray

    work = WorkDir(out)
    done = work.done_files()
    work.clear_unfinished(done)
    pending = [{"path": p, "index": i} for i, p in enumerate(files) if i not in done]
    if done and not quiet:
        print(f"resuming {out}: {len(done)} of {len(files)} input files already curated, {len(pending)} to go")
    if pending:
        read_cfg = R.ReadConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(R.ReadConfig)})
        ds = ray.data.from_items(pending, override_num_blocks=len(pending))
        ds = ds.map_batches(_curate_file, batch_size=1, batch_format="pyarrow",
                            fn_kwargs={"cfg": read_cfg, "steps": steps, "out": out, "batch_size": cfg.batch_size},
                            **cfg.ray.remote_args)
        for _ in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            pass
    markers = work.done_files()
    missing = sorted(set(range(len(files))) - set(markers))
    if missing:
        raise RuntimeError(f"curate: input files {missing[:5]} finished without their marker in {work.root}")
    telemetry = Telemetry()
    for m in markers.values():
        telemetry.add_all(m["telemetry"])
    ray.get(stats.add_all.remote(telemetry.get()))
    return markers, len(done)


def _finished(fs: pafs.FileSystem, root: str) -> bool:
    return fs.get_file_info(f"{root}/stats.json").type == pafs.FileType.File


def prepare_output(out: str, overwrite: bool, print_: dict[str, Any]) -> bool:
    """Make ``out`` ready for a run with fingerprint ``print_``; True when it resumes an
    unfinished run of the same command (its ``_work`` is kept, its partial outputs go)."""
    fs, root = filesystem(out)
    info = fs.get_file_info(root)
    work = WorkDir(out)
    if info.type == pafs.FileType.File:
        raise R.InputError(f"{out}: exists and is a file")
    if info.type == pafs.FileType.Directory:
        entries = fs.get_file_info(pafs.FileSelector(root))
        resumable = work.exists() and not _finished(fs, root)
        if entries and not overwrite and not resumable:
            raise R.InputError(f"{out}: output directory is not empty (pass --overwrite to replace it)")
        if overwrite:
            work.remove()
        elif resumable:
            work.start(print_, out)  # raises here, before anything is deleted, if the run differs
        for sub in ("data", "rejected", "duplicates.parquet", "stats.json", "report.html", "plots"):
            target = fs.get_file_info(f"{root}/{sub}")
            if target.type == pafs.FileType.Directory:
                fs.delete_dir(f"{root}/{sub}")
            elif target.type == pafs.FileType.File:
                fs.delete_file(f"{root}/{sub}")
    fs.create_dir(root, recursive=True)
    return work.start(print_, out)


def split_steps(steps: list[tuple[str, StepConfig]]) -> tuple[list[RowStep], list[tuple[str, StepConfig]]]:
    """The row steps before the first dataset step (built) and the rest of the list."""
    head: list[RowStep] = []
    for i, (name, step_cfg) in enumerate(steps):
        step = step_class(name)(step_cfg)
        if not isinstance(step, RowStep):
            return head, steps[i:]
        head.append(step)
    return head, []


def build_dataset(cfg: CurateConfig, files: list[str], stats: Any, ctx: RunContext,
                  markers: dict[int, dict[str, Any]] | None = None):
    """The lazy Ray Data plan: every input file read (or, with ``markers``, the per-file
    output of the leading row steps), then each remaining step in order."""
    import ray
    from ray.data import ActorPoolStrategy
    from ray.data.context import DataContext, ShuffleStrategy

    data_ctx = DataContext.get_current()
    data_ctx.shuffle_strategy = (
        ShuffleStrategy.SORT_SHUFFLE_PULL_BASED if cfg.shuffle == "sort" else ShuffleStrategy.HASH_SHUFFLE)
    # Reserving a share of CPUs per operator serialises a small node: measured on 2 cores, the
    # read stage ran one task at a time with it and two without it.
    data_ctx.op_resource_reservation_enabled = cfg.reserve_per_operator

    remote = cfg.ray.remote_args
    steps = cfg.parsed_steps()
    if markers is None:
        read_cfg = R.ReadConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(R.ReadConfig)})
        ds = ray.data.from_items([{"path": p, "index": i} for i, p in enumerate(files)],
                                 override_num_blocks=max(1, len(files)))
        ds = ds.map_batches(_read_batch, batch_size=1, batch_format="pyarrow", fn_kwargs={"cfg": read_cfg}, **remote)
        first = 0
    else:
        parts = [{"part": p} for _, m in sorted(markers.items()) for p in m["parts"]]
        ds = ray.data.from_items(parts, override_num_blocks=max(1, len(parts)))
        ds = ds.map_batches(_read_parts, batch_size=1, batch_format="pyarrow",
                            fn_kwargs={"out": ctx.work.out, "batch_rows": cfg.batch_size}, **remote)
        first = len(split_steps(steps)[0])
    for position, (name, step_cfg) in enumerate(steps[first:], start=first):
        step = step_class(name)(step_cfg)
        if not isinstance(step, RowStep):
            ctx.step_key = f"{position:02d}-{name}"
            ds = step.run(ds, ctx)
        elif step.needs_actor:
            ds = ds.map_batches(StepActor, fn_constructor_args=(step, stats), batch_format="pyarrow",
                                batch_size=cfg.batch_size,
                                compute=ActorPoolStrategy(min_size=1, max_size=cfg.actor_pool_size), **remote)
        else:
            ds = ds.map_batches(run_in_task, fn_kwargs={"step": step, "stats": stats},
                                batch_format="pyarrow", batch_size=cfg.batch_size, **remote)
    return ds


def run(cfg: CurateConfig, inputs: list[str], out: str, overwrite: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Curate ``inputs`` into ``out``; returns the stats written to ``out/stats.json``. Run
    again after a kill, the same command resumes: only unfinished work is redone."""
    import ray

    had = os.environ.get(storage.ENDPOINT_ENV)  # a Ray job's runtime_env may set it already
    env = storage.use_endpoint(cfg.storage_endpoint)  # before anything lists or reads s3://
    if had == cfg.storage_endpoint:
        env = {}  # the workers have it, and Ray refuses to merge a variable the job's runtime_env sets
    files = R.expand_inputs(inputs)
    for name, step_cfg in cfg.parsed_steps():  # heavy dependencies are checked before any work
        check = getattr(step_class(name), "check_available", None)
        if check is not None:
            check(step_cfg)
    resumed = prepare_output(out, overwrite, fingerprint(to_dict(cfg), files))
    ensure_ray(cfg.ray, env)
    t0 = time.perf_counter()
    input_bytes = sum(_size(p) for p in files)
    stats = StatsActor.remote()
    num_shards = cfg.num_shards or 4 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    work = WorkDir(out)
    ctx = RunContext(cfg.batch_size, num_shards, stats, cfg.ray.remote_args, work)
    head, _ = split_steps(cfg.parsed_steps())
    markers, files_before = None, 0
    if head:
        markers, files_before = curate_files(cfg, files, head, out, stats, quiet)
    ds = build_dataset(cfg, files, stats, ctx, markers)
    sink = CurateSink(out, cfg.write_rejected, cfg.rows_per_file)
    ds.write_datasink(sink)
    seconds = time.perf_counter() - t0
    telemetry = ray.get(stats.get.remote())
    ray.kill(stats)
    names = [name for name, _ in cfg.parsed_steps()]
    result = build_stats(names, merge_sink_results(sink.results), telemetry, seconds, input_bytes)
    result["inputs"] = files
    result["resume"] = {"resumed": resumed, "files_done_before": files_before,
                        "files_curated": len(files) - files_before if head else 0, "steps_reused": ctx.reused}
    result["config"] = to_dict(cfg)
    fs, root = filesystem(out)
    dups = pa.concat_tables(ctx.duplicates) if ctx.duplicates else pa.table(
        {"step": pa.array([], pa.string()), "removed_id": pa.array([], pa.string()),
         "kept_id": pa.array([], pa.string()), "cluster": pa.array([], pa.int64())})
    pq.write_table(dups, f"{root}/duplicates.parquet", filesystem=fs)
    if cfg.report:
        from raylm.curate.report import write_report

        sizes = np.concatenate(ctx.cluster_sizes) if ctx.cluster_sizes else np.empty(0, np.int64)
        write_report(out, result, sizes)
    with fs.open_output_stream(f"{root}/stats.json") as f:  # last: its presence means finished
        f.write(json.dumps(result, indent=2, ensure_ascii=False).encode())
    if not cfg.keep_work:
        work.remove()
    if not quiet:
        print(summary_table(result))
    return result


def _size(path: str) -> int:
    fs, p = filesystem(path)
    return fs.get_file_info(p).size or 0
