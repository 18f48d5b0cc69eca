"""``raylm train`` on real text with real Ray Train workers (gloo on CPU).

One module fixture packs the shipped sample corpus into token shards; the runs share it:
a 1-worker run, 2-worker DDP and 2-worker FSDP2 runs with the same global batch, and a
2-worker run whose worker process is killed mid-run and restarted from its checkpoint.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylm.cli import main
from raylm.config import ConfigError
from raylm.data.packing import PackConfig, Packer
from raylm.data.tokenizer import TokenizerConfig, load_tokenizer, train_from_iterator
from raylm.train.config import train_config
from raylm.train.trainer import fit, read_metrics, run_dir

SAMPLE = Path(__file__).parents[2] / "data/sample/corpus.jsonl.gz"
SEQ_LEN, VOCAB, STEPS = 64, 1024, 8


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """The sample corpus tokenised (a 512-piece BPE trained on it) and packed into 64-token
    sequences with dense seq_ids, as one Parquet folder."""
    tmp = tmp_path_factory.mktemp("shards")
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f][:60]
    lines = [x for d in docs for x in d.splitlines() if x.strip()]
    model = train_from_iterator(lines, str(tmp / "tok"), TokenizerConfig(vocab_size=VOCAB, num_threads=1, character_coverage=0.98))
    sp = load_tokenizer(str(model))
    packer = Packer(PackConfig(seq_len=SEQ_LEN))
    seqs = packer.add([np.asarray(sp.encode(d, add_eos=True), np.int32) for d in docs]) + packer.flush()
    seqs = seqs[:256]
    table = pa.table({
        "seq_id": pa.array(np.arange(len(seqs), dtype=np.int64)),
        "tokens": pa.array([s.tokens.tolist() for s in seqs], pa.list_(pa.int32())),
        "cu_seqlens": pa.array([s.cu_seqlens.tolist() for s in seqs], pa.list_(pa.int32())),
    })
    (tmp / "data").mkdir()
    pq.write_table(table, tmp / "data" / "shard-00000.parquet", row_group_size=64)
    return str(tmp / "data")


def config(shards: str, storage: Path, name: str, workers: int, **kw) -> dict:
    base = {
        "name": name, "storage_path": str(storage), "steps": STEPS, "log_every": 1, "seed": 3,
        "model": {"flavor": "debug", "vocab_size": VOCAB, "max_seq_len": SEQ_LEN, "attention": "sdpa"},
        "data": {"path": shards, "window": 64, "prefetch": 1},
        "optim": {"lr": 3e-3, "schedule": {"name": "cosine", "warmup_steps": 2}},
        "micro_batch_size": 8 // workers, "grad_accum": 1,
        "scale": {"num_workers": workers, "cpus_per_worker": 0.5},
        "checkpoint": {"every": 3, "keep": 2},
        "tensorboard": True,
    }
    for key, value in kw.items():
        node = base
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return base


def losses(cfg_dict: dict) -> list[float]:
    return [row["loss"] for row in read_metrics(run_dir(train_config(cfg_dict)))]


@pytest.fixture(scope="module")
def runs(ray_session, shards, tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    out = {}
    for name, workers, extra in (("one", 1, {}), ("ddp", 2, {}), ("fsdp", 2, {"scale.strategy": "fsdp2"})):
        d = config(shards, storage, name, workers, **extra)
        result = fit(train_config(d))
        assert result.error is None
        out[name] = (d, result)
    return out


def test_two_workers_ddp_and_fsdp2_follow_the_one_worker_run(runs):
    one, ddp, fsdp = (losses(runs[k][0]) for k in ("one", "ddp", "fsdp"))
    assert len(one) == len(ddp) == len(fsdp) == STEPS
    np.testing.assert_allclose(ddp, one, rtol=2e-4)
    np.testing.assert_allclose(fsdp, one, rtol=2e-4)
    assert one[-1] < one[0] - 0.5  # it learns: the loss falls on real text
    assert one[0] == pytest.approx(np.log(VOCAB), rel=0.05)  # starts near uniform


def test_metrics_checkpoints_and_tensorboard(runs):
    d, result = runs["ddp"]
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
    assert {"model.pt", "optim.pt", "state.json", "rng-rank0.pt", "rng-rank1.pt"} <= set(names)
    assert state["step"] == STEPS and state["data"]["consumed"] == STEPS * 8
    assert list((Path(run_dir(train_config(d))) / "tensorboard").glob("events.out.tfevents.*"))


def test_a_checkpoint_alone_rebuilds_the_trained_model(runs, shards):
    """load_model(checkpoint) gives the FSDP2 run's final weights on one CPU process: its loss on
    the first training batch is the trained one, far below the untrained model's."""
    import torch

    from raylm.data.loader import TrainBatches
    from raylm.infer.checkpoint import CheckpointError, load_model, resolve_checkpoint
    from raylm.model import Transformer

    d, result = runs["fsdp"]
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


def test_killed_worker_resumes_from_checkpoint_with_the_same_loss_curve(runs, shards, tmp_path, monkeypatch):
    """Rank 1's process is killed (os._exit) at step 5; Ray restarts the workers from the
    step-3 checkpoint; the finished curve equals the uninterrupted 2-worker DDP run."""
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    d = config(shards, tmp_path, "killed", 2, fail_at_step=5, max_failures=1)
    result = fit(train_config(d))
    assert result.error is None
    assert (Path(run_dir(train_config(d))) / ".failed-at-5").exists()  # it really died once
    assert losses(d) == losses(runs["ddp"][0])  # exactly: weights, optimizer, RNG, data order


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
