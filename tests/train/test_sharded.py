"""Sharded checkpoints (torch.distributed.checkpoint) through real runs: the session's 2-worker
FSDP2 reference run (``reference_runs["fsdp"]``) writes every rank's own shards, no gathered
``model.pt``; copies of that run go on from its last checkpoint on 1 worker and on 4 (saving
asynchronously) with the same global batch, re-sharding the state: each step trains on exactly
the sequences of the global order, and the two runs follow each other."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from raylm.checkpoint import SHARDS, model_state_dict, optimizer_state_dict
from raylm.data.position import global_order
from raylm.infer.checkpoint import load_model
from raylm.train.config import train_config
from raylm.train.runlog import read_metrics
from raylm.train.trainer import fit, run_dir
from tests.train.sample import STEPS, with_keys
from tests.train.test_preemption import data_order

MORE = 4  # steps after the reference run's last checkpoint
N, WINDOW, GLOBAL = 256, 64, 8  # the ``shards`` fixture, its window and the reference runs' global batch


def test_each_rank_writes_its_own_shards(reference_runs):
    d, result = reference_runs["fsdp"]
    folder = Path(result.checkpoint.path)
    files = {p.name: p.stat().st_size for p in (folder / SHARDS).iterdir()}
    assert set(files) == {".metadata", "__0_0.distcp", "__1_0.distcp"}
    assert not (folder / "model.pt").exists() and not (folder / "optim.pt").exists()
    shards = files["__0_0.distcp"], files["__1_0.distcp"]
    assert min(shards) > 0.4 * sum(shards)  # half of the state each: nothing gathered on rank 0
    weights, optim = model_state_dict(folder), optimizer_state_dict(folder)
    cfg = train_config(d)
    assert sum(t.numel() for t in weights.values()) == cfg.model.num_params()
    assert set(optim["state"]) == set(weights) and optim["state"]["norm.weight"]["exp_avg"].shape == (64,)


@pytest.fixture(scope="module")
def resized(reference_runs, tmp_path_factory) -> dict[int, tuple[str, object]]:
    """The FSDP2 reference run copied and resumed for ``MORE`` steps on 1 worker (4 sequences,
    2 micro-batches) and on 4 (2 sequences, asynchronous saves): workers -> (run folder, Result)."""
    d, _ = reference_runs["fsdp"]
    storage = tmp_path_factory.mktemp("resized")
    out = {}
    for workers, micro in ((1, 4), (4, 2)):
        name = f"fsdp-on-{workers}"
        shutil.copytree(run_dir(train_config(d)), storage / name)
        e = with_keys(json.loads(json.dumps(d)), {
            "name": name, "storage_path": str(storage), "steps": STEPS + MORE, "log_seq_ids": True,
            "global_batch": GLOBAL, "micro_batch_size": micro, "scale.num_workers": workers,
            "checkpoint.async_save": workers == 4})
        result = fit(train_config(e))
        assert result.error is None, result.error
        out[workers] = (run_dir(train_config(e)), result)
    return out


def test_a_two_worker_checkpoint_resumes_on_one_and_on_four_workers(resized):
    order = global_order(N, WINDOW, 0, 0)
    for workers, (folder, _) in resized.items():
        ranks = [data_order(folder, r) for r in range(workers)]
        assert all(sorted(r) == list(range(STEPS + 1, STEPS + MORE + 1)) for r in ranks)  # from step 9 on
        for step in range(STEPS + 1, STEPS + MORE + 1):  # the global order, sequence for sequence
            got = sorted(i for r in ranks for i in r[step])
            assert got == sorted(order[(step - 1) * GLOBAL:step * GLOBAL].tolist()), (workers, step)
        meta = json.loads(Path(folder, "meta.json").read_text())
        assert (meta["world_size"], meta["grad_accum"]) == ((1, 2) if workers == 1 else (4, 1))
        rows = read_metrics(folder)
        assert [r["step"] for r in rows] == list(range(1, STEPS + MORE + 1))
    one, four = ([r["loss"] for r in read_metrics(resized[w][0])][STEPS:] for w in (1, 4))
    np.testing.assert_allclose(four, one, rtol=2e-4)  # the same state and data, re-sharded


def test_an_async_saved_checkpoint_is_complete(resized):
    """The 4-worker run saved asynchronously: its last checkpoint holds every rank's shards,
    is the run's result, and rebuilds the model for eval and generation."""
    _, result = resized[4]
    folder = Path(result.checkpoint.path)
    assert {p.name for p in (folder / SHARDS).iterdir()} == {".metadata"} | {f"__{r}_0.distcp" for r in range(4)}
    model, cfg, state = load_model(folder)
    assert state["step"] == STEPS + MORE and state["world_size"] == 4 and cfg.global_batch == GLOBAL


def test_a_checkpoint_whose_shards_did_not_all_arrive_is_never_picked(reference_runs, tmp_path):
    """Each rank's files reach storage on their own: a node lost while a checkpoint uploads
    leaves rank 0's state.json and .metadata without rank 1's shard. ``raylm eval``/``generate``
    and ``continual.init_from`` (``find_checkpoint``) take the latest complete one instead."""
    from raylm.checkpoint import CheckpointError, find_checkpoint, rng_file

    d, result = reference_runs["fsdp"]
    run = tmp_path / "run"
    shutil.copytree(run_dir(train_config(d)), run)
    ckpts = sorted(p for p in run.iterdir() if (p / "state.json").is_file())
    assert len(ckpts) >= 2, ckpts
    latest, before = ckpts[-1], ckpts[-2]
    assert find_checkpoint(run) == str(latest)
    (latest / SHARDS / "__1_0.distcp").unlink()
    assert find_checkpoint(run) == str(before)
    with pytest.raises(CheckpointError, match=r"incomplete checkpoint.*__1_0\.distcp"):
        find_checkpoint(latest)
    for folder in ckpts[:-1]:  # the other rank's RNG state counts too
        (folder / rng_file(1)).unlink()
    with pytest.raises(CheckpointError, match="no checkpoint inside it"):
        find_checkpoint(run)
