"""The in-process runner of the μP benchmarks: batches from token shards, a run that learns,
a diverged run reported as inf, and μP's learning rates at work."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylm.model import model_config
from raylm.optim import OptimConfig, ScheduleConfig
from raylm.tune.local import load_batches, train_local

L = 16


@pytest.fixture
def shard(tmp_path):
    rng = np.random.default_rng(0)
    # a learnable sequence (t -> t + 1 mod 32) in documents of 4 and 12 tokens per row
    starts = rng.integers(0, 32, 40)
    tokens = [((s + np.arange(L)) % 32).tolist() for s in starts]
    table = pa.table({"seq_id": pa.array(np.arange(40, dtype=np.int64)),
                      "tokens": pa.array(tokens, pa.list_(pa.int32())),
                      "cu_seqlens": pa.array([[0, 4, L]] * 40, pa.list_(pa.int32()))})
    pq.write_table(table, tmp_path / "shard-00000.parquet")
    return tmp_path


def test_load_batches(shard):
    batches = load_batches(shard, 4, 3, skip=2)
    assert len(batches) == 3 and batches[0]["input_ids"].shape == (4, L)
    first = pq.read_table(shard / "shard-00000.parquet").column("tokens").to_pylist()[2]
    assert batches[0]["input_ids"][0].tolist() == first
    assert batches[0]["labels"][0, 3].item() == -100  # the end of the first document
    assert batches[0]["position_ids"][0, 4].item() == 0
    with pytest.raises(ValueError, match=r"38 sequences after 2, 40 needed"):
        load_batches(shard, 4, 10, skip=2)
    with pytest.raises(FileNotFoundError, match="no Parquet token shards"):
        load_batches(shard / "missing", 4, 1)


def test_train_local_learns_and_reports_divergence(shard):
    batches = load_batches(shard, 4, 8)
    held_out = load_batches(shard, 4, 2, skip=32)
    model = model_config("debug", vocab_size=32, max_seq_len=L, attention="sdpa", parametrization="mup",
                         base_width=32)
    optim = OptimConfig(lr=1e-2, schedule=ScheduleConfig(name="constant"))
    run = train_local(model, optim, batches * 2, held_out)
    assert len(run.losses) == 16
    assert run.eval_loss < 0.5 * math.log(32)  # far below the uniform guess
    assert run.losses[-1] < 0.5 * run.losses[0]
    # width x3 under μP: the same lr still trains
    wide = train_local(model_config(model, d_model=96), optim, batches * 2, held_out)
    assert wide.eval_loss < 0.5 * math.log(32)
    diverged = train_local(model, OptimConfig(lr=1e30, schedule=ScheduleConfig(name="constant")),
                           batches, held_out, clip_grad_norm=None)
    assert diverged.eval_loss == math.inf and math.inf in diverged.losses
