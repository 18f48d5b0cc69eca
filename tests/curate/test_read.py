import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from raylm.curate import read as R
from raylm.curate import schema as S


def rows(path, cfg=None):
    tables = list(R.read_file(str(path), 3, cfg or R.ReadConfig()))
    return pa.concat_tables(tables).to_pylist() if tables else []


def test_jsonl_plain_gz_zst_read_the_same(tmp_path):
    lines = [json.dumps({"id": f"x{i}", "text": f"document {i}", "url": f"u{i}"}) for i in range(5)]
    data = ("\n".join(lines) + "\n").encode()
    (tmp_path / "a.jsonl").write_bytes(data)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(data))
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    (tmp_path / "b.jsonl.zstd").write_bytes(zstandard.ZstdCompressor().compress(data))  # suffixes pyarrow's
    (tmp_path / "C.JSONL.GZ").write_bytes(gzip.compress(data))  # own detection does not know
    got = [rows(tmp_path / n) for n in ("a.jsonl", "a.jsonl.gz", "a.jsonl.zst", "b.jsonl.zstd", "C.JSONL.GZ")]
    assert [r["text"] for r in got[0]] == [f"document {i}" for i in range(5)]
    assert got[0][2]["url"] == "u2" and got[0][2][S.ID] == "x2"
    assert all([r[S.TEXT] for r in g] == [r[S.TEXT] for r in got[0]] for g in got)
    keys = [r[S.KEY] for r in got[0]]
    assert keys == sorted(keys) and len(set(keys)) == 5 and keys[0] >> 40 == 3


def test_bad_records_are_quarantined_with_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b'{"text": "fine"}\n{not json\n\n{"title": "no text"}\n{"text": "  "}\n'
                  b'{"text": "caf\xe9"}\n[1, 2]\n{"text": "also fine", "id": 7}\n')
    got = rows(p)
    reasons = {r[S.ID]: r[S.DROP_REASON] for r in got}
    assert reasons == {
        f"{p}:1": None, f"{p}:2": "malformed_json", f"{p}:4": "missing_text", f"{p}:5": "empty",
        f"{p}:6": "invalid_utf8", f"{p}:7": "malformed_json", "7": None,
    }
    assert all(r[S.DROP_STEP] == ("read" if r[S.DROP_REASON] else None) for r in got)


def test_too_large_document(tmp_path):
    p = tmp_path / "big.jsonl"
    p.write_text(json.dumps({"text": "x" * 2000}) + "\n" + json.dumps({"text": "small"}) + "\n")
    got = rows(p, R.ReadConfig(max_doc_bytes=1000))
    assert [r[S.DROP_REASON] for r in got] == ["too_large", None]


def test_parquet_with_custom_fields(tmp_path):
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"doc": ["alpha", None], "uid": ["u1", "u2"], "score": [0.5, 0.7]}), p)
    got = rows(p, R.ReadConfig(text_field="doc", id_field="uid"))
    assert [(r[S.ID], r[S.TEXT], r["score"], r[S.DROP_REASON]) for r in got][0] == ("u1", "alpha", 0.5, None)
    assert got[1][S.DROP_REASON] == "missing_text"


def test_text_file_is_one_document(tmp_path):
    p = tmp_path / "doc.txt"
    p.write_text("제1조 대한민국은 민주공화국이다.\n\n둘째 문단.", encoding="utf-8")
    got = rows(p)
    assert len(got) == 1 and got[0][S.TEXT].startswith("제1조") and got[0][S.ID] == str(p)


def test_expand_inputs(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.jsonl", "a.parquet", "sub/c.txt", "notes.csv", ".hidden.jsonl"):
        (tmp_path / name).write_text("")
    files = R.expand_inputs([str(tmp_path)])
    assert [f.split("/")[-1] for f in files] == ["a.parquet", "b.jsonl", "c.txt"]
    with pytest.raises(R.InputError, match="no such file"):
        R.expand_inputs([str(tmp_path / "missing")])
    with pytest.raises(R.InputError, match="unknown file type"):
        R.expand_inputs([str(tmp_path / "notes.csv")])
