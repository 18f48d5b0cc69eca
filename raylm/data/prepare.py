"""``raylm prepare``: curated Parquet -> tokenised, (FIM-transformed,) packed token shards per source.

For every source the curated files are read with Ray Data, one read task per file (each row
keeps its file index ``_unit`` and row index ``_row``), tokenised by the ``Tokenize`` step in
an actor pool (the model loads once per actor), optionally FIM-transformed per document, and
packed and written by ``raylm.data.shards.write_token_shards`` under ``OUT/<source>/``.
The FIM generator of a document is seeded from ``(fim.seed, file index, row index)``, so the
output does not depend on how Ray batches the work. Mixing is not done here: training mixes
the per-source shard folders at read time (``raylm.data.mixing.Mixer``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from raylm.config import ConfigError, to_dict
from raylm.data.pipeline import RayConfig, ensure_ray
from raylm.data.read import InputError
from raylm.data.shards import ORDER_COLUMN, UNIT_COLUMN, write_token_shards
from raylm.data.sink import resolve
from raylm.data.steps.tokenize import Tokenize, TokenizeConfig
from raylm.data.transforms import FIMConfig, fim_transform

_SOURCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(kw_only=True)
class PrepareConfig:
    tokenizer: str = ""
    """Path of the SentencePiece ``.model`` file."""
    seq_len: int = 2048
    """Tokens per packed sequence."""
    sources: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """Source name -> curated inputs (curated output folders, their ``data/``, Parquet files)."""
    text_field: str = "text"
    """Column with the document text."""
    fim: FIMConfig | None = None
    """Fill-in-the-middle per document before packing; None: off."""
    add_bos: bool = False
    """Start every document with ``<bos>`` (documents always end with ``<eos>``)."""
    drop_tail: bool = True
    """Drop each file's last incomplete sequence (else pad it with ``<pad>``)."""
    batch_size: int = 1000
    """Documents per tokenise batch."""
    actor_pool_size: int = 2
    """Most tokeniser actors."""
    rows_per_shard: int = 10_000
    """Most sequences per shard file."""
    shuffle: Literal["sort", "hash"] = "sort"
    """Ray Data shuffle that groups each file's documents for packing (``shards.shuffle_strategy``)."""
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)

    def validate(self) -> None:
        if not self.tokenizer:
            raise ConfigError("tokenizer: the path of a SentencePiece .model file is required")
        if self.seq_len < 1:
            raise ConfigError(f"seq_len: {self.seq_len} must be at least 1")
        if not self.sources:
            raise ConfigError("sources: at least one source (name: [curated paths]) is required")
        for name, paths in self.sources.items():
            if not _SOURCE_RE.match(name):
                raise ConfigError(f"sources.{name}: a source name is letters, digits, '_', '.', '-'")
            if not paths:
                raise ConfigError(f"sources.{name}: no input paths")
        if not self.text_field:
            raise ConfigError("text_field: must not be empty")
        for name in ("batch_size", "actor_pool_size", "rows_per_shard"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: {getattr(self, name)} must be at least 1")
        if self.fim is not None:
            self.fim.validate()


def _read_file(batch: pa.Table, text_field: str, batch_rows: int):
    """map_batches (one row per file): the file's text with ``_unit`` and ``_row``."""
    import pyarrow.parquet as pq

    for path, unit in zip(batch.column("path").to_pylist(), batch.column("unit").to_pylist()):
        fs, p = resolve(path)
        with fs.open_input_file(p) as f:
            pf = pq.ParquetFile(f)
            if text_field not in pf.schema_arrow.names:
                raise InputError(f"{path}: no {text_field!r} column")
            row = 0
            for rb in pf.iter_batches(batch_size=batch_rows, columns=[text_field]):
                n = rb.num_rows
                yield pa.table({"text": rb.column(0).cast(pa.large_string()),
                                UNIT_COLUMN: pa.array(np.full(n, unit, np.int64)),
                                ORDER_COLUMN: pa.array(np.arange(row, row + n, dtype=np.int64))})
                row += n


class TokenizeFIM:
    """map_batches callable class: ``Tokenize.apply``, then FIM per document when configured."""

    def __init__(self, tok_cfg: TokenizeConfig, fim: FIMConfig | None) -> None:
        self.step = Tokenize(tok_cfg)
        self.step.setup()
        self.fim = fim

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = self.step.apply(batch).table
        tokens = out.column("tokens")
        if self.fim is not None:
            docs = tokens.to_numpy(zero_copy_only=False)
            units = out.column(UNIT_COLUMN).to_numpy()
            rows = out.column(ORDER_COLUMN).to_numpy()
            new = [fim_transform(np.asarray(d, np.int32), np.random.default_rng([self.fim.seed, int(u), int(r)]),
                                 self.fim) for d, u, r in zip(docs, units, rows)]
            tokens = pa.array(new, pa.list_(pa.int32()))
        return pa.table({"tokens": tokens, UNIT_COLUMN: out.column(UNIT_COLUMN),
                         ORDER_COLUMN: out.column(ORDER_COLUMN)})


def source_files(paths: list[str]) -> list[str]:
    """The Parquet files of a source's inputs, sorted (a curated folder stands for its data/)."""
    from raylm.data.tokenizer import TokenizerError, _sort_inputs

    try:
        parquet, jsonl = _sort_inputs(list(paths))
    except TokenizerError as exc:
        raise InputError(str(exc)) from None
    if jsonl:
        raise InputError(f"prepare reads curated Parquet, not JSONL: {jsonl[0]}")
    return sorted(parquet)


def _check_text_field(path: str, text_field: str) -> None:
    import pyarrow.parquet as pq

    fs, p = resolve(path)
    names = pq.read_schema(p, filesystem=fs).names
    if text_field not in names:
        raise InputError(f"{path}: no {text_field!r} column (columns: {', '.join(names)})")


def build_source_dataset(cfg: PrepareConfig, files: list[str]):
    """The lazy plan of one source: read per file -> tokenize (+FIM) in an actor pool."""
    import ray
    from ray.data import ActorPoolStrategy

    tok_cfg = TokenizeConfig(model=cfg.tokenizer, add_bos=cfg.add_bos, add_eos=True)
    ds = ray.data.from_items([{"path": p, "unit": i} for i, p in enumerate(files)],
                             override_num_blocks=max(1, len(files)))
    ds = ds.map_batches(_read_file, batch_size=1, batch_format="pyarrow",
                        fn_kwargs={"text_field": cfg.text_field, "batch_rows": cfg.batch_size}, **cfg.ray.remote_args)
    return ds.map_batches(TokenizeFIM, fn_constructor_args=(tok_cfg, cfg.fim), batch_format="pyarrow",
                          batch_size=cfg.batch_size,
                          compute=ActorPoolStrategy(min_size=1, max_size=cfg.actor_pool_size), **cfg.ray.remote_args)


def _partitions(num_files: int) -> int:
    import ray

    return max(1, min(num_files, 4 * int(ray.cluster_resources().get("CPU", 1))))


def prepare(cfg: PrepareConfig, out_dir: str, overwrite: bool = False) -> dict[str, Any]:
    """Write ``out_dir/<source>/`` token shards + manifest for every source, and
    ``out_dir/prepare.json``; returns the summary (sequences, tokens, waste per source)."""
    from raylm.data.tokenizer import tokenizer_hash

    cfg.validate()
    t0 = time.perf_counter()
    try:
        Tokenize.check_available(TokenizeConfig(model=cfg.tokenizer))
    except FileNotFoundError as exc:
        raise InputError(str(exc)) from None
    files = {name: source_files(paths) for name, paths in cfg.sources.items()}
    for paths in files.values():
        _check_text_field(paths[0], cfg.text_field)
    ensure_ray(cfg.ray)
    h = tokenizer_hash(cfg.tokenizer)
    out = out_dir.rstrip("/")
    summary: dict[str, Any] = {"tokenizer_hash": h, "seq_len": cfg.seq_len, "sources": {}}
    for name, paths in files.items():
        ds = build_source_dataset(cfg, paths)
        manifest = write_token_shards(
            ds, f"{out}/{name}", cfg.seq_len, source=name, tokenizer_hash=h, drop_tail=cfg.drop_tail,
            rows_per_shard=cfg.rows_per_shard, overwrite=overwrite, num_partitions=_partitions(len(paths)),
            shuffle=cfg.shuffle, remote_args=cfg.ray.remote_args,
            extra={"inputs": paths, "config": to_dict(cfg)})
        summary["sources"][name] = {
            k: manifest[k] for k in ("num_sequences", "num_tokens", "documents", "document_tokens",
                                     "dropped_tokens", "padded_tokens", "waste_fraction")}
        summary["sources"][name]["path"] = f"{out}/{name}"
    summary["num_tokens"] = sum(s["num_tokens"] for s in summary["sources"].values())
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    fs, root = resolve(out)
    with fs.open_output_stream(f"{root}/prepare.json") as f:
        f.write(json.dumps(summary, indent=2, ensure_ascii=False).encode("utf-8"))
    return summary
