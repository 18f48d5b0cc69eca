"""Feeding Ray Train: deterministic global order, exact resume, world-size check, real TorchTrainer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylm.data.loader import DataPosition, TrainBatches, global_order, make_batch

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


def _train_loop(cfg):
    import tempfile

    import ray.train
    import torch
    import torch.distributed as dist

    from raylm.data.loader import DataPosition, TrainBatches

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    position, step = None, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d, open(os.path.join(d, "data_position.json")) as f:
            state = json.load(f)
        position, step = DataPosition.from_dict(state["data"]), state["step"]
    weight = torch.zeros(1)  # a 1-parameter "model": its update is a real gloo all_reduce
    with TrainBatches(cfg["data"], cfg["batch_size"], rank, world, position, seed=cfg["seed"],
                      window=cfg["window"], num_sequences=cfg["n"]) as it, \
            open(os.path.join(cfg["log_dir"], f"rank{rank}.jsonl"), "a") as log:
        for batch in it:
            step += 1
            grad = batch["input_ids"].float().mean().reshape(1)
            dist.all_reduce(grad)
            weight -= 1e-3 * grad / world
            log.write(json.dumps({"step": step, "ids": batch["seq_id"].tolist(), "wait": it.last_wait_s}) + "\n")
            log.flush()
            if step in cfg["report_at"] or step == cfg["stop_at"]:
                with tempfile.TemporaryDirectory() as d:
                    ckpt = None
                    if rank == 0:
                        with open(os.path.join(d, "data_position.json"), "w") as f:
                            json.dump({"step": step, "data": it.position.state_dict()}, f)
                        ckpt = ray.train.Checkpoint.from_directory(d)
                    ray.train.report({"step": step, **it.stats()}, checkpoint=ckpt)
            if step == cfg["stop_at"]:
                return


def _fit(name: str, storage: Path, log_dir: Path, stop_at: int, packed_dir: str, report_at=()):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    log_dir.mkdir(exist_ok=True)
    cfg = {"data": packed_dir, "batch_size": B, "seed": SEED, "window": WINDOW, "n": N,
           "log_dir": str(log_dir), "stop_at": stop_at, "report_at": list(report_at)}
    return TorchTrainer(
        _train_loop,
        train_loop_config=cfg,
        scaling_config=ScalingConfig(num_workers=W, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=name, storage_path=str(storage)),
    ).fit()


def _steps(log_dir: Path) -> list[list[list[int]]]:
    per_rank = []
    for r in range(W):
        rows = [json.loads(line) for line in (log_dir / f"rank{r}.jsonl").read_text().splitlines()]
        assert [row["step"] for row in rows] == list(range(1, len(rows) + 1))
        assert all(row["wait"] >= 0 for row in rows)
        per_rank.append([row["ids"] for row in rows])
    return [list(s) for s in zip(*per_rank)]


def test_torch_trainer_resume_matches_uninterrupted_run(ray_session, packed_dir, tmp_path, monkeypatch):
    """Run B stops after k steps with a checkpoint, run C (same RunConfig name, so
    ``ray.train.get_checkpoint()`` is B's step-k checkpoint) finishes; B + C must equal the
    uninterrupted order. The uninterrupted reference A is the same TrainBatches run in this
    process for both ranks (it equals ``global_order``, see ``check_epochs``): a third trainer
    run would cost another ~15 s of worker start-up on a 2-core machine and check nothing more."""
    # the controller polls its workers every 2 s by default: most of a short run's wall time
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    K, k = STEPS_PER_EPOCH + 5, 10  # the resumed run crosses the epoch boundary
    full = [list(s) for s in zip(*[take(packed_dir, r, K, num_epochs=None)[0] for r in range(W)])]
    assert len(full) == K
    check_epochs(full, full_epochs=1)

    storage = tmp_path / "results"
    b = _fit("resume", storage, tmp_path / "BC", k, packed_dir, report_at=[4])  # checkpoints at 4 and k
    assert b.checkpoint is not None and b.metrics["step"] == k and b.metrics["data_wait_s"] >= 0
    assert _steps(tmp_path / "BC") == full[:k]
    c = _fit("resume", storage, tmp_path / "BC", K, packed_dir)  # same name: get_checkpoint() is step k
    assert c.metrics["step"] == K
    assert _steps(tmp_path / "BC") == full


def test_id_map_maps_indices_to_unit_position_ids_and_back():
    from raylm.data.loader import IdMap

    m = IdMap(np.array([0, 3, 7]), np.array([2, 3, 1]), shift=32)
    want = [0, 1, 3 << 32, (3 << 32) | 1, (3 << 32) | 2, 7 << 32]
    assert m.size == 6 and m.to_seq_id(np.arange(6)).tolist() == want
    assert m.to_index(np.array(want)).tolist() == list(range(6))
    assert m.to_index(np.array([2, 1 << 32, (3 << 32) | 3, 8 << 32])).tolist() == [-1] * 4
    assert m.seq_id_range(1, 4) == (1, (3 << 32) | 2)  # one seq_id range per index window
    ident = IdMap.identity(5)
    assert ident.to_seq_id(np.arange(5)).tolist() == list(range(5)) == ident.to_index(np.arange(5)).tolist()
