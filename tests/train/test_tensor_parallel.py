"""Tensor parallelism (DTensor, Megatron split) composed with FSDP2 on a 2-D mesh, in real
Ray Train runs with gloo: a (dp=2, tp=2) mesh of 4 workers follows the
session's 1-worker reference run with the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from raylm.config import ConfigError
from raylm.train.config import train_config
from raylm.train.trainer import fit, run_dir
from tests.train.sample import STEPS, config, losses


@pytest.mark.parametrize("workers,tp", [(4, 2)])
def test_tensor_parallel_follows_the_one_worker_run(reference_runs, shards, tmp_path, workers, tp):
    d = config(shards, tmp_path, f"tp{workers}x{tp}", workers,
               **{"scale.strategy": "fsdp2", "scale.tensor_parallel": tp, "micro_batch_size": 8 * tp // workers,
                  "scale.cpus_per_worker": 0.25})
    cfg = train_config(d)
    assert cfg.global_batch_size == 8
    result = fit(cfg)
    assert result.error is None
    tp_losses = losses(d)
    assert len(tp_losses) == STEPS
    np.testing.assert_allclose(tp_losses, losses(reference_runs["one"][0]), rtol=2e-4)
    meta = json.loads((Path(run_dir(cfg)) / "meta.json").read_text())
    assert meta["tensor_parallel"] == tp and meta["data_parallel"] == workers // tp


def test_bad_tensor_parallel_config_is_a_clear_error():
    with pytest.raises(ConfigError, match="divide scale.num_workers"):
        train_config({"data": {"path": "x"}, "scale": {"num_workers": 3, "tensor_parallel": 2, "strategy": "fsdp2"}})
    with pytest.raises(ConfigError, match="fsdp2 only"):
        train_config({"data": {"path": "x"}, "scale": {"num_workers": 2, "tensor_parallel": 2}})
    with pytest.raises(ConfigError, match="must divide model.n_heads"):
        train_config({"data": {"path": "x"}, "model": {"flavor": "debug", "n_kv_heads": 1},
                      "scale": {"num_workers": 2, "tensor_parallel": 2, "strategy": "fsdp2"}})
