"""``raylm curate``: read -> steps -> Parquet, on Ray Data, streaming.

The config lists steps in the order they run. The inputs are cut into read units (a file, or
a byte range / row-group run of a big one: ``raylm.curate.split``). The row steps before the
first dedup step run per unit, one Ray Data task each, whose output is kept under
``OUT/_work`` (``raylm.curate.units``): a run killed midway and started again with the same
command redoes only the units that were not finished. Dedup steps see the whole corpus: each
materialises what came before it, decides on the cluster (``raylm.curate.dedup``) and marks
the drops, and its decision is kept too. Row steps after a dedup step become ``map_batches`` operators. Dropped documents ride
along untouched to the sink, which writes ``data/`` and ``rejected/`` and counts both
exactly, so ``stats.json`` can state ``documents_in == kept + sum(dropped)`` for every run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Literal

import pyarrow.fs as pafs

from raylm import console, storage
from raylm.cluster import RayConfig, ensure_ray
from raylm.config import ConfigError, from_dict, to_dict
from raylm.curate import read as R
from raylm.curate.context import RunContext
from raylm.curate.dedup.clusters import publish_duplicates
from raylm.curate.runner import StepActor, run_in_task
from raylm.curate.sink import CurateSink
from raylm.curate.split import plan_units
from raylm.curate.stats import build_stats, merge_sink_results, stats_actor, summary_table
from raylm.curate.steps import REGISTRY, RowStep, StepConfig, step_class
from raylm.curate.units import curate_units, read_parts, read_units
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


def read_config(cfg: CurateConfig) -> R.ReadConfig:
    return R.ReadConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(R.ReadConfig)})


def build_dataset(cfg: CurateConfig, units: list[R.ReadUnit], stats: Any, ctx: RunContext,
                  parts: list[str] | None = None):
    """The lazy Ray Data plan: every read unit read (or, with ``parts``, the kept output of the
    leading row steps), then each remaining step in order."""
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
    if parts is None:
        ds = ray.data.from_items([{"unit": u.to_dict()} for u in units], override_num_blocks=max(1, len(units)))
        ds = ds.map_batches(read_units, batch_size=1, batch_format="pyarrow",
                            fn_kwargs={"cfg": read_config(cfg), "stats": stats}, **remote)
        first = 0
    else:
        ds = ray.data.from_items([{"part": p} for p in parts], override_num_blocks=max(1, len(parts)))
        ds = ds.map_batches(read_parts, batch_size=1, batch_format="pyarrow",
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
    stats = stats_actor()
    num_shards = cfg.num_shards or 4 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    work = WorkDir(out)
    ctx = RunContext(cfg.batch_size, num_shards, stats, cfg.ray.remote_args, work)
    units = plan_units(files, cfg.split_bytes, cfg.ray.remote_args)
    head, _ = split_steps(cfg.parsed_steps())
    parts, units_before = None, 0
    if head:
        parts, units_before = curate_units(units, read_config(cfg), head, out, stats, cfg.batch_size,
                                           cfg.ray.remote_args, quiet)
    sink = CurateSink(out, cfg.write_rejected, cfg.rows_per_file)
    rest = [name for name, _ in cfg.parsed_steps()[len(head):]]
    with console.stage("dedup" if any("dedup" in n for n in rest) else "curate") as progress:
        ds = build_dataset(cfg, units, stats, ctx, parts)
        ds.write_datasink(sink)
        progress.done(f"{', '.join(rest + ['write'])}: {sum(r['kept'] for r in sink.results)} kept")
    seconds = time.perf_counter() - t0
    telemetry, records_read = ray.get([stats.get.remote(), stats.records_read.remote()])
    ray.kill(stats)
    names = [name for name, _ in cfg.parsed_steps()]
    result = build_stats(names, merge_sink_results(sink.results), telemetry, seconds, input_bytes, records_read)
    result["inputs"] = files
    result["resume"] = {"resumed": resumed, "units": len(units), "units_done_before": units_before,
                        "units_curated": len(units) - units_before if head else 0, "steps_reused": ctx.reused}
    result["config"] = to_dict(cfg)
    fs, root = filesystem(out)
    publish_duplicates(ctx.duplicates, out)
    if cfg.report:
        from raylm.curate.report import write_report

        write_report(out, result, ctx.cluster_sizes)
    with fs.open_output_stream(f"{root}/stats.json.tmp") as f:  # last, whole: its presence means finished
        f.write(json.dumps(result, indent=2, ensure_ascii=False).encode())
    fs.move(f"{root}/stats.json.tmp", f"{root}/stats.json")
    if not cfg.keep_work:
        work.remove()
    if not quiet:
        print(summary_table(result))
    return result


def _size(path: str) -> int:
    fs, p = filesystem(path)
    return fs.get_file_info(p).size or 0
