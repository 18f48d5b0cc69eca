"""``raylm prepare``: curated Parquet -> tokenised, (FIM-transformed,) packed token shards per source.

An input file is one packing unit (``raylm.data.shards``) and one Ray task of one CPU
(``prepare_file``), for all sources' files at once: the task reads the file in ``batch_size``
batches, tokenises each batch with one encode call (``raylm.data.encode``: kitoken where its
ids are SentencePiece's, else SentencePiece), optionally FIM-transforms every document, packs
the file's documents in file order (``shards.pack_unit``) and writes the file's shards itself
(``shards.write_packed``, named by the unit, so a retried task replaces its files). Only counts
come back; the driver renames the shards in ``seq_id`` order and writes each manifest
(``shards.finish_shards``). Nothing is shuffled (a file never leaves its task) and no actor
is started: loading the model takes milliseconds, so every task loads its own, on workers Ray
has already started. The FIM generator of a document is seeded from ``(fim.seed, file index,
row index)``, so the output does not depend on where or in which order the files run. Mixing
is not done here: training mixes the per-source shard folders at read time
(``raylm.data.mixing.Mixer``).

Held-out split (``val``): a document is held out when a keyed hash of its text (blake2b,
salted with ``val.seed``) falls below ``val.fraction``, so the split depends on nothing but
the document itself: not on Ray's batching, the file it is in or the other documents, and a
duplicate of a held-out document is held out too. Held-out documents go, in the same pass
over the file and through the same tokenise/FIM/pack path, to ``OUT/<source>/val/`` with their
own manifest, never into the training shards; the training manifest names that folder
(``"val": "val"``) and the loader
reads a shard folder's manifest's files only, so the nested split is never trained on. The
held-out shards record each segment's language (the curated ``lang_field`` column, "" where
there is none) and, with FIM, which tokens are FIM middles (``fim_middle``), and pad each
file's last sequence instead of dropping it, so no held-out document is lost; evaluation
(``raylm.train.heldout``) leaves the padding out.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from raylm import console
from raylm.cluster import RayConfig, ensure_ray
from raylm.config import ConfigError, to_dict
from raylm.data.corpus import sort_inputs, uniform
from raylm.data.encode import Tokenize, TokenizeConfig
from raylm.data.packing import PackConfig
from raylm.data.shards import (
    ORDER_COLUMN,
    UNIT_COLUMN,
    clear_output,
    finish_shards,
    pack_unit,
    shard_schema,
    write_packed,
)
from raylm.data.transforms import FIMConfig, fim_transform_middle
from raylm.storage import InputError, filesystem

_SOURCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
VAL_DIR = "val"
"""The held-out split's folder inside a source's shard folder."""
LANG_COLUMN = "lang"
"""The language column the tokenise step carries for held-out shards."""
MIDDLE_COLUMN = "fim_middle"
"""Held-out shards with FIM: 1 at every token of a FIM middle (and the eos after it)."""


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
    """Documents read and encoded together (one batched encode call)."""
    concurrency: int | None = None
    """Most input files in work at once (a Ray task of one CPU per file); None: all of them, as
    many running as the cluster has CPUs for (pending tasks are what makes an autoscaling
    cluster grow)."""
    rows_per_shard: int = 10_000
    """Most sequences per shard file (every input file's sequences go to their own files)."""
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
        for name in ("batch_size", "rows_per_shard"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: {getattr(self, name)} must be at least 1")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"concurrency: {self.concurrency} must be at least 1 (or null: no limit)")
        if self.fim is not None:
            self.fim.validate()
        if self.val is not None:
            self.val.validate()


def _read_unit(path: str, unit: int, text_field: str, batch_rows: int, lang_field: str | None) -> Iterator[pa.Table]:
    """The documents of one input file in ``batch_rows`` batches: ``text``, ``_unit``, ``_row``
    (the row in the file) and, with ``lang_field``, ``LANG_COLUMN`` ("" where the file has none)."""
    import pyarrow.parquet as pq

    fs, p = filesystem(path)
    with fs.open_input_file(p) as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        if text_field not in names:
            raise InputError(f"{path}: no {text_field!r} column")
        with_lang = lang_field is not None and lang_field in names and lang_field != text_field
        row = 0
        for rb in pf.iter_batches(batch_size=batch_rows, columns=[text_field] + ([lang_field] if with_lang else [])):
            n = rb.num_rows
            table = pa.table({"text": rb.column(0).cast(pa.large_string()),
                              UNIT_COLUMN: pa.array(np.full(n, unit, np.int64)),
                              ORDER_COLUMN: pa.array(np.arange(row, row + n, dtype=np.int64))})
            if lang_field is not None:
                langs = rb.column(1).cast(pa.string()) if with_lang else pa.array([""] * n, pa.string())
                table = table.append_column(LANG_COLUMN, langs)
            row += n
            yield table


class TokenizeFIM:
    """``Tokenize.apply`` on a batch of documents, then FIM per document when configured (with
    ``mark_middle``: and each document's middle as ``MIDDLE_COLUMN``); keeps ``tokens``, the unit
    and row columns and, when the batch has one, the language column."""

    def __init__(self, tok_cfg: TokenizeConfig, fim: FIMConfig | None) -> None:
        self.step = Tokenize(tok_cfg)
        self.step.setup()
        self.fim = fim

    def __call__(self, batch: pa.Table, mark_middle: bool = False) -> pa.Table:
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
            if mark_middle:
                cols[MIDDLE_COLUMN] = pa.array([(np.arange(len(t)) >= (len(t) if m is None else m)).astype(np.int8) for t, m in new],
                                               pa.list_(pa.int8()))
        if LANG_COLUMN in out.column_names:
            cols[LANG_COLUMN] = out.column(LANG_COLUMN)
        return pa.table(cols)


def prepare_file(cfg: PrepareConfig, folders: dict[str, str], source: str, path: str, unit: int) -> list[dict[str, Any]]:
    """One input file, one packing unit (a Ray task): read its documents in ``batch_size``
    batches, tokenise (+FIM) them in file order, pack them (``shards.pack_unit``) and write the
    unit's shard files (``shards.write_packed``) into ``folders[split]``, for each split;
    returns the counts, one dict per split with documents (``"split"``: its name)."""
    encode = TokenizeFIM(TokenizeConfig(model=cfg.tokenizer, add_bos=cfg.add_bos, add_eos=True), cfg.fim)
    parts: dict[str, list[pa.Table]] = {split: [] for split in folders}
    for table in _read_unit(path, unit, cfg.text_field, cfg.batch_size, cfg.lang_field if cfg.val else None):
        if cfg.val is None:
            parts["all"].append(encode(table))
            continue
        val = held_out(table.column("text").to_pylist(), cfg.val)
        for split, mask in (("train", ~val), ("val", val)):
            if mask.any():
                part = encode(table.filter(pa.array(mask)), mark_middle=split == "val")
                parts[split].append(part if split == "val" else part.drop_columns([LANG_COLUMN]))
    results = []
    for split, folder in folders.items():
        if not parts[split]:
            continue
        val = split == "val"
        middle = MIDDLE_COLUMN if val and cfg.fim else None
        packed = pack_unit(pa.concat_tables(parts[split]), cfg=_pack_config(cfg, split), source=source,
                           unit_column=UNIT_COLUMN, order_column=None, lang_column=LANG_COLUMN if val else None,
                           middle_column=middle)
        written = write_packed(packed, folder, f"u{unit:010d}", cfg.rows_per_shard, shard_schema(val, middle is not None))
        results.append({"split": split, **written})
    return results


def _pack_config(cfg: PrepareConfig, split: str) -> PackConfig:
    """Held-out shards pad each file's last sequence rather than drop it."""
    return PackConfig(seq_len=cfg.seq_len, drop_tail=cfg.drop_tail and split != "val")


def _run_files(cfg: PrepareConfig, work: list[tuple[str, dict[str, str], str, int]]) -> dict[str, list[dict[str, Any]]]:
    """``prepare_file`` for every ``(source, folders, path, unit)`` of ``work`` as Ray tasks of
    one CPU each, at most ``cfg.concurrency`` submitted at a time; the counts per source."""
    import ray

    task = ray.remote(prepare_file).options(num_cpus=1, **cfg.ray.remote_args)
    window = cfg.concurrency or len(work)
    results: dict[str, list[dict[str, Any]]] = {source: [] for source, *_ in work}
    pending: dict[Any, str] = {}
    todo = iter(work)
    with console.stage("prepare", total=len(work), unit="file") as progress:
        try:
            while True:
                for source, folders, path, unit in itertools.islice(todo, window - len(pending)):
                    pending[task.remote(cfg, folders, source, path, unit)] = source
                if not pending:
                    progress.done(f"{progress.counts.get('tokens', 0):,.0f} tokens from {len(work)} "
                                  f"file{'s' * (len(work) > 1)}, packed to {cfg.seq_len}")
                    return results
                done, _ = ray.wait(list(pending), num_returns=1)
                rows = ray.get(done[0])
                results[pending.pop(done[0])].extend(rows)
                progress.advance(1, docs=sum(r["_docs"] for r in rows), tokens=sum(r["_tokens_in"] for r in rows))
        except BaseException:
            for ref in pending:
                ray.cancel(ref)
            raise


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
    folders = {name: {"train": f"{out}/{name}", "val": f"{out}/{name}/{VAL_DIR}"} if cfg.val
               else {"all": f"{out}/{name}"} for name in files}
    for name in files:
        for folder in folders[name].values():
            clear_output(folder, overwrite)
    results = _run_files(cfg, [(name, folders[name], path, unit) for name, paths in files.items()
                               for unit, path in enumerate(paths)])
    for name, paths in files.items():
        extra = {"inputs": paths, "config": to_dict(cfg)}
        for split, folder in folders[name].items():
            val = split == "val"
            split_keys = {"split": "val"} if val else {"split": "train", "val": VAL_DIR} if cfg.val else {}
            flags = {"langs": True} | ({"fim_middle": True} if cfg.fim else {}) if val else {}
            manifest = finish_shards(folder, [r for r in results[name] if r["split"] == split],
                                     _pack_config(cfg, split), name, h, {**flags, **extra, **split_keys})
            stats = {k: manifest[k] for k in keys} | {"path": folder}
            if val:
                summary["sources"][name]["val"] = stats
            else:
                summary["sources"][name] = stats
    summary["num_tokens"] = sum(s["num_tokens"] for s in summary["sources"].values())
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    fs, root = filesystem(out)
    with fs.open_output_stream(f"{root}/prepare.json") as f:
        f.write(json.dumps(summary, indent=2, ensure_ascii=False).encode("utf-8"))
    return summary
