"""Feeding Ray Train: deterministic global order, exact resume, world-size check. Resume across a
real Ray Train restart (a killed worker): ``tests/train/test_preemption.py``."""

from __future__ import annotations

import json
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylm.data.loader import TrainBatches, make_batch
from raylm.data.position import DataPosition, global_order

N, L, B, W, WINDOW, SEED = 200, 16, 4, 2, 70, 7  # windows of 70, 70, 60: rank blocks span windows
STEPS_PER_EPOCH = N // (B * W)  # 25


def packed_table(lo: int, hi: int) -> pa.Table:
    ids = np.arange(lo, hi, dtype=np.int64)
    tokens = ids[:, None] * L + np.arange(L)  # the row's seq_id is readable from its tokens
    cu = [[0, L] if i % 3 == 0 else [0, 1 + i % (L - 1), L] for i in ids]
    return pa.table({
        "seq_id": pa.array(ids),
        "tokens": pa.array(tokens.astype(np.int32).tolist(), type=pa.list_(pa.int32())),
        "cu_seqlens": pa.array(cu, type=pa.list_(pa.int32())),
    })


@pytest.fixture(scope="module")
def packed_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("packed")
    for k, lo in enumerate(range(0, N, 50)):
        pq.write_table(packed_table(lo, lo + 50), d / f"shard-{k:05d}.parquet", row_group_size=16)
    return str(d)


def take(data, rank: int, steps: int | None, position: DataPosition | None = None, prefetch: int = 1,
         num_epochs: int | None = 2):
    """``steps`` batches (or all) of one rank: the seq_id lists and the position after them."""
    out = []
    with TrainBatches(data, B, rank, W, position, seed=SEED, prefetch=prefetch, window=WINDOW,
                      num_sequences=N, num_epochs=num_epochs) as it:
        for batch in it:
            ids = batch["seq_id"].numpy()
            np.testing.assert_array_equal(batch["input_ids"][:, 0].numpy() // L, ids)
            out.append(ids.tolist())
            if steps is not None and len(out) == steps:
                break
        assert it.data_wait_s >= it.last_wait_s >= 0
        return out, it.position


def check_epochs(steps: list[list[list[int]]], full_epochs: int) -> None:
    """``steps[s][r]``: the seq_ids of rank r at step s. Each full epoch is exactly the seeded
    global order (so every seq_id once); a partial epoch has no duplicates."""
    for e in range(-(-len(steps) // STEPS_PER_EPOCH)):
        flat = [i for step in steps[e * STEPS_PER_EPOCH:(e + 1) * STEPS_PER_EPOCH] for r in step for i in r]
        assert len(flat) == len(set(flat))
        if e < full_epochs:
            assert flat == global_order(N, WINDOW, SEED, e).tolist()
            assert sorted(flat) == list(range(N))


def test_global_order_is_a_seeded_permutation():
    a = global_order(N, WINDOW, SEED, 0)
    assert sorted(a.tolist()) == list(range(N))
    np.testing.assert_array_equal(a, global_order(N, WINDOW, SEED, 0))
    assert a.tolist() != global_order(N, WINDOW, SEED, 1).tolist()
    assert a.tolist() != global_order(N, WINDOW, SEED + 1, 0).tolist()


def test_make_batch_labels_and_positions():
    tokens = np.arange(2 * 6, dtype=np.int32).reshape(2, 6)
    b = make_batch(np.array([5, 9]), tokens, [np.array([0, 2, 6]), np.array([0, 6])])
    assert b["cu_seqlens"].tolist() == [0, 2, 6, 12] and b["max_seqlen"] == 6
    assert b["position_ids"].tolist() == [[0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]]
    assert b["labels"].tolist() == [[1, -100, 3, 4, 5, -100], [7, 8, 9, 10, 11, -100]]


@pytest.mark.parametrize("source", ["parquet", "dataset"])
def test_two_ranks_order_and_exact_resume(ray_session, packed_dir, source):
    data = packed_dir if source == "parquet" else ray_session.data.from_arrow(packed_table(0, N))
    full = [take(data, r, None, prefetch=r)[0] for r in range(W)]  # rank 1 reads ahead, rank 0 not
    assert all(len(f) == 2 * STEPS_PER_EPOCH for f in full)
    steps = [list(s) for s in zip(*full)]
    check_epochs(steps, full_epochs=2)

    k = 7
    parts = [take(data, r, k) for r in range(W)]
    assert parts[0][1] == parts[1][1] == DataPosition(0, k * B * W, SEED, W, B, WINDOW, N)
    saved = json.loads(json.dumps(parts[0][1].state_dict()))
    rest = [take(data, r, None, DataPosition.from_dict(saved))[0] for r in range(W)]
    assert [p[0] + q for p, q in zip(parts, rest)] == full


def test_world_size_change_is_refused(packed_dir):
    pos = DataPosition(epoch=1, consumed=16, seed=SEED, world_size=2, batch_size=B, window=WINDOW,
                       num_sequences=N)
    with pytest.raises(ValueError, match="saved with world_size=2 .* this run has world_size=3"):
        TrainBatches(packed_dir, B, 0, 3, pos, seed=SEED, window=WINDOW)
    with pytest.raises(ValueError, match="seed"):
        TrainBatches(packed_dir, B, 0, 2, pos, seed=SEED + 1, window=WINDOW)


def steps_of(data, world: int, batch: int, accum: int, position: DataPosition | None, steps: int) -> list[set]:
    """The sequences of each of ``steps`` optimizer steps at a split (world x batch x accum), all ranks."""
    out = [set() for _ in range(steps)]
    for rank in range(world):
        with TrainBatches(data, batch, rank, world, position, seed=SEED, prefetch=0, window=WINDOW,
                          num_sequences=N, grad_accum=accum) as it:
            for s in range(steps):
                for _ in range(accum):
                    out[s] |= set(next(it)["seq_id"].tolist())
    return out


def test_a_position_resumes_on_another_number_of_workers(packed_dir):
    """Saved by 2 workers x 4 sequences (8 per step) in epoch 0, resumed by 1 x 4 x 2 micro-batches,
    4 x 2 and 4 x 1 x 2: every step trains on the sequences the 2 workers would have, and the
    epoch rolls over after the same step (N = 200: 25 steps of 8, the same tail skipped)."""
    k = 20
    whole = steps_of(packed_dir, W, B, 1, None, 30)
    saved = take(packed_dir, 0, k)[1]
    for world, batch, accum in ((1, B, 2), (4, 2, 1), (4, 1, 2)):
        assert steps_of(packed_dir, world, batch, accum, saved, 10) == whole[k:]
    with pytest.raises(ValueError, match="set global_batch: 8"):
        TrainBatches(packed_dir, B, 0, 1, saved, seed=SEED, window=WINDOW)  # 4 per step


def test_id_map_maps_indices_to_unit_position_ids_and_back():
    from raylm.data.reader import IdMap

    m = IdMap(np.array([0, 3, 7]), np.array([2, 3, 1]), shift=32)
    want = [0, 1, 3 << 32, (3 << 32) | 1, (3 << 32) | 2, 7 << 32]
    assert m.size == 6 and m.to_seq_id(np.arange(6)).tolist() == want
    assert m.to_index(np.array(want)).tolist() == list(range(6))
    assert m.to_index(np.array([2, 1 << 32, (3 << 32) | 3, 8 << 32])).tolist() == [-1] * 4
    assert m.seq_id_range(1, 4) == (1, (3 << 32) | 2)  # one seq_id range per index window
    ident = IdMap.identity(5)
    assert ident.to_seq_id(np.arange(5)).tolist() == list(range(5)) == ident.to_index(np.arange(5)).tolist()


def test_a_stuck_read_fails_instead_of_hanging(packed_dir, monkeypatch):
    """A read that gives nothing (an object store that stops answering, a Ray Data read with no
    CPU to run on) fails the loader after ``timeout_s`` with the data named, instead of leaving
    the run waiting for ever."""
    from raylm.data.reader import SeqSource

    release = threading.Event()

    def stuck(self, lo, hi, batch_size):
        release.wait(60)
        yield from ()

    monkeypatch.setattr(SeqSource, "batches", stuck)
    batches = TrainBatches(packed_dir, B, 0, W, seed=SEED, window=WINDOW, timeout_s=1)
    try:
        with pytest.raises(TimeoutError, match=f"{packed_dir}, rank 0: no data from the reader for 1 s"):
            next(batches)
    finally:
        release.set()
        batches.close()
