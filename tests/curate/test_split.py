"""Big inputs read by many tasks: byte ranges aligned to line starts, Parquet row-group runs."""

from __future__ import annotations

import gzip
import io
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylm.curate import read as R
from raylm.curate import split as P

CFG = R.ReadConfig(batch_rows=7)


def _jsonl_bytes() -> bytes:
    """Records of every length, Korean (3-byte UTF-8) text, a record longer than several ranges,
    empty lines, a malformed line and one with invalid UTF-8 bytes."""
    rng = random.Random(0)
    lines = []
    for i in range(40):
        text = "".join(rng.choice(["가", "나", "a", "b ", "é", "😀"]) for _ in range(rng.randrange(1, 30)))
        lines.append(json.dumps({"id": f"r{i}", "text": text}, ensure_ascii=False).encode())
        if i == 11:
            lines.append(json.dumps({"text": "long " * 60}).encode())  # no id: it becomes <file>:<line>
        if i == 17:
            lines.append(b"")
            lines.append(b'{"text": "broken"')
        if i == 23:
            lines.append(b'{"text": "bad \xff\xfe bytes", "id": "bad"}')
    return b"\n".join(lines) + b"\n"


def _records(tables) -> list[tuple]:
    out = []
    for t in tables:
        for row in t.to_pylist():
            out.append((row["_key"], row["id"], row["text"], row["_drop_reason"]))
    return out


def _units_without_ray(path: str, size: int, split: int) -> list[R.ReadUnit]:
    """``plan_units``' JSONL ranges with the newline counts done here, for every split size."""
    bounds = [0] + [a - 1 for a in range(split, size, split)] + [size]
    counts = [P._count_newlines(path, a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    return P._jsonl_units(path, 0, size, split, counts)


def test_every_range_size_reads_each_record_once_with_its_line(tmp_path):
    data = _jsonl_bytes()
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    whole = _records(R.read_file(str(path), 0, CFG))
    assert len(whole) == 43 and sum(r[3] == "invalid_utf8" for r in whole) == 1
    assert sum(r[3] == "malformed_json" for r in whole) == 1
    assert any(r[1] == f"{path}:13" for r in whole)  # the id-less record is named by its line
    for split in [1, 2, 3, 5, 17, 64, 100, 257, 301, len(data) - 1, len(data)]:
        units = _units_without_ray(str(path), len(data), split)
        assert len(units) == -(-len(data) // split)
        parts = _records(t for u in units for t in R.read_unit(u, CFG))
        assert parts == whole, f"split at every {split} bytes"


class _Counted(io.BytesIO):
    """A file that counts the bytes read from it."""

    n = 0

    def read(self, size=-1):
        data = super().read(size)
        self.n += len(data)
        return data


def test_a_range_reads_its_lines_whatever_the_chunk_and_no_further_than_it_must():
    """Every line once over the ranges, for chunks smaller than a line (a line longer than a
    chunk is joined once) and larger; a range that no line starts in stops once past its end,
    instead of reading to the end of the long line that covers it."""
    data = _jsonl_bytes()
    lines = data.split(b"\n")[:-1]
    starts = {0} | {i + 1 for i, c in enumerate(data) if c == 10}
    for split in (5, 64, 301):
        for chunk in (1, 2, 7, 64, 1 << 20):
            got = []
            for a in range(0, len(data), split):
                b = min(a + split, len(data))
                f = _Counted(data)
                f.seek(max(a - 1, 0))
                got += list(R._lines(f, a, b, chunk=chunk))
                if not any(a <= s < b for s in starts):  # no line of its own: inside another
                    assert f.n <= b - a + 1 + chunk, (split, chunk, a, f.n)
            assert got == lines, (split, chunk)


def test_plan_units_on_ray_splits_only_plain_big_files(ray_session, tmp_path):
    data = _jsonl_bytes()
    (tmp_path / "big.jsonl").write_bytes(data)
    (tmp_path / "big.jsonl.gz").write_bytes(gzip.compress(data))
    (tmp_path / "small.jsonl").write_bytes(data[:50])
    files = [str(tmp_path / n) for n in ("big.jsonl", "big.jsonl.gz", "small.jsonl")]
    units = P.plan_units(files, split_bytes=300)
    by_file = {f: [u for u in units if u.path == f] for f in files}
    assert len(by_file[files[0]]) == -(-len(data) // 300)
    assert len(by_file[files[1]]) == 1 and len(by_file[files[2]]) == 1  # compressed and small: whole
    assert [u.name for u in units] == sorted({u.name for u in units})
    got = _records(t for u in by_file[files[0]] for t in R.read_unit(u, CFG))
    assert got == _records(R.read_file(files[0], 0, CFG))
    gz = _records(R.read_unit(by_file[files[1]][0], CFG))  # file 1: the same records, read whole
    assert [(k - (1 << 40), t, r) for k, _, t, r in gz] == [(k, t, r) for k, _, t, r in got]


def test_parquet_runs_of_row_groups(ray_session, tmp_path):
    path = tmp_path / "in.parquet"
    texts = [f"document {i} " + "word " * (i % 13) for i in range(250)]
    table = pa.table({"text": texts, "lang": ["en"] * 250})
    pq.write_table(table, path, row_group_size=20)  # 13 row groups
    units = P.plan_units([str(path)], split_bytes=1)  # one row group per unit
    assert len(units) == 13 and units[1].first_record == 21
    whole = _records(R.read_file(str(path), 0, CFG))
    assert _records(t for u in units for t in R.read_unit(u, CFG)) == whole
    assert whole[-1][1] == f"{path}:250"


@pytest.mark.parametrize("steps", [["normalize", "exact_dedup"], ["exact_dedup"]])
def test_curate_output_is_the_same_read_whole_or_in_ranges(ray_session, tmp_path, steps):
    from raylm.config import from_dict
    from raylm.curate.pipeline import CurateConfig, run

    rng = random.Random(3)
    docs = [{"id": f"d{i}", "text": " ".join(rng.choice(["alpha", "beta", "감자", "gamma"]) for _ in range(30))}
            for i in range(300)]
    docs += docs[:40]  # exact duplicates across ranges
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    outs = {}
    for split in (1 << 30, 4096):
        out = tmp_path / f"out-{split}"
        stats = run(from_dict(CurateConfig, {"steps": steps, "split_bytes": split}), [str(path)], str(out), quiet=True)
        outs[split] = (sorted(pq.read_table(out / "data").to_pylist(), key=lambda r: r["id"]),
                       sorted(r["id"] for r in pq.read_table(out / "rejected").to_pylist()),
                       stats["resume"]["units"])
    assert outs[1 << 30][2] == 1 and outs[4096][2] > 4
    assert outs[1 << 30][:2] == outs[4096][:2]
    assert len(outs[4096][1]) == 40
