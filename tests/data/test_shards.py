"""Token shards: packing per unit, deterministic ids, manifest, reading back (local path and URI)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylm.data.packing import PackConfig, Packer
from raylm.data.shards import UNIT_SHIFT, open_token_dataset, pack_unit, read_manifest, write_token_shards
from raylm.storage import InputError

SEQ_LEN = 16


def docs(seed: int, n: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(8, 400, rng.integers(1, 40)).tolist() + [2] for _ in range(n)]


def table(d: list[list[int]]) -> pa.Table:
    return pa.table({"tokens": pa.array(d, pa.list_(pa.int32()))})


def test_pack_unit_orders_rows_and_reports_accounting():
    d = docs(0, 30)
    group = pa.table({"tokens": pa.array(d, pa.list_(pa.int32())), "_unit": [7] * 30, "_row": list(range(30))})
    shuffled = group.take(pa.array(np.random.default_rng(1).permutation(30)))
    kw = {"cfg": PackConfig(seq_len=SEQ_LEN), "source": "s", "unit_column": "_unit", "order_column": "_row"}
    a, b = pack_unit(group, **kw), pack_unit(shuffled, **kw)
    assert a.equals(b)  # the order inside a unit comes from _row, not from the arrival order
    seqs, stats = a.slice(0, a.num_rows - 1), a.slice(a.num_rows - 1)
    assert stats.column("seq_id").to_pylist() == [-1]
    assert seqs.column("seq_id").to_pylist() == [(7 << UNIT_SHIFT) + i for i in range(seqs.num_rows)]
    stream = np.concatenate(d)
    assert stats.column("_tokens_in")[0].as_py() == len(stream)
    assert stats.column("_dropped")[0].as_py() == len(stream) % SEQ_LEN
    assert stats.column("_docs")[0].as_py() == 30
    want = Packer(PackConfig(seq_len=SEQ_LEN)).add([np.asarray(x) for x in d])
    assert seqs.column("tokens").to_pylist() == [w.tokens.tolist() for w in want]
    assert seqs.column("cu_seqlens").to_pylist() == [w.cu_seqlens.tolist() for w in want]


def test_write_read_round_trip_and_determinism(ray_session, tmp_path):
    tables = [table(docs(s, n)) for s, n in ((1, 40), (2, 0), (3, 25))]  # unit 1 is empty
    m = write_token_shards(tables, str(tmp_path / "a"), SEQ_LEN, source="web", tokenizer_hash="abc",
                           rows_per_shard=8, extra={"note": "x"})
    again = write_token_shards(tables, str(tmp_path / "b"), SEQ_LEN, source="web", rows_per_shard=8)
    assert again["num_sequences"] == m["num_sequences"]  # shard layout may differ; contents below
    on_disk = read_manifest(str(tmp_path / "a"))
    assert on_disk == m == json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m["tokenizer_hash"] == "abc" and m["note"] == "x" and m["seq_len"] == SEQ_LEN
    rows = [pq.ParquetFile(tmp_path / "a" / s["path"]).metadata.num_rows for s in m["shards"]]
    assert [s["rows"] for s in m["shards"]] == rows and sum(rows) == m["num_sequences"]
    assert m["sources"] == {"web": {"sequences": sum(rows), "tokens": sum(rows) * SEQ_LEN}}
    stream0, stream2 = (np.concatenate(t.column("tokens").to_pylist()) for t in (tables[0], tables[2]))
    assert m["document_tokens"] == len(stream0) + len(stream2) == m["num_tokens"] + m["dropped_tokens"]
    assert m["documents"] == 65 and m["padded_tokens"] == 0
    assert m["waste_fraction"] == pytest.approx(m["dropped_tokens"] / m["document_tokens"])

    ds = open_token_dataset(f"file://{tmp_path / 'a'}")  # a URI, read through pyarrow's filesystem
    got = ds.take_all()
    ids = [r["seq_id"] for r in got]
    assert ids == sorted(ids) and len(ids) == m["num_sequences"]
    assert {i >> UNIT_SHIFT for i in ids} == {0, 2}
    for unit, stream in ((0, stream0), (2, stream2)):
        toks = np.concatenate([r["tokens"] for r in got if r["seq_id"] >> UNIT_SHIFT == unit])
        assert (toks == stream[: len(toks)]).all() and len(stream) - len(toks) < SEQ_LEN
    for r in got:
        cu = list(r["cu_seqlens"])
        assert len(r["tokens"]) == SEQ_LEN and cu[0] == 0 and cu[-1] == SEQ_LEN
        assert all(x < y for x, y in zip(cu, cu[1:])) and r["source"] == "web"
    b = open_token_dataset(str(tmp_path / "b")).take_all()
    assert [r["seq_id"] for r in b] == ids
    assert [list(r["tokens"]) for r in b] == [list(r["tokens"]) for r in got]


def test_padding_overwrite_and_missing_manifest(ray_session, tmp_path):
    m = write_token_shards([table([[9, 9, 9, 2]])], str(tmp_path / "p"), SEQ_LEN, drop_tail=False, pad_id=0)
    assert m["num_sequences"] == 1 and m["padded_tokens"] == SEQ_LEN - 4
    assert m["waste_fraction"] == pytest.approx((SEQ_LEN - 4) / SEQ_LEN)
    row = pq.read_table(tmp_path / "p" / "shard-00000.parquet").to_pylist()[0]
    assert row["tokens"] == [9, 9, 9, 2] + [0] * (SEQ_LEN - 4) and row["cu_seqlens"] == [0, 4, SEQ_LEN]
    with pytest.raises(InputError, match="not empty"):
        write_token_shards([table([[1, 2]])], str(tmp_path / "p"), SEQ_LEN)
    m = write_token_shards([table([[1, 2]])], str(tmp_path / "p"), SEQ_LEN, overwrite=True)
    assert m["num_sequences"] == 0 and m["shards"] == [] and m["dropped_tokens"] == 2
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["manifest.json"]
    assert open_token_dataset(str(tmp_path / "p")).count() == 0
    with pytest.raises(InputError, match="no token-shard manifest"):
        read_manifest(str(tmp_path / "nope"))
