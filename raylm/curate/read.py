"""Read JSONL (plain, .gz, .zst), Parquet and text files, local or on any pyarrow filesystem.

One Ray task reads one unit (a whole file, a byte range of a plain JSONL file, or a run of a
Parquet file's row groups: ``raylm.curate.split``) and yields batches as it goes. A
record that cannot be used is not lost and does not stop the job: it becomes a row whose
``_drop_step`` is ``read`` and whose reason says why (``malformed_json``, ``invalid_utf8``,
``missing_text``, ``empty``, ``too_large``); its id names the file and line.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raylm.curate import schema as S
from raylm.storage import InputError, filesystem

JSONL_EXT = (".jsonl", ".json", ".ndjson")
TEXT_EXT = (".txt", ".text")
CODECS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".lz4": "lz4"}
"""Compression by file suffix (any case); pyarrow's own ``detect`` knows neither ``.zstd`` nor
upper case."""
COMPRESSION_EXT = tuple(CODECS)


def codec_of(path: str) -> str | None:
    """The compression of ``path`` by its suffix (None: not compressed)."""
    lower = path.lower()
    return next((codec for ext, codec in CODECS.items() if lower.endswith(ext)), None)
_KEY_SHIFT = 40  # _key = file_index << 40 | record number: unique and in input order


@dataclasses.dataclass(kw_only=True)
class ReadConfig:
    text_field: str = "text"
    """Field (JSONL) or column (Parquet) that holds the document text."""
    id_field: str = "id"
    """Field holding the document id; missing ids become ``<file>:<line>``."""
    max_doc_bytes: int = 10_000_000
    """Documents larger than this (UTF-8 bytes) are quarantined as ``too_large``."""
    batch_rows: int = 1000
    """Rows per batch yielded by a read task."""
    split_bytes: int = 64 << 20
    """A plain JSONL file larger than this is read by several tasks, in byte ranges of this
    size aligned to line starts, and a Parquet file by runs of row groups of about this size
    (``raylm.curate.split``). Compressed files and text files are one task each."""


@dataclasses.dataclass(frozen=True)
class ReadUnit:
    """One read task's share of one input file."""

    path: str
    index: int
    """The file's position in the sorted input list (the high bits of every document key)."""
    part: int = 0
    """This unit's position among the file's units."""
    start: int = 0
    """JSONL: first byte of the range. Parquet: first row group."""
    end: int = -1
    """JSONL: end of the range (exclusive). Parquet: end row group (exclusive). -1: the whole file."""
    first_record: int = 1
    """Line (JSONL) or row (Parquet) number of the unit's first record, counted from 1."""

    @property
    def name(self) -> str:
        return f"{self.index:06d}-{self.part:04d}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def kind_of(path: str) -> str:
    """``jsonl``, ``parquet`` or ``text`` by the file name (a compression suffix is looked through)."""
    name = path.lower()
    for ext in COMPRESSION_EXT:
        if name.endswith(ext):
            name = name[: -len(ext)]
    if name.endswith(JSONL_EXT):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(TEXT_EXT):
        return "text"
    return ""


def expand_inputs(inputs: list[str]) -> list[str]:
    """Resolve files and folders (recursively) to a sorted list of readable files."""
    files: list[str] = []
    for raw in inputs:
        fs, path = pafs.FileSystem.from_uri(raw) if "://" in raw else (pafs.LocalFileSystem(), os.path.abspath(raw))
        prefix = raw[: raw.index("://") + 3] if "://" in raw else ""
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"{raw}: no such file or directory")
        if info.type == pafs.FileType.File:
            if not kind_of(path):
                raise InputError(f"{raw}: unknown file type (expected .jsonl, .parquet or .txt, optionally compressed)")
            files.append(prefix + path)
            continue
        found = [
            prefix + i.path
            for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
            if i.type == pafs.FileType.File and kind_of(i.path) and not os.path.basename(i.path).startswith((".", "_"))
        ]
        if not found:
            raise InputError(f"{raw}: no .jsonl, .parquet or .txt files in this directory")
        files.extend(sorted(found))
    return files


def _open_unit(unit: ReadUnit):
    """A stream of ``unit``'s file: decompressed whole, or at its range's first byte."""
    fs, p = filesystem(unit.path)
    if unit.start == 0 and unit.end < 0:
        return fs.open_input_stream(p, compression=codec_of(p))
    f = fs.open_input_file(p)
    f.seek(max(unit.start - 1, 0))
    return f


def _lines(stream, start: int = 0, end: int | None = None, chunk: int = 8 << 20) -> Iterator[bytes]:
    """The lines (without ``\\n``) whose first byte lies in ``[start, end)`` of the file;
    ``stream`` is positioned at ``max(start - 1, 0)``. From ``start > 0`` the bytes up to the
    first newline at or after ``start - 1`` belong to the line before, which the previous
    range owns; the last line is read to its end, past ``end`` if need be."""
    at = max(start - 1, 0)  # file offset of the first byte of ``rest``
    rest = b""
    pending: list[bytes] = []  # chunks of a line longer than a chunk, joined once
    skipping = start > 0
    while True:
        data = stream.read(chunk)
        if not data:
            break
        if not skipping and b"\n" not in data:
            pending.append(data)
            continue
        data, data_at = b"".join([rest, *pending, data]), at
        pending = []
        if skipping:
            i = data.find(b"\n")
            if i < 0:
                rest, at = b"", data_at + len(data)
                if end is not None and at >= end:  # a line from before covers the whole range
                    return
                continue
            data, data_at, skipping = data[i + 1 :], data_at + i + 1, False
        lines = data.split(b"\n")
        rest = lines.pop()
        for line in lines:
            if end is not None and data_at >= end:
                return
            yield line
            data_at += len(line) + 1
        at = data_at
        if end is not None and at >= end:  # the next line is the next range's
            return
    rest = b"".join([rest, *pending])
    if rest and not skipping and (end is None or at < end):
        yield rest


class _Batch:
    """Accumulates rows of one read task and turns them into an Arrow table."""

    def __init__(self, source: str, file_index: int) -> None:
        self.source, self.file_index = source, file_index
        self.rows: list[dict[str, Any]] = []

    def add(self, record_no: int, doc_id: str, text: str, meta: dict | None = None,
            reason: str | None = None) -> None:
        row = dict(meta) if meta else {}
        row[S.ID] = doc_id
        row[S.TEXT] = text
        row.setdefault(S.SOURCE, self.source)  # an input's own `source` field is kept
        row[S.KEY] = (self.file_index << _KEY_SHIFT) | record_no
        row[S.DROP_STEP] = "read" if reason else None
        row[S.DROP_REASON] = reason
        self.rows.append(row)

    def take(self) -> pa.Table:
        rows, self.rows = self.rows, []
        return rows_to_table(rows)


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows to Arrow with fixed types for the core columns; odd metadata becomes JSON text."""
    core = {
        S.ID: pa.string(), S.TEXT: pa.large_string(), S.SOURCE: pa.string(), S.KEY: pa.int64(),
        S.DROP_STEP: pa.string(), S.DROP_REASON: pa.string(),
    }
    cols: dict[str, pa.Array] = {k: pa.array([r[k] for r in rows], type=t) for k, t in core.items()}
    extra = sorted({k for r in rows for k in r} - set(core))
    for k in extra:
        values = [r.get(k) for r in rows]
        try:
            arr = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            arr = pa.array([None if v is None else json.dumps(v, ensure_ascii=False) for v in values], pa.string())
        if pa.types.is_null(arr.type):
            arr = arr.cast(pa.string())
        cols[k] = arr
    return pa.table(cols)


def _check_text(text: Any, cfg: ReadConfig) -> str | None:
    if not isinstance(text, str):
        return "missing_text"
    if not text.strip():
        return "empty"
    if len(text) > cfg.max_doc_bytes // 4 and len(text.encode("utf-8", "surrogatepass")) > cfg.max_doc_bytes:
        return "too_large"
    return None


def read_jsonl(unit: ReadUnit, cfg: ReadConfig) -> Iterator[pa.Table]:
    path = unit.path
    batch = _Batch(path, unit.index)
    with _open_unit(unit) as stream:
        lines = _lines(stream, unit.start, None if unit.end < 0 else unit.end)
        for line_no, raw in enumerate(lines, start=unit.first_record):
            if not raw.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                batch.add(line_no, where, raw.decode("utf-8", "replace"), reason="invalid_utf8")
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                batch.add(line_no, where, line, reason="malformed_json")
                continue
            if not isinstance(rec, dict):
                batch.add(line_no, where, line, reason="malformed_json")
                continue
            text = rec.pop(cfg.text_field, None)
            doc_id = rec.pop(cfg.id_field, None)
            doc_id = where if doc_id is None else str(doc_id)
            reason = _check_text(text, cfg)
            if reason == "missing_text":
                batch.add(line_no, doc_id, line, reason=reason)
            else:
                batch.add(line_no, doc_id, text, rec, reason)
            if len(batch.rows) >= cfg.batch_rows:
                yield batch.take()
    if batch.rows:
        yield batch.take()


def read_parquet(unit: ReadUnit, cfg: ReadConfig) -> Iterator[pa.Table]:
    path = unit.path
    fs, p = filesystem(path)
    record_no = unit.first_record - 1
    with fs.open_input_file(p) as f:
        pf = pq.ParquetFile(f)
        groups = range(unit.start, pf.metadata.num_row_groups if unit.end < 0 else unit.end)
        for rb in pf.iter_batches(batch_size=cfg.batch_rows, row_groups=list(groups)):
            batch = _Batch(path, unit.index)
            for rec in rb.to_pylist():
                record_no += 1
                text = rec.pop(cfg.text_field, None)
                doc_id = rec.pop(cfg.id_field, None)
                doc_id = f"{path}:{record_no}" if doc_id is None else str(doc_id)
                reason = _check_text(text, cfg)
                if reason == "missing_text":
                    batch.add(record_no, doc_id, json.dumps(rec, default=str, ensure_ascii=False), reason=reason)
                else:
                    batch.add(record_no, doc_id, text, rec, reason)
            yield batch.take()


def read_text(unit: ReadUnit, cfg: ReadConfig) -> Iterator[pa.Table]:
    path = unit.path
    batch = _Batch(path, unit.index)
    with _open_unit(unit) as stream:
        raw = stream.read()
    try:
        text = raw.decode("utf-8")
        reason = _check_text(text, cfg)
    except UnicodeDecodeError:
        text, reason = raw.decode("utf-8", "replace"), "invalid_utf8"
    batch.add(1, path, text, reason=reason)
    yield batch.take()


READERS = {"jsonl": read_jsonl, "parquet": read_parquet, "text": read_text}


def read_unit(unit: ReadUnit, cfg: ReadConfig) -> Iterator[pa.Table]:
    """Yield Arrow batches of one read unit, bad records included as quarantined rows."""
    yield from READERS[kind_of(unit.path)](unit, cfg)


def read_file(path: str, file_index: int, cfg: ReadConfig) -> Iterator[pa.Table]:
    """Yield Arrow batches of a whole input file."""
    yield from read_unit(ReadUnit(path, file_index), cfg)
