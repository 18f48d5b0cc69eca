"""``raylm prepare``: curated Parquet -> tokenised, (FIM-transformed,) packed token shards per source.

For every source the curated files are read with Ray Data, one read task per file (each row
keeps its file index ``_unit`` and row index ``_row``), tokenised by the ``Tokenize`` step in
an actor pool (the model loads once per actor), optionally FIM-transformed per document, and
packed and written by ``raylm.data.shards.write_token_shards`` under ``OUT/<source>/``.
The FIM generator of a document is seeded from ``(fim.seed, file index, row index)``, so the
output does not depend on how Ray batches the work. Mixing is not done here: training mixes
the per-source shard folders at read time (``raylm.data.mixing.Mixer``).

Held-out split (``val``): a document is held out when a keyed hash of its text (blake2b,
salted with ``val.seed``) falls below ``val.fraction``, so the split depends on nothing but
the document itself: not on Ray's batching, the file it is in or the other documents, and a
duplicate of a held-out document is held out too. Held-out documents go, through the same
tokenise/FIM/pack path, to ``OUT/<source>/val/`` with their own manifest, never into the
training shards; the training manifest names that folder (``"val": "val"``) and the loader
reads a shard folder's manifest's files only, so the nested split is never trained on. The
held-out shards record each segment's language (the curated ``lang_field`` column, "" where
there is none) and, with FIM, which tokens are FIM middles (``fim_middle``), and pad each
file's last sequence instead of dropping it, so no held-out document is lost; evaluation
(``raylm.infer.evaluate``) leaves the padding out.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from raylm.cluster import RayConfig, ensure_ray
from raylm.config import ConfigError, to_dict
from raylm.data.corpus import sort_inputs, uniform
from raylm.data.encode import Tokenize, TokenizeConfig
from raylm.data.shards import ORDER_COLUMN, UNIT_COLUMN, write_token_shards
from raylm.data.transforms import FIMConfig, fim_transform_middle
from raylm.storage import InputError, filesystem

_SOURCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
VAL_DIR = "val"
"""The held-out split's folder inside a source's shard folder."""
LANG_COLUMN = "lang"
"""The language column the tokenise step carries for held-out shards."""
MIDDLE_COLUMN = "fim_middle"
"""Held-out shards with FIM: 1 at every token of a FIM middle (and the eos after it)."""
Split = Literal["all", "train", "val"]


@dataclasses.dataclass(kw_only=True)
class HeldOutConfig:
    fraction: float = 0.01
    """Fraction of every source's documents held out for validation (by a hash of the text)."""
    seed: int = 0
    """Salt of the hash: another seed holds out another (independent) set of documents."""

    def validate(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ConfigError(f"fraction: {self.fraction} must be between 0 and 1 (exclusive)")


def held_out(texts: list[str | None], cfg: HeldOutConfig) -> np.ndarray:
    """Which documents of ``texts`` are held out (bool array): a function of each text alone."""
    return uniform([t or "" for t in texts], cfg.seed) < cfg.fraction


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
    val: HeldOutConfig | None = None
    """Hold out a fraction of every source's documents as ``OUT/<source>/val/``; None: off."""
    lang_field: str = "lang"
    """Column with each document's language (``langid`` adds it), recorded per segment in the
    held-out shards; documents of files without it count as language ""."""
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
        if self.val is not None:
            self.val.validate()


def _read_file(batch: pa.Table, text_field: str, batch_rows: int, split: Split = "all",
               val: HeldOutConfig | None = None, lang_field: str = "lang"):
    """map_batches (one row per file): the file's text with ``_unit`` and ``_row`` (the row in
    the file), only the documents of ``split``; for "val" also their language."""
    import pyarrow.parquet as pq

    for path, unit in zip(batch.column("path").to_pylist(), batch.column("unit").to_pylist()):
        fs, p = filesystem(path)
        with fs.open_input_file(p) as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            if text_field not in names:
                raise InputError(f"{path}: no {text_field!r} column")
            with_lang = split == "val" and lang_field in names and lang_field != text_field
            row = 0
            for rb in pf.iter_batches(batch_size=batch_rows, columns=[text_field] + ([lang_field] if with_lang else [])):
                n = rb.num_rows
                table = pa.table({"text": rb.column(0).cast(pa.large_string()),
                                  UNIT_COLUMN: pa.array(np.full(n, unit, np.int64)),
                                  ORDER_COLUMN: pa.array(np.arange(row, row + n, dtype=np.int64))})
                if split == "val":
                    langs = rb.column(1).cast(pa.string()) if with_lang else pa.array([""] * n, pa.string())
                    table = table.append_column(LANG_COLUMN, langs)
                if split != "all":
                    table = table.filter(pa.array(held_out(rb.column(0).to_pylist(), val) == (split == "val")))
                row += n
                if table.num_rows:
                    yield table


class TokenizeFIM:
    """map_batches callable class: ``Tokenize.apply``, then FIM per document when configured
    (with ``mark_middle``: and each document's middle as ``MIDDLE_COLUMN``); the language
    column, when the batch has one, passes through."""

    def __init__(self, tok_cfg: TokenizeConfig, fim: FIMConfig | None, mark_middle: bool = False) -> None:
        self.step = Tokenize(tok_cfg)
        self.step.setup()
        self.fim, self.mark_middle = fim, mark_middle

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = self.step.apply(batch).table
        cols = {"tokens": out.column("tokens"), UNIT_COLUMN: out.column(UNIT_COLUMN),
                ORDER_COLUMN: out.column(ORDER_COLUMN)}
        if self.fim is not None:
            docs = out.column("tokens").to_numpy(zero_copy_only=False)
            units = out.column(UNIT_COLUMN).to_numpy()
            rows = out.column(ORDER_COLUMN).to_numpy()
            new = [fim_transform_middle(np.asarray(d, np.int32), np.random.default_rng([self.fim.seed, int(u), int(r)]),
                                        self.fim) for d, u, r in zip(docs, units, rows)]
            cols["tokens"] = pa.array([t for t, _ in new], pa.list_(pa.int32()))
            if self.mark_middle:
                cols[MIDDLE_COLUMN] = pa.array([(np.arange(len(t)) >= (len(t) if m is None else m)).astype(np.int8) for t, m in new],
                                               pa.list_(pa.int8()))
        if LANG_COLUMN in out.column_names:
            cols[LANG_COLUMN] = out.column(LANG_COLUMN)
        return pa.table(cols)


def source_files(paths: list[str]) -> list[str]:
    """The Parquet files of a source's inputs, sorted (a curated folder stands for its data/)."""
    parquet, jsonl = sort_inputs(list(paths))
    if jsonl:
        raise InputError(f"prepare reads curated Parquet, not JSONL: {jsonl[0]}")
    return sorted(parquet)


def _check_text_field(path: str, text_field: str) -> None:
    import pyarrow.parquet as pq

    fs, p = filesystem(path)
    names = pq.read_schema(p, filesystem=fs).names
    if text_field not in names:
        raise InputError(f"{path}: no {text_field!r} column (columns: {', '.join(names)})")


def _read_dataset(cfg: PrepareConfig, files: list[str], split: Split):
    import ray

    ds = ray.data.from_items([{"path": p, "unit": i} for i, p in enumerate(files)],
                             override_num_blocks=max(1, len(files)))
    return ds.map_batches(_read_file, batch_size=1, batch_format="pyarrow",
                          fn_kwargs={"text_field": cfg.text_field, "batch_rows": cfg.batch_size, "split": split,
                                     "val": cfg.val, "lang_field": cfg.lang_field}, **cfg.ray.remote_args)


def build_source_dataset(cfg: PrepareConfig, files: list[str], split: Split = "all"):
    """The lazy plan of one source's ``split``: read per file -> tokenize (+FIM) in an actor pool."""
    from ray.data import ActorPoolStrategy

    tok_cfg = TokenizeConfig(model=cfg.tokenizer, add_bos=cfg.add_bos, add_eos=True)
    return _read_dataset(cfg, files, split).map_batches(TokenizeFIM, fn_constructor_args=(tok_cfg, cfg.fim, split == "val"), batch_format="pyarrow",
                          batch_size=cfg.batch_size,
                          compute=ActorPoolStrategy(min_size=1, max_size=cfg.actor_pool_size), **cfg.ray.remote_args)


def _split_data(cfg: PrepareConfig, files: list[str], split: Split):
    """What ``write_token_shards`` packs for ``split``: the source's plan, or no tables when no
    document falls in the split (a small source, a small fraction), which Ray Data's groupby
    cannot shuffle; a streaming read that stops at the first document of the split tells."""
    if split != "all" and not _read_dataset(cfg, files, split).take(1):
        return []
    return build_source_dataset(cfg, files, split)


def _partitions(num_files: int) -> int:
    import ray

    return max(1, min(num_files, 4 * int(ray.cluster_resources().get("CPU", 1))))


def prepare(cfg: PrepareConfig, out_dir: str, overwrite: bool = False) -> dict[str, Any]:
    """Write ``out_dir/<source>/`` token shards + manifest for every source (with ``val``: and
    ``out_dir/<source>/val/``), and ``out_dir/prepare.json``; returns the summary (sequences,
    tokens, waste per source)."""
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
    keys = ("num_sequences", "num_tokens", "documents", "document_tokens", "dropped_tokens", "padded_tokens",
            "waste_fraction")
    for name, paths in files.items():
        common = {"source": name, "tokenizer_hash": h, "rows_per_shard": cfg.rows_per_shard, "overwrite": overwrite,
                  "num_partitions": _partitions(len(paths)), "shuffle": cfg.shuffle,
                  "remote_args": cfg.ray.remote_args}
        extra = {"inputs": paths, "config": to_dict(cfg)}
        split_keys = {"split": "train", "val": VAL_DIR} if cfg.val else {}
        manifest = write_token_shards(_split_data(cfg, paths, "train" if cfg.val else "all"),
                                      f"{out}/{name}", cfg.seq_len, drop_tail=cfg.drop_tail,
                                      extra={**extra, **split_keys}, **common)
        summary["sources"][name] = {k: manifest[k] for k in keys}
        summary["sources"][name]["path"] = f"{out}/{name}"
        if cfg.val:
            val = write_token_shards(_split_data(cfg, paths, "val"), f"{out}/{name}/{VAL_DIR}", cfg.seq_len,
                                     drop_tail=False, lang_column=LANG_COLUMN, extra={**extra, "split": "val"},
                                     middle_column=MIDDLE_COLUMN if cfg.fim else None,
                                     **common)
            summary["sources"][name]["val"] = {k: val[k] for k in keys} | {"path": f"{out}/{name}/{VAL_DIR}"}
    summary["num_tokens"] = sum(s["num_tokens"] for s in summary["sources"].values())
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    fs, root = filesystem(out)
    with fs.open_output_stream(f"{root}/prepare.json") as f:
        f.write(json.dumps(summary, indent=2, ensure_ascii=False).encode("utf-8"))
    return summary
