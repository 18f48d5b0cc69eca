"""Sequence packing: boundaries, positions, no lost tokens, waste, pack_table and the document mask."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from raylm.config import ConfigError, from_dict
from raylm.data.packing import PackConfig, Packer, PackStats, document_mask, pack_table

EOS = 2


def make_docs(rng: np.random.Generator, n: int, mean: float = 500.0, sigma: float = 1.0) -> list[np.ndarray]:
    """Lognormal lengths with the given mean; every document ends in eos; ids are >= 8."""
    mu = np.log(mean) - sigma**2 / 2
    lengths = np.maximum(1, rng.lognormal(mu, sigma, size=n).astype(np.int64))
    return [np.append(rng.integers(8, 32000, size=k - 1), EOS).astype(np.int32) for k in lengths]


def check_packed(seqs, docs: list[np.ndarray], seq_len: int, drop_tail: bool) -> None:
    """Every segment holds one document's tokens, positions restart, and the segments of each
    document concatenate back to the document (only the final tail may be missing)."""
    pieces: dict[int, list[np.ndarray]] = {}
    order = []
    for s in seqs:
        assert s.tokens.dtype == np.int32 and s.tokens.shape == (seq_len,)
        assert s.cu_seqlens.dtype == np.int32
        assert s.cu_seqlens[0] == 0 and s.cu_seqlens[-1] == seq_len
        assert np.all(np.diff(s.cu_seqlens) > 0)
        assert len(s.doc_ids) == len(s.cu_seqlens) - 1
        for j, doc in enumerate(s.doc_ids):
            a, b = s.cu_seqlens[j], s.cu_seqlens[j + 1]
            np.testing.assert_array_equal(s.position_ids[a:b], np.arange(b - a))
            if doc < 0:
                assert not drop_tail and s is seqs[-1] and j == len(s.doc_ids) - 1
                assert np.all(s.tokens[a:b] == 0)
                continue
            pieces.setdefault(int(doc), []).append(s.tokens[a:b])
            order.append(int(doc))
    assert order == sorted(order), "documents come out in order"
    nonempty = [i for i, d in enumerate(docs) if len(d)]
    got = {i: np.concatenate(p) for i, p in pieces.items()}
    lost = 0
    for i in nonempty:
        d = docs[i]
        g = got.get(i, np.zeros(0, np.int32))
        np.testing.assert_array_equal(g, d[: len(g)])
        lost += len(d) - len(g)
        if len(g) < len(d):  # only the tail of the stream may be missing
            assert drop_tail
            assert all(len(got.get(k, [])) == 0 for k in nonempty if k > i)
    assert lost < seq_len
    if not drop_tail:
        assert lost == 0


@pytest.mark.parametrize("drop_tail", [True, False])
@pytest.mark.parametrize("seq_len", [1, 7, 64, 2048])
def test_segments_hold_exactly_one_document_and_nothing_is_lost(drop_tail, seq_len):
    rng = np.random.default_rng(seq_len)
    docs = make_docs(rng, 300 if seq_len > 1 else 40, mean=60.0)
    docs[5] = np.zeros(0, np.int32)  # an empty document makes no segment
    packer = Packer(PackConfig(seq_len=seq_len, drop_tail=drop_tail))
    seqs = []
    for start in range(0, len(docs), 37):  # batching must not matter
        seqs += packer.add(docs[start : start + 37])
    seqs += packer.flush()
    check_packed(seqs, docs, seq_len, drop_tail)
    total = sum(len(d) for d in docs)
    assert packer.stats.tokens_in == total
    assert len(seqs) == (total // seq_len if drop_tail else -(-total // seq_len))
    if drop_tail:
        assert packer.stats.dropped == total % seq_len and packer.stats.padded == 0
    else:
        assert packer.stats.padded == (-total) % seq_len and packer.stats.dropped == 0


def test_batching_does_not_change_the_output():
    docs = make_docs(np.random.default_rng(1), 200, mean=100.0)
    one = Packer(PackConfig(seq_len=128, drop_tail=False))
    a = one.add(docs) + one.flush()
    two = Packer(PackConfig(seq_len=128, drop_tail=False))
    b = [s for d in docs for s in two.add([d])] + two.flush()
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.tokens, y.tokens)
        np.testing.assert_array_equal(x.cu_seqlens, y.cu_seqlens)
        np.testing.assert_array_equal(x.doc_ids, y.doc_ids)


def test_split_document_continues_as_a_new_segment_at_position_zero():
    docs = [np.arange(10, 16, dtype=np.int32), np.arange(20, 30, dtype=np.int32)]  # 6 + 10 tokens
    packer = Packer(PackConfig(seq_len=8, drop_tail=False))
    s1, s2 = packer.add(docs) + packer.flush()
    np.testing.assert_array_equal(s1.tokens, [10, 11, 12, 13, 14, 15, 20, 21])
    np.testing.assert_array_equal(s1.cu_seqlens, [0, 6, 8])
    np.testing.assert_array_equal(s1.doc_ids, [0, 1])
    np.testing.assert_array_equal(s1.position_ids, [0, 1, 2, 3, 4, 5, 0, 1])
    np.testing.assert_array_equal(s2.tokens, [22, 23, 24, 25, 26, 27, 28, 29])
    np.testing.assert_array_equal(s2.cu_seqlens, [0, 8])
    np.testing.assert_array_equal(s2.doc_ids, [1])
    np.testing.assert_array_equal(s2.position_ids, np.arange(8))
    assert packer.flush() == []


def test_padding_is_its_own_segment():
    packer = Packer(PackConfig(seq_len=8, drop_tail=False, pad_id=0))
    (s,) = packer.add([np.array([9, 9, 9], dtype=np.int32)]) + packer.flush()
    np.testing.assert_array_equal(s.tokens, [9, 9, 9, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(s.cu_seqlens, [0, 3, 8])
    np.testing.assert_array_equal(s.doc_ids, [0, -1])
    np.testing.assert_array_equal(s.position_ids, [0, 1, 2, 0, 1, 2, 3, 4])
    assert packer.stats.padded == 5 and packer.waste_fraction == pytest.approx(5 / 8)


def test_append_eos():
    packer = Packer(PackConfig(seq_len=4, append_eos=True, eos_id=EOS))
    (s,) = packer.add([np.array([10], np.int32), np.array([11, 12], np.int32)])
    np.testing.assert_array_equal(s.tokens, [10, EOS, 11, 12])
    np.testing.assert_array_equal(s.cu_seqlens, [0, 2, 4])
    assert packer.pending_tokens == 1  # the second document's eos waits
    assert packer.flush() == [] and packer.stats.dropped == 1


def test_waste_under_half_a_percent_on_realistic_lengths():
    rng = np.random.default_rng(0)
    docs = make_docs(rng, 4000, mean=500.0)  # ~2M tokens
    for drop_tail in (True, False):
        packer = Packer(PackConfig(seq_len=2048, drop_tail=drop_tail))
        seqs = packer.add(docs) + packer.flush()
        assert packer.waste_fraction < 0.005, packer.waste_fraction
        assert packer.waste_fraction > 0 or packer.stats.tokens_in % 2048 == 0
        assert len(seqs) == packer.stats.sequences
    # pack_table, per batch of 1,000 documents (~0.5M tokens) as map_batches would see them
    stats = PackStats()
    for start in range(0, len(docs), 1000):
        batch = pa.table(
            {"tokens": pa.array([d.tolist() for d in docs[start : start + 1000]], pa.list_(pa.int32()))}
        )
        pack_table(batch, PackConfig(seq_len=2048), stats=stats)
    assert stats.waste_fraction < 0.005, stats.waste_fraction


def test_pack_table_matches_the_packer_and_has_the_schema():
    docs = make_docs(np.random.default_rng(3), 120, mean=80.0)
    table = pa.table(
        {"tokens": pa.array([d.tolist() for d in docs], pa.list_(pa.int32())), "id": list(range(120))}
    )
    for drop_tail in (True, False):
        cfg = PackConfig(seq_len=256, drop_tail=drop_tail)
        out = pack_table(table.slice(1), cfg)  # a slice: offsets do not start at 0
        assert out.schema == pa.schema(
            [
                ("tokens", pa.list_(pa.int32())),
                ("cu_seqlens", pa.list_(pa.int32())),
                ("num_segments", pa.int32()),
            ]
        )
        packer = Packer(cfg)
        seqs = packer.add(docs[1:]) + packer.flush()
        assert out.num_rows == len(seqs) > 0
        rows = out.to_pylist()
        for row, s in zip(rows, seqs):
            assert row["tokens"] == s.tokens.tolist()
            assert row["cu_seqlens"] == s.cu_seqlens.tolist()
            assert row["num_segments"] == s.num_segments


def test_pack_table_empty_and_null_documents():
    cfg = PackConfig(seq_len=4)
    out = pack_table(pa.table({"tokens": pa.array([None, [], [9, 9, 9, 9, 9]], pa.list_(pa.int32()))}), cfg)
    assert out.column("tokens").to_pylist() == [[9, 9, 9, 9]]
    assert out.column("cu_seqlens").to_pylist() == [[0, 4]]
    empty = pack_table(pa.table({"tokens": pa.array([], pa.list_(pa.int32()))}), cfg)
    assert empty.num_rows == 0


def test_document_mask_is_causal_and_block_diagonal():
    mask = document_mask(np.array([0, 2, 5], np.int32), 5)
    expected = np.array(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 0, 1, 0, 0],
            [0, 0, 1, 1, 0],
            [0, 0, 1, 1, 1],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(mask, expected)
    with pytest.raises(ValueError):
        document_mask(np.array([0, 3]), 5)


def test_config_validation():
    with pytest.raises(ConfigError, match="seq_len"):
        from_dict(PackConfig, {"seq_len": 0})
    assert from_dict(PackConfig, {"seq_len": "4096", "drop_tail": "false"}).seq_len == 4096
