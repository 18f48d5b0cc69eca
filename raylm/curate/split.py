"""Cutting the inputs into read units, so that one big file is read by many tasks.

A *unit* is what one read task reads: a whole file, a byte range of a plain JSONL file, or a
run of a Parquet file's row groups. Ranges are ``split_bytes`` long and aligned to line starts
as Hadoop's line reader aligns them: a range owns the lines whose first byte lies inside it,
reads on past its end to finish its last line, and skips a partial line at its start (the
previous range owns it). No record is lost or read twice at a boundary, and since only whole
lines are decoded, a multi-byte character or an invalid UTF-8 byte across a boundary is no
different from one anywhere else.

A document keeps the key and default id it has when its file is read whole: the line number.
Before a file is split, one task per range counts its newlines (memory speed, far below the
cost of parsing JSON), and the driver adds them up into the first line number of each range.
Parquet row groups carry their row counts in the footer. A compressed file (``.gz``, ``.zst``,
...) cannot be entered in the middle, so it stays one unit: split big inputs into several
compressed files, or keep them plain.
"""

from __future__ import annotations

from typing import Any

from raylm.curate.read import COMPRESSION_EXT, ReadUnit, kind_of
from raylm.storage import filesystem

_SCAN_CHUNK = 16 << 20


def _count_newlines(path: str, start: int, end: int) -> int:
    fs, p = filesystem(path)
    n = 0
    with fs.open_input_file(p) as f:
        f.seek(start)
        left = end - start
        while left > 0:
            data = f.read(min(_SCAN_CHUNK, left))
            if not data:
                break
            n += data.count(b"\n")
            left -= len(data)
    return n


def _row_groups(path: str) -> list[tuple[int, int]]:
    """(rows, bytes) of every row group of a Parquet file, from its footer."""
    import pyarrow.parquet as pq

    fs, p = filesystem(path)
    with fs.open_input_file(p) as f:
        md = pq.ParquetFile(f).metadata
    return [(md.row_group(g).num_rows, md.row_group(g).total_byte_size) for g in range(md.num_row_groups)]


def _jsonl_units(path: str, index: int, size: int, split_bytes: int, counts: list[int]) -> list[ReadUnit]:
    starts = list(range(0, size, split_bytes))
    units, newlines = [], 0
    for part, a in enumerate(starts):
        b = starts[part + 1] if part + 1 < len(starts) else size
        units.append(ReadUnit(path, index, part, a, b, 1 if a == 0 else 2 + newlines))
        newlines += counts[part]
    return units


def _parquet_units(path: str, index: int, groups: list[tuple[int, int]], split_bytes: int) -> list[ReadUnit]:
    units, first, g0, acc = [], 1, 0, 0
    for g, (_, nbytes) in enumerate(groups):
        acc += nbytes
        if acc >= split_bytes or g == len(groups) - 1:
            units.append(ReadUnit(path, index, len(units), g0, g + 1, first))
            first += sum(r for r, _ in groups[g0 : g + 1])
            g0, acc = g + 1, 0
    return units or [ReadUnit(path, index)]


def plan_units(files: list[str], split_bytes: int, remote_args: dict[str, Any] | None = None) -> list[ReadUnit]:
    """Every input file as read units (a file under ``split_bytes``, a compressed or a text file
    is one). The newline counts and Parquet footers are read by Ray tasks, in parallel."""
    import ray

    scan = ray.remote(num_cpus=1, **(remote_args or {}))(_count_newlines)
    footer = ray.remote(num_cpus=1, **(remote_args or {}))(_row_groups)
    plans: list[tuple[int, str, int, Any]] = []
    for index, path in enumerate(files):
        kind = kind_of(path)
        fs, p = filesystem(path)
        size = fs.get_file_info(p).size or 0
        if size <= split_bytes or path.lower().endswith(COMPRESSION_EXT) or kind == "text":
            plans.append((index, path, size, None))
        elif kind == "jsonl":
            # range i is counted from one byte before its start: its boundary byte decides
            # whether its first line starts exactly there (see the module docstring)
            bounds = [0] + [a - 1 for a in range(split_bytes, size, split_bytes)] + [size]
            plans.append((index, path, size, [scan.remote(path, x, y) for x, y in zip(bounds[:-1], bounds[1:])]))
        else:
            plans.append((index, path, size, footer.remote(path)))
    units: list[ReadUnit] = []
    for index, path, size, pending in plans:
        if pending is None:
            units.append(ReadUnit(path, index))
        elif isinstance(pending, list):
            units.extend(_jsonl_units(path, index, size, split_bytes, ray.get(pending)))
        else:
            units.extend(_parquet_units(path, index, ray.get(pending), split_bytes))
    return units
