"""``generate`` inside Ray Train workers on an FSDP2-sharded model in train mode: every rank
gets the tokens of the unsharded model, and the model is back in train mode afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from raylm.infer.generate import SamplingConfig, generate
from raylm.model import Transformer, model_config

CFG = {"vocab_size": 64, "d_model": 32, "n_kv_heads": 2, "attention": "sdpa", "max_seq_len": 32}
PROMPT = [3, 14, 15, 9]
GREEDY = SamplingConfig(max_new_tokens=10, eos_id=-1)
SAMPLED = SamplingConfig(max_new_tokens=10, temperature=1.0, top_k=8, seed=4, eos_id=-1)


def _worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from raylm.train.parallel import parallelize

    torch.manual_seed(0)
    model = parallelize(Transformer(model_config("debug", **CFG)), "fsdp2", "fp32", ray.train.torch.get_device())
    model.train()
    out = {"greedy": generate(model, PROMPT, GREEDY).tokens, "sampled": generate(model, PROMPT, SAMPLED).tokens,
           "training": model.training, "sharded": type(model).__name__.startswith("FSDP")}
    Path(config["out"], f"rank{ray.train.get_context().get_world_rank()}.json").write_text(json.dumps(out))


def test_generate_on_an_fsdp2_model_inside_train_workers(ray_session, tmp_path):
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    result = TorchTrainer(_worker, train_loop_config={"out": str(tmp_path)}, torch_config=TorchConfig(backend="gloo"),
                          scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5})).fit()
    assert result.error is None
    torch.manual_seed(0)
    local = Transformer(model_config("debug", **CFG))
    want = {"greedy": generate(local, PROMPT, GREEDY).tokens, "sampled": generate(local, PROMPT, SAMPLED).tokens}
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {**want, "training": True, "sharded": True}
