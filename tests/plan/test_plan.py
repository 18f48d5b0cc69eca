"""``raylm plan``: its memory against a real step measured here, its arithmetic, its
recommendation, the CLI, and the committed validation table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from raylm.cli import main
from raylm.config import ConfigError
from raylm.model import Transformer, model_config
from raylm.optim.optimizers import OptimConfig, build_optimizer
from raylm.plan import CHECKPOINTING, GiB, memory, plan, plan_config
from raylm.plan.measure import measure_step
from raylm.train.parallel import apply_activation_checkpointing

RESULTS = Path(__file__).parents[2] / "benchmarks" / "results" / "plan_validation.json"
MODEL = {"vocab_size": 512, "d_model": 128, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 64,
         "attention": "sdpa"}


@pytest.mark.parametrize("mode", ["none", "full"])  # every mode and strategy: the committed table
def test_one_process_memory_matches_a_measured_step(mode):
    """One process, no wrapper (what DDP holds per rank): the plan's parameters + gradients +
    optimizer + activations are within 15% of a real fp32 step's."""
    torch.manual_seed(0)
    model = Transformer(model_config("debug", **MODEL))
    apply_activation_checkpointing(model, mode, 2)
    optimizer = build_optimizer(model, OptimConfig())
    ids = torch.randint(0, 512, (4, 65))
    measure_step(model, optimizer, None, ids, measure=False)  # the optimizer state exists from here
    measured = measure_step(model, optimizer, None, ids, measure=True)
    p = memory(plan_config({"model": MODEL, "micro_batch_size": 4, "num_gpus": 1, "precision": "fp32"}), "ddp", mode)
    assert p["parameters"] == 4 * model.cfg.num_params()
    static = p["parameters"] + p["gradients"] + p["optimizer"]
    assert static == pytest.approx(measured["static"], rel=0.05)
    assert p["activations"] == pytest.approx(measured["activations"], rel=0.15)


def test_checkpointing_and_sharding_lower_the_plan_in_the_right_order():
    cfg = plan_config({"model": {"flavor": "1b"}, "seq_len": 4096, "micro_batch_size": 2, "num_gpus": 8})
    act = {m: memory(cfg, "ddp", m)["activations"] for m in CHECKPOINTING}
    assert act["full"] < act["every_n"] < act["none"] and act["full"] < act["mlp"] < act["attention"] < act["none"]
    static = {s: sum(memory(cfg, s, "none")[k] for k in ("parameters", "gradients", "optimizer"))
              for s in ("ddp", "zero1", "zero2", "zero3", "fsdp2")}
    # DeepSpeed's stage 1 keeps only its gradient partition too (measured; see raylm.plan)
    assert static["zero3"] < static["zero2"] == static["zero1"] < static["ddp"]
    assert static["fsdp2"] < static["zero2"]
    n = cfg.model.num_params()
    assert memory(cfg, "ddp", "none")["optimizer"] == 8 * n  # two fp32 AdamW moments


def test_time_tokens_and_cost():
    cfg = plan_config({"model": {"flavor": "125m"}, "seq_len": 2048, "micro_batch_size": 4, "grad_accum": 2,
                       "num_gpus": 8, "gpu": "H100", "mfu": 0.5, "price_on_demand": 4.0, "price_spot": 1.5})
    report = plan(cfg)
    n = cfg.model.num_params()
    assert report["chinchilla_tokens"] == report["tokens"] == 20 * n
    assert report["tokens_per_step"] == 4 * 2 * 8 * 2048
    best = report["recommended"]
    assert best["strategy"] == "ddp" and best["checkpointing"] == "none"  # a small model: the fastest fits
    expected_step = report["tokens_per_step"] * cfg.model.flops_per_token(2048) / (8 * 989e12 * 0.5)
    assert best["step_s"] == pytest.approx(expected_step)
    assert report["gpu_hours"] == pytest.approx(report["steps"] * expected_step * 8 / 3600, rel=1e-3)
    assert report["cost_on_demand"] == pytest.approx(4.0 * report["gpu_hours"])
    assert report["cost_spot"] == pytest.approx(1.5 * report["gpu_hours"])


def test_recommends_a_strategy_that_fits_or_says_none_does():
    big = plan(plan_config({"model": {"flavor": "7b"}, "seq_len": 4096, "micro_batch_size": 1, "num_gpus": 8}))
    ddp = [r for r in big["options"] if r["strategy"] == "ddp"]
    assert not any(r["fits"] for r in ddp)  # 16 bytes per parameter do not fit in 80 GB
    best = big["recommended"]
    assert best["strategy"] != "ddp" and best["memory_gib"]["total"] <= big["budget_gib"]
    small_gpu = plan(plan_config({"model": {"flavor": "7b"}, "seq_len": 4096, "micro_batch_size": 8, "num_gpus": 1,
                                  "gpu": "L4"}))
    assert small_gpu["recommended"] is None and small_gpu["gpu_hours"] is None


def test_cli_prints_the_plan_and_bad_input_is_one_clear_error(tmp_path, capsys):
    assert main(["plan", "-c", "jobs/configs/plan_1b.yaml", "--set", "num_gpus=16"]) == 0
    out = capsys.readouterr().out
    assert "recommended: scale.strategy" in out and "Chinchilla" in out and "16 x H100" in out
    assert main(["plan", "-c", "jobs/configs/plan_7b.yaml", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["recommended"]["memory_gib"]["total"] * GiB <= 0.9 * 79.1 * GiB
    bad = tmp_path / "p.yaml"
    bad.write_text("model: {flavor: 1b}\ngpu: B9000\n")
    assert main(["plan", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "p.yaml" in err and "B9000" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="tensor_parallel"):
        plan_config({"num_gpus": 6, "tensor_parallel": 4})


def test_committed_validation_table_is_within_15_percent():
    table = json.loads(RESULTS.read_text())
    rows = table["rows"]
    assert table["plan_max_rel_error"] == max(r["rel_error"] for r in rows) <= 0.15
    covered = {(r["strategy"], r["checkpointing"]) for r in rows}
    for strategy in ("ddp", "fsdp2", "zero1", "zero2", "zero3"):
        assert {(strategy, m) for m in CHECKPOINTING} <= covered
    assert ("fsdp2_tp2", "none") in covered


@pytest.mark.skipif(not torch.cuda.is_available(), reason="peak CUDA memory needs a GPU")
def test_gpu_peak_memory_matches_the_plan():
    """bf16 autocast, one GPU: torch.cuda.max_memory_allocated over a step within 15% of the plan's total."""
    device = torch.device("cuda")
    cfg = dict(MODEL, d_model=512, n_heads=8, n_kv_heads=4, vocab_size=8192, max_seq_len=1024)
    torch.manual_seed(0)
    model = Transformer(model_config("debug", **cfg)).to(device)
    optimizer = build_optimizer(model, OptimConfig())
    ids = torch.randint(0, 8192, (4, 1025), device=device)
    for step in range(2):
        if step:
            torch.cuda.reset_peak_memory_stats()
        with torch.autocast("cuda", torch.bfloat16):
            loss = model.loss_sum(model(ids[:, :-1]), ids[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    p = memory(plan_config({"model": cfg, "micro_batch_size": 4, "num_gpus": 1}), "ddp", "none")
    assert p["total"] == pytest.approx(torch.cuda.max_memory_allocated(), rel=0.15)


# One block at 300 tokens (3 rows of 100), a number no weight dimension has, so that the saved
# tensors that grow with the tokens are told apart from the bf16 casts of the weights.
BLOCK = {"vocab_size": 512, "d_model": 256, "n_layers": 1, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 640,
         "max_seq_len": 128, "attention": "sdpa"}
ROWS, LEN = 3, 100


def _block():
    torch.manual_seed(0)
    model = Transformer(model_config("debug", **BLOCK))
    x = torch.randn(ROWS, LEN, BLOCK["d_model"], requires_grad=True)  # the fp32 residual stream
    cos, sin = model.rope_cos[:LEN][None], model.rope_sin[:LEN][None]
    return model.cfg, model.layers[0], (x, cos, sin)


def _grows(t: torch.Tensor) -> bool:
    """``t`` holds something per token (rows x length, flattened tokens, or rows x heads x ...)."""
    return t.shape[:1] == (ROWS * LEN,) or (t.dim() >= 3 and t.shape[0] == ROWS)


def test_an_autocast_block_keeps_what_the_plan_counts():
    """DDP's bf16 autocast, eager: the bytes a block saves for backward (saved-tensor hooks)."""
    from raylm.plan import _block_activations

    cfg, block, inputs = _block()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        block(*inputs)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved if _grows(t)}
    assert sum(storages.values()) == _block_activations(cfg, "none", 2, ROWS * LEN, 0, 1, "autocast", res=4)


def test_a_compiled_block_keeps_what_the_plan_counts():
    """torch.compile: what Inductor's partitioner (with Inductor's decompositions) makes the
    forward graph hand to backward, under bf16 autocast."""
    from torch._functorch.aot_autograd import aot_module_simplified
    from torch._functorch.partitioners import min_cut_rematerialization_partition
    from torch._inductor.decomposition import select_decomp_table

    from raylm.plan import _block_activations

    cfg, block, inputs = _block()
    saved = []

    def forward_compiler(gm, _):
        outputs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
        saved.extend(o.meta["val"] for o in outputs[1:])  # after the block's own output
        return gm.forward

    def backend(gm, example_inputs):
        return aot_module_simplified(gm, example_inputs, fw_compiler=forward_compiler, bw_compiler=lambda gm, _: gm.forward,
                                     partition_fn=min_cut_rematerialization_partition,
                                     decompositions=select_decomp_table())

    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.compile(block, backend=backend)(*inputs)
    torch._dynamo.reset()
    tokens = ROWS * LEN
    counted = sum(t.numel() * t.element_size() for t in saved if _grows(t))
    assert counted == _block_activations(cfg, "none", 2, tokens, 0, 1, "compiled", res=4)
    assert counted < 0.7 * _block_activations(cfg, "none", 2, tokens, 0, 1, "autocast", res=4)


def test_committed_gpu_rows_are_the_plan_of_today_within_10_percent():
    """The H200 peaks (benchmarks/results/h200_2026-12-04) against the current planner: the
    committed predictions are what it gives now, and every error is within 10%."""
    table = json.loads(RESULTS.read_text())
    rows = table["gpu_rows"]
    assert {(r["size"], r["compiled"]) for r in rows} >= {("125m", True), ("1b", True), ("3b", True), ("7b", True),
                                                           ("125m", False), ("1b", False), ("3b", False)}
    for r in rows:
        cfg = plan_config({"model": {"flavor": r["size"]}, "seq_len": r["seq_len"], "micro_batch_size": r["batch"],
                           "num_gpus": 1, "precision": "bf16", "gpu": "H200", "compile": r["compiled"]})
        assert memory(cfg, "ddp", "none")["total"] / GiB == pytest.approx(r["predicted_gib"])
        assert abs(r["rel_error"]) <= 0.10, r
