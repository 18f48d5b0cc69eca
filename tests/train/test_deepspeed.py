"""DeepSpeed ZeRO 1-3 in real Ray Train runs on CPU (DeepSpeed's CPU accelerator over gloo).

ZeRO-1 and ZeRO-3 with optimizer and parameter offload follow the session's FSDP2 reference run
(same seed and global batch); ZeRO-2, with a worker killed mid-run, restarts from the engine's
own checkpoint and follows it too; the DeepSpeed JSON is written from the YAML config.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from raylm.config import ConfigError
from raylm.train.config import train_config
from raylm.train.runlog import read_metrics
from raylm.train.strategy.deepspeed import ds_config
from raylm.train.trainer import fit, run_dir
from tests.train.sample import STEPS, config, losses

pytest.importorskip("deepspeed")

DS = {"scale.strategy": "deepspeed", "spike_guard.enabled": False}


def _run(d: dict) -> list[float]:
    result = fit(train_config(d), env={"DS_ACCELERATOR": "cpu"})
    assert result.error is None
    return losses(d)


@pytest.fixture(scope="module")
def fsdp_losses(reference_runs) -> list[float]:
    """The FSDP2 reference run's losses (its spike guard, on, never fired: it changed nothing)."""
    d, _ = reference_runs["fsdp"]
    assert not any(r.get("spike") for r in read_metrics(run_dir(train_config(d))))
    return losses(d)


@pytest.fixture(scope="module")
def held(shards, tmp_path_factory) -> str:
    """A token-shard folder (with its manifest) of 24 of the sample's sequences, as held-out data."""
    import pyarrow.parquet as pq

    from raylm.data.shards import write_token_shards

    rows = pq.read_table(shards).slice(200, 24).column("tokens").to_pylist()
    out = str(tmp_path_factory.mktemp("held") / "held")
    write_token_shards([pa.table({"tokens": pa.array(rows, pa.list_(pa.int32()))})], out, 64, drop_tail=False)
    return out


@pytest.mark.parametrize("stage,offload", [(1, False), (3, True)])  # stage 2: the kill test below
def test_zero_stage_follows_fsdp2(fsdp_losses, shards, held, tmp_path, stage, offload):
    """...and its held-out evaluation at the end (ZeRO-3 gathers its partitioned weights for
    every forward) equals what the final checkpoint, consolidated from ZeRO's shards, gives in
    one process; evaluation leaves training as it was (the losses still follow FSDP2)."""
    from raylm.infer.checkpoint import load_model
    from raylm.train.heldout import evaluate, load_set

    d = config(shards, tmp_path, f"zero{stage}", 2, **DS, **{"scale.deepspeed.stage": stage,
                                                             "scale.deepspeed.offload_optimizer": offload,
                                                             "scale.deepspeed.offload_params": offload,
                                                             "eval.sets": {"held": held}})
    zero = _run(d)
    assert len(zero) == STEPS
    np.testing.assert_allclose(zero, fsdp_losses, rtol=1e-4)
    assert zero[-1] < zero[0] - 0.5
    folder = Path(run_dir(train_config(d)))
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["strategy"] == "deepspeed" and meta["deepspeed"]["zero_optimization"]["stage"] == stage
    reported = read_metrics(str(folder))[-1]
    model, cfg, state = load_model(folder)
    assert state["step"] == STEPS
    again = evaluate(model, [load_set("held", held, cfg.eval.max_sequences)], batch_size=5)
    assert reported["val/held/tokens"] == again["val/held/tokens"] > 0
    assert reported["val/held/loss"] == pytest.approx(again["val/held/loss"], rel=1e-5)


def test_zero2_killed_worker_resumes_from_the_engine_checkpoint(fsdp_losses, shards, tmp_path):
    d = config(shards, tmp_path, "zero-killed", 2, **DS, **{"scale.deepspeed.stage": 2},
               fail_at_step=5, max_failures=1)
    result = fit(train_config(d), env={"DS_ACCELERATOR": "cpu"})
    assert result.error is None
    assert (Path(run_dir(train_config(d))) / ".failed-at-5").exists()  # it really died once
    np.testing.assert_allclose(losses(d), fsdp_losses, rtol=1e-4)
    with result.checkpoint.as_directory() as folder:
        names = {p.name for p in Path(folder).iterdir()}
        state = json.loads((Path(folder) / "state.json").read_text())
    assert {"zero", "state.json", "rng-rank0.pt", "rng-rank1.pt"} <= names and state["step"] == STEPS


def test_deepspeed_json_comes_from_the_yaml_config():
    cfg = train_config({"data": {"path": "x"}, "micro_batch_size": 4, "grad_accum": 2, "clip_grad_norm": 0.5,
                        "spike_guard": {"enabled": False},
                        "scale": {"strategy": "deepspeed", "deepspeed": {"stage": 3, "offload_optimizer": True,
                                                                         "offload_params": True}}})
    js = ds_config(cfg, "bf16")
    assert js["train_micro_batch_size_per_gpu"] == 4 and js["gradient_accumulation_steps"] == 2
    assert js["gradient_clipping"] == 0.5 and js["bf16"] == {"enabled": True}
    zero = js["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    assert "bf16" not in ds_config(cfg, "fp32") and ds_config(cfg, "fp16")["fp16"]["enabled"]


def test_bad_deepspeed_config_is_a_clear_error():
    base = {"data": {"path": "x"}, "spike_guard": {"enabled": False}}
    with pytest.raises(ConfigError, match="stage: 4"):
        train_config({**base, "scale": {"strategy": "deepspeed", "deepspeed": {"stage": 4}}})
    with pytest.raises(ConfigError, match="offload_params needs stage 3"):
        train_config({**base, "scale": {"strategy": "deepspeed", "deepspeed": {"stage": 2, "offload_params": True}}})
    with pytest.raises(ConfigError, match="spike_guard"):
        train_config({"data": {"path": "x"}, "scale": {"strategy": "deepspeed"}})
    with pytest.raises(ConfigError, match="adamw only"):
        train_config({**base, "optim": {"name": "lion"}, "scale": {"strategy": "deepspeed"}})


def test_a_zero_checkpoint_on_another_number_of_workers_is_a_clear_error(tmp_path):
    """DeepSpeed's engine checkpoint is per rank: resuming it at another world size says so
    (before DeepSpeed's own loader fails in its own words)."""
    from raylm.checkpoint import CheckpointError
    from raylm.train import checkpoint

    (tmp_path / "zero").mkdir()
    (tmp_path / "state.json").write_text(json.dumps({"step": 4, "data": {}, "world_size": 2}))
    with pytest.raises(CheckpointError, match="DeepSpeed checkpoint of 2 workers cannot resume on 1"):
        checkpoint.load(str(tmp_path), None, 0, 1)
