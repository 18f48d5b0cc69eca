"""Token shards: packed training sequences as Parquet, written and read with Ray Data.

``write_token_shards`` turns tokenised documents into fixed-length packed sequences
(``raylm.data.packing.pack_table``) and writes them as ``OUT/shard-NNNNN.parquet`` with
``OUT/manifest.json``. Every shard row is one sequence:

* ``seq_id`` int64: ``unit << 32 | position``. A *unit* is a deterministic slice of the input
  (in ``raylm prepare``: one input file; for a list of tables: the table's index) and
  ``position`` counts the unit's sequences from 0. Documents are packed unit by unit in their
  order inside the unit, so the same input (and FIM seed) gives the same ids, tokens and
  order however Ray Data splits the work into blocks and tasks.
* ``tokens`` list<int32> of exactly ``seq_len`` ids, ``cu_seqlens`` list<int32> from 0 to
  ``seq_len`` (flash-attn varlen boundaries: a segment never spans two documents), ``source``.
* With ``lang_column`` (``raylm prepare`` writes it for held-out shards): ``langs``
  list<string>, the language of every segment's document ("" when unknown and for padding),
  so evaluation can report per language; the manifest then says ``"langs": true``.
* With ``middle_column`` (held-out shards with FIM): ``fim_middle`` list<int8> of ``seq_len``,
  1 at the tokens of FIM middles; the manifest says ``"fim_middle": true``.

Nothing is collected on one node. ``raylm prepare`` has each unit's documents in one task
already (a file never leaves its task): it packs them with ``pack_unit`` and writes them with
``write_packed`` (files named by the unit). ``write_token_shards``, for documents that arrive
in any order (a ``ray.data.Dataset`` or a list of tables), groups them by unit with a Ray Data
shuffle (``groupby(unit).map_groups(pack_unit)``) and streams the sequences to a ``Datasink``
whose write tasks write the shards. Either way only counts come back to the driver, which
renames the shards in ``seq_id`` order and writes the manifest (``finish_shards``). Each unit
drops (or pads) its own last incomplete sequence: about ``seq_len / 2`` tokens per unit,
recorded in the manifest's ``waste_fraction``.

``open_token_dataset`` reads the shards back as a ``ray.data.Dataset`` sorted by ``seq_id``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raylm.data.packing import PackConfig, PackStats, pack_table
from raylm.sinks import FolderSink
from raylm.storage import InputError, filesystem

FORMAT = "raylm.token_shards/1"
MANIFEST = "manifest.json"
UNIT_COLUMN = "_unit"
ORDER_COLUMN = "_row"
UNIT_SHIFT = 32
"""``seq_id = unit << UNIT_SHIFT | position``."""
_STAT_COLUMNS = ("_docs", "_tokens_in", "_dropped", "_padded")


@contextlib.contextmanager
def shuffle_strategy(name: Literal["sort", "hash"]) -> Iterator[None]:
    """Ray Data's shuffle for the datasets built (and, for the writer, run) inside: the
    task-based sort shuffle starts in well under a second; Ray 2.60's default hash shuffle
    starts aggregator actors first (seconds on a small node) and pays off on large clusters."""
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    if name not in ("sort", "hash"):
        raise ValueError(f"shuffle: {name!r} is not 'sort' or 'hash'")
    ctx = DataContext.get_current()
    before = ctx.shuffle_strategy
    ctx.shuffle_strategy = (ShuffleStrategy.SORT_SHUFFLE_PULL_BASED if name == "sort"
                            else ShuffleStrategy.HASH_SHUFFLE)
    try:
        yield
    finally:
        ctx.shuffle_strategy = before


def shard_schema(langs: bool = False, fim_middle: bool = False) -> pa.Schema:
    fields = [("seq_id", pa.int64()), ("tokens", pa.list_(pa.int32())),
              ("cu_seqlens", pa.list_(pa.int32())), ("source", pa.string())]
    fields += [("langs", pa.list_(pa.string()))] if langs else []
    return pa.schema(fields + ([("fim_middle", pa.list_(pa.int8()))] if fim_middle else []))


def pack_unit(group: pa.Table, *, cfg: PackConfig, source: str, unit_column: str,
               order_column: str | None, lang_column: str | None = None,
               middle_column: str | None = None) -> pa.Table:
    """map_groups function: pack one unit's documents (in ``order_column`` order) and number
    its sequences (with ``lang_column``: and record every segment's language; with
    ``middle_column``: pack that per-token column alike). One extra row with ``seq_id == -1``
    carries the unit's token accounting."""
    unit = int(group.column(unit_column)[0].as_py())
    if not 0 <= unit < 2**31:
        raise ValueError(f"{unit_column} must be in [0, 2**31), got {unit}")
    if order_column:
        group = group.take(pc.sort_indices(group, [(order_column, "ascending")]))
    stats = PackStats()
    packed = pack_table(group.select(["tokens"]), cfg, stats, doc_ids=lang_column is not None)
    n = packed.num_rows
    if n >= 2**UNIT_SHIFT:
        raise ValueError(f"unit {unit}: {n} sequences do not fit in {UNIT_SHIFT} bits")
    seq_ids = np.arange(n + 1, dtype=np.int64) + (unit << UNIT_SHIFT)
    seq_ids[-1] = -1
    zeros = np.zeros(n, dtype=np.int64)
    values = (group.num_rows, stats.tokens_in, stats.dropped, stats.padded)
    empty = pa.array([[]], pa.list_(pa.int32()))
    table = {
        "seq_id": pa.array(seq_ids),
        "tokens": pa.concat_arrays([packed.column("tokens").combine_chunks(), empty]),
        "cu_seqlens": pa.concat_arrays([packed.column("cu_seqlens").combine_chunks(), empty]),
        "source": pa.array([source] * (n + 1), pa.string()),
    }
    if lang_column is not None:
        docs = packed.column("doc_ids").combine_chunks()
        # a document's language by its row; row -1 (the padding segment) reads the appended ""
        langs = np.asarray([x or "" for x in group.column(lang_column).to_pylist()] + [""], dtype=object)
        seg = pa.ListArray.from_arrays(docs.offsets, pa.array(langs[docs.flatten().to_numpy()], pa.string()))
        table["langs"] = pa.concat_arrays([seg, pa.array([[]], pa.list_(pa.string()))])
    if middle_column is not None:  # the same lengths pack to the same cuts; padding is 0
        mid = pack_table(group.select([middle_column]).rename_columns(["tokens"]), dataclasses.replace(cfg, pad_id=0))
        table["fim_middle"] = pa.concat_arrays([mid.column("tokens").combine_chunks().cast(pa.list_(pa.int8())),
                                                pa.array([[]], pa.list_(pa.int8()))])
    for name, value in zip(_STAT_COLUMNS, values):
        table[name] = pa.array(np.append(zeros, value))
    return pa.table(table)


class TokenShardSink(FolderSink):
    """Writes each write task's sequences to temporary Parquet files of at most
    ``rows_per_shard`` rows (Ray Data bundles blocks up to *at least* ``min_rows_per_write``,
    so one task can get many shards' worth); returns the files and counts."""

    def __init__(self, out: str, rows_per_shard: int, langs: bool = False, fim_middle: bool = False) -> None:
        super().__init__(out)
        self.out, self.rows_per_shard = out, rows_per_shard
        self.schema = shard_schema(langs, fim_middle)
        self.results: list[dict[str, Any]] = []

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_shard

    def write(self, blocks, ctx) -> dict[str, Any]:
        parts = self.tables(blocks)
        if not parts:
            return _empty_result()
        return write_packed(pa.concat_tables(parts), self.out, self.tag(ctx),
                            self.rows_per_shard, self.schema)

    def on_write_complete(self, write_result) -> None:
        self.results = list(write_result.write_returns)


def _empty_result() -> dict[str, Any]:
    return {"files": [], "sources": {}, "units": {}, **{name: 0 for name in _STAT_COLUMNS}}


def write_packed(table: pa.Table, out: str, tag: str, rows_per_shard: int, schema: pa.Schema) -> dict[str, Any]:
    """Write packed sequences (``pack_unit`` tables, stats rows included) to temporary files
    ``out/_tmp-<tag>-NNNNN.parquet`` of at most ``rows_per_shard`` rows in ``seq_id`` order;
    returns the files and counts for ``finish_shards``. A ``tag`` that names the work (a unit)
    makes a retried write replace its files rather than add to them."""
    result = _empty_result()
    for name in _STAT_COLUMNS:
        result[name] = int(pc.sum(table.column(name)).as_py() or 0)
    seqs = table.filter(pc.greater_equal(table.column("seq_id"), 0))
    seqs = seqs.select(schema.names).cast(schema)
    if not seqs.num_rows:
        return result
    ids = seqs.column("seq_id").to_numpy()
    if np.any(np.diff(ids) < 0):
        seqs = seqs.take(pc.sort_indices(seqs, [("seq_id", "ascending")]))
        ids = seqs.column("seq_id").to_numpy()
    fs, root = filesystem(out)
    fs.create_dir(root, recursive=True)
    for j, lo in enumerate(range(0, seqs.num_rows, rows_per_shard)):
        part = seqs.slice(lo, rows_per_shard)
        name = f"_tmp-{tag}-{j:05d}.parquet"
        pq.write_table(part, f"{root}/{name}", filesystem=fs)
        result["files"].append({"file": name, "rows": part.num_rows, "min_seq_id": int(ids[lo])})
    sources = seqs.column("source").combine_chunks().dictionary_encode()
    counts = np.bincount(sources.indices.to_numpy(zero_copy_only=False), minlength=len(sources.dictionary))
    result["sources"] = {str(src): int(c) for src, c in zip(sources.dictionary.to_pylist(), counts) if c}
    units, counts = np.unique(ids >> UNIT_SHIFT, return_counts=True)
    result["units"] = {int(u): int(c) for u, c in zip(units, counts)}
    return result


def clear_output(out: str, overwrite: bool) -> None:
    """Make ``out`` ready for new shards: refuse a non-empty folder unless ``overwrite``, then
    delete the shards, temporary files and manifest a former run left (nothing else)."""
    fs, root = filesystem(out)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        raise InputError(f"{out}: exists and is a file")
    if info.type != pafs.FileType.Directory:
        return
    entries = fs.get_file_info(pafs.FileSelector(root))
    if entries and not overwrite:
        raise InputError(f"{out}: output directory is not empty (pass overwrite to replace it)")
    for e in entries:
        name = e.path.rsplit("/", 1)[-1]
        if e.type == pafs.FileType.File and (name == MANIFEST or name.startswith(("shard-", "_tmp-"))):
            fs.delete_file(e.path)


def write_token_shards(
    data: Any,
    out_dir: str,
    seq_len: int,
    *,
    source: str = "",
    tokenizer_hash: str | None = None,
    drop_tail: bool = True,
    pad_id: int = 0,
    rows_per_shard: int = 10_000,
    unit_column: str = UNIT_COLUMN,
    order_column: str | None = ORDER_COLUMN,
    overwrite: bool = False,
    num_partitions: int | None = None,
    shuffle: Literal["sort", "hash"] = "sort",
    remote_args: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    lang_column: str | None = None,
    middle_column: str | None = None,
) -> dict[str, Any]:
    """Pack tokenised documents into ``seq_len`` sequences and write shards + manifest.

    ``data`` is a ``ray.data.Dataset`` with a ``tokens`` list column, an integer
    ``unit_column`` and an integer ``order_column`` giving the documents' order inside their
    unit (None: no such column; the order inside a unit is then whatever the shuffle gives,
    which is deterministic only if the unit's rows arrive in one block); or a list of ``pyarrow.Table`` with a ``tokens`` column (table ``i`` is
    unit ``i``, rows in table order). ``num_partitions`` sets the groupby shuffle's partitions
(Ray Data's default when None; about the number of units, capped at a few per CPU, suits
this shuffle best); ``shuffle`` picks Ray Data's shuffle (``shuffle_strategy``);
    ``remote_args`` go to the packing tasks (e.g. ``{"resources": {"data_cpu": 1}}``). Documents should end in eos (the ``Tokenize`` step adds
    it). ``extra`` is merged into the manifest. ``lang_column`` (a string column of ``data``)
    writes every segment's language to ``langs``; ``middle_column`` (a list column as long as
    ``tokens``) is packed alike into ``fim_middle``. Returns the manifest."""
    import ray

    cfg = PackConfig(seq_len=seq_len, drop_tail=drop_tail, pad_id=pad_id)
    cfg.validate()
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard: {rows_per_shard} must be at least 1")
    if isinstance(data, (list, tuple)):
        order_column = order_column or ORDER_COLUMN
        tables = []
        for i, t in enumerate(data):
            t = t.select(["tokens"] + [c for c in (lang_column, middle_column) if c])
            tables.append(t.append_column(unit_column, pa.array(np.full(t.num_rows, i, np.int64)))
                          .append_column(order_column, pa.array(np.arange(t.num_rows, dtype=np.int64))))
        tables = [t for t in tables if t.num_rows]
        ds = ray.data.from_arrow(tables) if tables else None
        num_partitions = num_partitions or max(1, len(tables))
    else:
        ds = data  # not checked here: ds.schema() would run the plan's first stages
    clear_output(out_dir, overwrite)
    sink = TokenShardSink(out_dir, rows_per_shard, langs=lang_column is not None,
                          fim_middle=middle_column is not None)
    sink.on_write_start()
    if ds is not None:
        keep = ["tokens", unit_column] + [c for c in (order_column, lang_column, middle_column) if c]
        with shuffle_strategy(shuffle):
            packed = ds.select_columns(keep).groupby(unit_column, num_partitions=num_partitions).map_groups(
                pack_unit, batch_format="pyarrow",
                fn_kwargs={"cfg": cfg, "source": source, "unit_column": unit_column, "order_column": order_column,
                           "lang_column": lang_column, "middle_column": middle_column},
                **(remote_args or {}))
            packed.write_datasink(sink)
    return finish_shards(out_dir, sink.results, cfg, source, tokenizer_hash,
                   {**({"langs": True} if lang_column else {}), **({"fim_middle": True} if middle_column else {}),
                    **(extra or {})})


def finish_shards(out_dir: str, results: list[dict[str, Any]], cfg: PackConfig, source: str,
                  tokenizer_hash: str | None, extra: dict[str, Any] | None) -> dict[str, Any]:
    """Rename the temporary files of ``results`` (``write_packed``'s) to ``shard-NNNNN.parquet``
    in ``seq_id`` order; write the manifest and return it."""
    fs, root = filesystem(out_dir)
    fs.create_dir(root, recursive=True)  # a split no document fell in has no shards, but a manifest
    written = sorted((f for r in results for f in r["files"]), key=lambda f: f["min_seq_id"])
    shards = []
    for i, r in enumerate(written):
        name = f"shard-{i:05d}.parquet"
        fs.move(f"{root}/{r['file']}", f"{root}/{name}")
        shards.append({"path": name, "rows": r["rows"], "first_seq_id": r["min_seq_id"]})
    totals = {name: sum(r[name] for r in results) for name in _STAT_COLUMNS}
    units: dict[int, int] = {}
    for r in results:
        for u, n in r["units"].items():  # keys are strings after a JSON round trip
            units[int(u)] = units.get(int(u), 0) + n
    by_source: dict[str, int] = {}
    for r in results:
        for src, n in r["sources"].items():
            by_source[src] = by_source.get(src, 0) + n
    stats = PackStats(tokens_in=totals["_tokens_in"], dropped=totals["_dropped"], padded=totals["_padded"])
    num_sequences = sum(s["rows"] for s in shards)
    manifest = {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tokenizer_hash": tokenizer_hash,
        "seq_len": cfg.seq_len,
        "drop_tail": cfg.drop_tail,
        "pad_id": cfg.pad_id,
        "seq_id": f"unit << {UNIT_SHIFT} | position",
        "unit_shift": UNIT_SHIFT,
        "units": [[u, units[u]] for u in sorted(units)],
        "num_sequences": num_sequences,
        "num_tokens": num_sequences * cfg.seq_len,
        "documents": totals["_docs"],
        "document_tokens": totals["_tokens_in"],
        "dropped_tokens": totals["_dropped"],
        "padded_tokens": totals["_padded"],
        "waste_fraction": stats.waste_fraction,
        "sources": {src: {"sequences": n, "tokens": n * cfg.seq_len} for src, n in sorted(by_source.items())},
        "shards": shards,
        **(extra or {}),
    }
    if not by_source and source:
        manifest["sources"] = {source: {"sequences": 0, "tokens": 0}}
    with fs.open_output_stream(f"{root}/{MANIFEST}") as f:
        f.write(json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8"))
    return manifest


def _manifest_uri(path: str) -> tuple[str, str]:
    """(shard folder, manifest path) for a shard folder or its manifest.json."""
    path = str(path).rstrip("/")
    if path.endswith(MANIFEST):
        return path[: -len(MANIFEST)].rstrip("/"), path
    return path, f"{path}/{MANIFEST}"


def read_manifest(path: str) -> dict[str, Any]:
    """The manifest of the shard folder ``path`` (local or URI; or the manifest file itself)."""
    _, manifest = _manifest_uri(path)
    fs, p = filesystem(manifest)
    if fs.get_file_info(p).type != pafs.FileType.File:
        raise InputError(f"{manifest}: no token-shard manifest")
    with fs.open_input_stream(p) as f:
        data = json.loads(f.read().decode("utf-8"))
    if data.get("format") != FORMAT:
        raise InputError(f"{manifest}: format {data.get('format')!r} is not {FORMAT!r}")
    return data


def open_token_dataset(path: str, *, sort: bool = True, shuffle: Literal["sort", "hash"] = "sort"):
    """The sequences of a shard folder (local path or URI) as a ``ray.data.Dataset`` with
    ``seq_id``, ``tokens``, ``cu_seqlens`` and ``source``; sorted by ``seq_id`` unless
    ``sort`` is false (the sort is a distributed Ray Data shuffle, see ``shuffle_strategy``)."""
    import ray

    folder, _ = _manifest_uri(path)
    manifest = read_manifest(path)
    if not manifest["shards"]:
        return ray.data.from_arrow(shard_schema().empty_table())
    files = [f"{folder}/{s['path']}" for s in manifest["shards"]]
    if "://" not in folder:
        import os

        files = [os.path.abspath(f) for f in files]
    from raylm.data.corpus import read_parquet_v1

    ds = read_parquet_v1(files, schema=shard_schema())
    if not sort:
        return ds
    with shuffle_strategy(shuffle):
        return ds.sort("seq_id")
