"""GPU-only scale figures (one CUDA device; exits with a message without one).

``fp8``: the same model and data trained in bf16 and with torchao float8 linears
(``scale.fp8``), both compiled: tokens/s of each, the speed-up, and the loss difference over
the run (data: a fixed set of random sequences seen repeatedly, so the loss falls).

``largest``: per strategy (DDP, FSDP2, DeepSpeed ZeRO-3 with optimizer and parameter
offload) on one GPU, the largest Llama-shaped model (d_model 2048, 16 heads, more layers)
that trains a step at sequence 2048 and micro-batch 1 with full activation checkpointing, its
planned memory, the measured ``max_memory_allocated``, and its MFU over 5 steps. The
planner proposes the layer count; a step that runs out of memory steps down.

    python benchmarks/scale_gpu.py fp8        # -> results/fp8.json
    python benchmarks/scale_gpu.py largest    # -> results/largest_per_gpu.json
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raylm.model import Transformer, model_config  # noqa: E402
from raylm.optim.optimizers import OptimConfig, build_optimizer  # noqa: E402
from raylm.plan import memory, plan_config  # noqa: E402
from raylm.train.config import train_config  # noqa: E402
from raylm.train.metrics import peak_tflops  # noqa: E402
from raylm.train.parallel import unwrap  # noqa: E402
from raylm.train.strategy import build_strategy  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _steps(model, optimizer, engine, data: torch.Tensor, steps: int, autocast: bool) -> tuple[list[float], float]:
    """Losses of ``steps`` steps over ``data`` ``(n, B, L + 1)`` and tokens/s after 3 warm-up steps."""
    losses, t0, tokens = [], 0.0, 0
    for i in range(steps):
        if i == 3:
            torch.cuda.synchronize()
            t0, tokens = time.perf_counter(), 0
        ids = data[i % len(data)]
        with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
            loss = unwrap(model).loss_sum(model(ids[:, :-1]), ids[:, 1:]) / ids[:, 1:].numel()
        if engine is not None:
            engine.backward(loss)
            engine.step()
        else:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
        tokens += ids[:, 1:].numel()
    torch.cuda.synchronize()
    return losses, tokens / (time.perf_counter() - t0)


def fp8(steps: int) -> dict:
    cfg = model_config("1b", n_layers=8, max_seq_len=2048)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, cfg.vocab_size, (8, 4, 2049), generator=g).cuda()
    out = {}
    for name in ("bf16", "fp8"):
        torch.manual_seed(0)
        model = Transformer(cfg).cuda()
        tc = train_config({"data": {"path": "x"}, "scale": {"strategy": "ddp", "num_workers": 1, "use_gpu": True,
                                                            "compile": True, "fp8": name == "fp8"}})
        model = build_strategy(tc, "bf16", torch.device("cuda")).wrap(model)
        optimizer = build_optimizer(model, OptimConfig(lr=3e-4))
        losses, tps = _steps(model, optimizer, None, data, steps, autocast=True)
        out[name] = {"tokens_per_s": tps, "losses": losses}
        del model, optimizer
        gc.collect()
        torch.cuda.empty_cache()
    diffs = [abs(a - b) for a, b in zip(out["bf16"]["losses"], out["fp8"]["losses"])]
    return {**out, "speedup": out["fp8"]["tokens_per_s"] / out["bf16"]["tokens_per_s"],
            "max_abs_loss_diff": max(diffs), "final_loss_diff": out["fp8"]["losses"][-1] - out["bf16"]["losses"][-1]}


def _try(strategy: str, layers: int) -> dict | None:
    cfg = model_config("1b", n_layers=layers, max_seq_len=2048)
    device = torch.device("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = optimizer = engine = None
    try:
        with torch.device("meta"):
            model = Transformer(cfg)
        model.to_empty(device=device)
        with torch.no_grad():
            model.init_weights()
        base = "deepspeed" if strategy.startswith("zero") else strategy
        scale = {"strategy": base, "num_workers": 1, "use_gpu": True, "activation_checkpointing": "full"}
        if base == "deepspeed":
            scale["deepspeed"] = {"stage": 3, "offload_optimizer": True, "offload_params": True}
        tc = train_config({"data": {"path": "x"}, "micro_batch_size": 1, "scale": scale,
                           "spike_guard": {"enabled": base != "deepspeed"}})
        parallel = build_strategy(tc, "bf16", device)
        model = parallel.wrap(model)
        optimizer = build_optimizer(model, OptimConfig(lr=3e-4))
        parallel.setup(optimizer)
        model = parallel.model
        engine = model if base == "deepspeed" else None
        data = torch.randint(0, cfg.vocab_size, (2, 1, 2049), device=device)
        _, tps = _steps(model, optimizer, engine, data, 8, autocast=strategy == "ddp")
        peak = peak_tflops(device)
        return {"layers": layers, "params": cfg.num_params(), "tokens_per_s": tps,
                "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
                "mfu": tps * cfg.flops_per_token(2048) / (peak * 1e12) if peak else None}
    except torch.OutOfMemoryError:
        return None
    finally:
        del model, optimizer, engine
        gc.collect()
        torch.cuda.empty_cache()


def largest() -> dict:
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    out = {}
    for strategy in ("ddp", "fsdp2", "zero3_offload"):
        def planned(n: int, strategy: str = strategy) -> float:
            pc = plan_config({"model": {"flavor": "1b", "n_layers": n},
                              "seq_len": 2048, "micro_batch_size": 1, "num_gpus": 1, "gpu_memory_gb": gib,
                              "peak_tflops": 1.0})
            return memory(pc, strategy, "full")["total"] / 2**30
        layers = 1
        while planned(layers + 1) <= 0.9 * gib and layers < 400:
            layers += 1
        result = None
        while layers >= 1 and result is None:
            result = _try(strategy, layers)
            layers -= 0 if result else max(1, layers // 10)
        if result:
            result["planned_gib"] = planned(result["layers"])
        out[strategy] = result
        print(strategy, result, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["fp8", "largest"])
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("scale_gpu.py needs a CUDA GPU")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29566", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("nccl", rank=0, world_size=1)
    result = fp8(args.steps) if args.what == "fp8" else largest()
    meta = {"benchmark": f"scale_gpu_{args.what}", "date": datetime.date.today().isoformat(),
            "device": torch.cuda.get_device_name(), "torch": torch.__version__}
    name = "fp8.json" if args.what == "fp8" else "largest_per_gpu.json"
    (RESULTS / name).write_text(json.dumps({**meta, **result}, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("bf16", "fp8")}, indent=2))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
