"""``raylm train`` on real text with real Ray Train workers (gloo on CPU).

The session's reference runs (``reference_runs``, ``tests/conftest.py``) on the packed sample
corpus: a 1-worker run, 2-worker DDP and 2-worker FSDP2 runs with the same global batch. A
worker killed mid-run and restarted from its checkpoint: ``test_preemption.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from raylm.cli import main
from raylm.config import ConfigError
from raylm.train.config import train_config
from raylm.train.report import write_report
from raylm.train.runlog import read_metrics
from raylm.train.trainer import fit, run_dir
from tests.train.sample import STEPS, VOCAB, config, losses


def test_two_workers_ddp_and_fsdp2_follow_the_one_worker_run(reference_runs):
    one, ddp, fsdp = (losses(reference_runs[k][0]) for k in ("one", "ddp", "fsdp"))
    assert len(one) == len(ddp) == len(fsdp) == STEPS
    np.testing.assert_allclose(ddp, one, rtol=2e-4)
    np.testing.assert_allclose(fsdp, one, rtol=2e-4)
    assert one[-1] < one[0] - 0.5  # it learns: the loss falls on real text
    assert one[0] == pytest.approx(np.log(VOCAB), rel=0.05)  # starts near uniform


def test_metrics_checkpoints_and_tensorboard(reference_runs):
    d, result = reference_runs["ddp"]
    rows = read_metrics(run_dir(train_config(d)))
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    last = rows[-1]
    assert last["tokens_per_s"] > 0 and last["grad_norm"] > 0 and last["peak_memory_gb"] > 0
    assert last["data_wait_s"] >= 0 and last["perplexity"] == pytest.approx(np.exp(last["loss"]))
    assert rows[0]["lr"] < rows[1]["lr"] < rows[2]["lr"] == pytest.approx(3e-3)  # 2 warmup updates
    assert rows[-1]["lr"] < rows[2]["lr"]  # then cosine decay
    assert result.checkpoint is not None
    with result.checkpoint.as_directory() as folder:
        names = sorted(p.name for p in Path(folder).iterdir())
        state = json.loads((Path(folder) / "state.json").read_text())
    assert {"model_and_optim", "state.json", "config.json", "rng-rank0.pt", "rng-rank1.pt"} <= set(names)
    assert state["step"] == STEPS and state["data"]["consumed"] == STEPS * 8
    assert list((Path(run_dir(train_config(d))) / "tensorboard").glob("events.out.tfevents.*"))


def test_a_checkpoint_alone_rebuilds_the_trained_model(reference_runs, shards):
    """load_model(checkpoint) gives the FSDP2 run's final weights on one CPU process: its loss on
    the first training batch is the trained one, far below the untrained model's."""
    import torch

    from raylm.checkpoint import CheckpointError, resolve_checkpoint
    from raylm.data.loader import TrainBatches
    from raylm.infer.checkpoint import load_model
    from raylm.model import Transformer

    d, result = reference_runs["fsdp"]
    model, cfg, state = load_model(result.checkpoint.path)
    assert state["step"] == STEPS and cfg.model.vocab_size == VOCAB and cfg.scale.strategy == "fsdp2"
    assert resolve_checkpoint(run_dir(train_config(d))) == Path(result.checkpoint.path)  # latest of the run
    with TrainBatches(shards, 8, 0, 1, None, seed=0, window=64, prefetch=0) as batches:
        b = next(batches)
    inputs = {k: b[k] for k in ("input_ids", "position_ids", "cu_seqlens", "max_seqlen")}
    with torch.no_grad():
        trained = float(model(**inputs, labels=b["labels"])[1])
        torch.manual_seed(3)
        untrained = float(Transformer(cfg.model)(**inputs, labels=b["labels"])[1])
    assert trained < untrained - 0.5 and untrained == pytest.approx(np.log(VOCAB), rel=0.05)
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        load_model(shards)


def test_bad_train_config_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="n_kv_heads"):
        train_config({"data": {"path": "x"}, "model": {"flavor": "debug", "n_kv_heads": 3}})
    with pytest.raises(ConfigError, match="flavor.*'huge'"):
        train_config({"data": {"path": "x"}, "model": {"flavor": "huge"}})
    cfg = tmp_path / "t.yaml"
    cfg.write_text("steps: many\ndata: {path: x}\n")
    assert main(["train", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "t.yaml" in err and "steps" in err and "Traceback" not in err


def test_spike_guard_skips_and_rolls_back_in_a_real_run(ray_session, shards, tmp_path):
    """A gradient-norm limit no step can meet makes every step a spike: the optimizer never
    steps (the loss does not fall), and every third spike rolls back to the last checkpoint;
    the run still ends after ``steps``."""
    d = config(shards, tmp_path, "spiky", 2, **{"spike_guard.max_grad_norm": 1e-9, "spike_guard.max_spikes": 3,
                                                  "checkpoint.every": 2})
    result = fit(train_config(d))
    assert result.error is None
    rows = read_metrics(run_dir(train_config(d)))
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(r["spike"] for r in rows)
    assert rows[-1]["rollbacks"] >= 1
    assert min(r["loss"] for r in rows) > rows[0]["loss"] - 0.05  # no update was applied
    page = Path(write_report(run_dir(train_config(d)))).read_text()  # raylm report counts and marks them
    assert f"<th>spikes skipped / rollbacks</th><td>{STEPS} / {rows[-1]['rollbacks']}</td>" in page


def test_a_run_the_cluster_has_no_room_for_fails_saying_so(ray_session, shards, tmp_path):
    """An elastic run whose minimum the cluster cannot hold (6 workers of 1 CPU on the session's 4)
    would wait for ever: after scale.wait_for_workers_s it fails, naming what it waited for."""
    from raylm.train.waiting import NoRoomForWorkers

    d = config(shards, tmp_path, "no-room", 1, **{"global_batch": 6, "micro_batch_size": 1,
                                                   "scale": {"num_workers": [6, 6], "cpus_per_worker": 1.0,
                                                             "wait_for_workers_s": 2}})
    from ray.train import ControllerError

    with pytest.raises(ControllerError) as failed:  # Ray Train's, around raylm's own
        fit(train_config(d))
    assert isinstance(failed.value.controller_failure, NoRoomForWorkers), repr(failed.value)
    assert "no room for 6 (scale.num_workers' minimum) worker(s) of CPU 1 each" in str(failed.value)
