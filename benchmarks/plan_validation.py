"""Check ``raylm plan``'s memory against measurement, per strategy and checkpointing mode.

CPU (every run here): 2 gloo processes train a small model (fp32) for two steps with each
strategy (DDP, FSDP2, FSDP2 + tensor parallelism, DeepSpeed ZeRO 1/2/3) and checkpointing
mode (none, mlp, attention, every_n, full), on two model shapes (``SHAPES``; the second with
packed rows and tied embeddings); rank 0 measures its own memory in the second step:

static and activation bytes measured by ``raylm.plan.measure.measure_step`` (its docstring says
how: an exact walk of live tensor storages, with saved-tensor hooks during the forward).

The measured total (static + activations) is compared with the plan's parameters + gradients
+ optimizer + gathered + activations; the backward's transient peak (``backward_extra``) is
not measured on CPU. On a CUDA device (``--gpu``) one process per strategy measures
``torch.cuda.max_memory_allocated`` over a step against the plan's whole total (world size 1:
DDP and FSDP2 only).

    python benchmarks/plan_validation.py            # CPU table -> results/plan_validation.json
    python benchmarks/plan_validation.py --gpu-results benchmarks/results/h200_2026-12-04   # + measured GPU rows

``--gpu-results DIR`` reads the peaks ``benchmarks/train_mfu.py`` measured on a GPU
(``train_mfu.json`` and any ``mfu_*.json`` row in ``DIR``: one process, bf16 autocast,
AdamW, compiled and eager) and puts them against the plan of the same run (``ddp`` on one
GPU, no checkpointing, ``compile`` as measured) as ``gpu_rows`` of the results file; the CPU
table there is kept.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import socket
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raylm.model import Transformer, model_config  # noqa: E402
from raylm.plan import memory, plan_config  # noqa: E402
from raylm.plan.measure import __doc__ as _measure_doc  # noqa: E402
from raylm.plan.measure import measure_step  # noqa: E402

WORLD = 2
# "a": one document per row (SDPA's causal kernel); "b": another shape, tied embeddings,
# multi-head attention, and rows packed with 3 documents each (SDPA with a dense document mask)
SHAPES: dict[str, dict[str, Any]] = {
    "a": {"model": {"vocab_size": 2048, "d_model": 256, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2,
                    "max_seq_len": 256, "attention": "sdpa"}, "micro": 4, "seq": 256, "packed": False},
    "b": {"model": {"vocab_size": 1000, "d_model": 192, "n_layers": 3, "n_heads": 6, "ffn_hidden": 640,
                    "tie_embeddings": True, "max_seq_len": 128, "attention": "sdpa"}, "micro": 2, "seq": 128,
          "packed": True},
}
MODES = ("none", "mlp", "attention", "every_n", "full")
CASES = ([("a", s, ac) for s in ("ddp", "fsdp2", "zero1", "zero2", "zero3") for ac in MODES]
         + [("a", "fsdp2_tp2", "none"), ("a", "fsdp2_tp2", "full")]
         + [("b", s, ac) for s in ("ddp", "fsdp2", "zero3") for ac in ("none", "mlp", "attention", "full")])


def _batch(shape: dict[str, Any], generator: torch.Generator, device: torch.device):
    b, seq = shape["micro"], shape["seq"]
    ids = torch.randint(0, shape["model"]["vocab_size"], (b, seq + 1), generator=generator).to(device)
    if not shape["packed"]:
        return ids, {}
    lengths = [seq // 4, seq // 2, seq - seq // 4 - seq // 2]  # 3 documents per row
    cu = torch.tensor([0] + [r * seq + sum(lengths[:i + 1]) for r in range(b) for i in range(3)], dtype=torch.int32)
    pos = torch.cat([torch.arange(n) for _ in range(b) for n in lengths]).view(b, seq)
    return ids, {"position_ids": pos.to(device), "cu_seqlens": cu.to(device), "max_seqlen": max(lengths)}


def _build(shape: dict[str, Any], strategy: str, ac: str, device: torch.device):
    from raylm.optim.optimizers import OptimConfig, build_optimizer
    from raylm.train.config import train_config
    from raylm.train.strategy import build_strategy

    torch.manual_seed(0)
    model = Transformer(model_config("debug", **shape["model"])).to(device)
    tp = 2 if strategy.endswith("_tp2") else 1
    base = "deepspeed" if strategy.startswith("zero") else strategy.removesuffix("_tp2")
    scale = {"strategy": base, "num_workers": WORLD, "tensor_parallel": tp, "activation_checkpointing": ac,
             "checkpoint_every": 2}
    if base == "deepspeed":
        scale["deepspeed"] = {"stage": int(strategy[4]), "bucket_size": 500_000}
    cfg = train_config({"data": {"path": "x"}, "micro_batch_size": shape["micro"], "scale": scale,
                        "spike_guard": {"enabled": base != "deepspeed"}})
    parallel = build_strategy(cfg, "fp32", device)
    model = parallel.wrap(model)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3))
    parallel.setup(optimizer)
    return parallel.model, optimizer, parallel.model if base == "deepspeed" else None


def _worker(rank: int, port: int, cases: list[tuple[str, str, str]], queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD), DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    device = torch.device("cpu")
    g = torch.Generator().manual_seed(rank)
    for name, strategy, ac in cases:
        model, optimizer, engine = _build(SHAPES[name], strategy, ac, device)
        ids, batch = _batch(SHAPES[name], g, device)
        measure_step(model, optimizer, engine, ids, measure=False, **batch)
        measured = measure_step(model, optimizer, engine, ids, measure=True, **batch)
        if rank == 0:
            queue.put((name, strategy, ac, measured))
        del model, optimizer, engine
        gc.collect()
    dist.destroy_process_group()


def _predict(shape: dict[str, Any], strategy: str, ac: str, world: int, precision: str = "fp32") -> dict[str, float]:
    tp = 2 if strategy.endswith("_tp2") else 1
    cfg = plan_config({"model": {"flavor": "debug", **shape["model"]}, "seq_len": shape["seq"], "micro_batch_size": shape["micro"],
                       "num_gpus": world, "packed_sdpa": shape["packed"],
                       "tensor_parallel": tp, "precision": precision, "gpu": "H100", "checkpoint_every": 2,
                       "bucket_size": 500_000})
    return memory(cfg, strategy.removesuffix("_tp2"), ac)


def cpu_table(cases: list[tuple[str, str, str]]) -> list[dict]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for case in cases:  # fresh processes for each: nothing of the last case stays alive
        mp.start_processes(_worker, args=(port, [case], queue), nprocs=WORLD, start_method="spawn")
    rows = []
    while not queue.empty():
        name, strategy, ac, m = queue.get()
        p = _predict(SHAPES[name], strategy, ac, WORLD)
        predicted_static = p["parameters"] + p["gradients"] + p["optimizer"]
        predicted = predicted_static + p["gathered"] + p["activations"]
        measured = m["static"] + m["activations"]
        rows.append({"device": "cpu", "world_size": WORLD, "shape": name, "strategy": strategy, "checkpointing": ac,
                     "measured_mib": measured / 2**20, "predicted_mib": predicted / 2**20,
                     "rel_error": abs(predicted - measured) / measured,
                     "static_measured_mib": m["static"] / 2**20, "static_predicted_mib": predicted_static / 2**20,
                     "activations_measured_mib": m["activations"] / 2**20,
                     "activations_predicted_mib": (p["gathered"] + p["activations"]) / 2**20})
    return rows


def gpu_table() -> list[dict]:
    """One CUDA device, bf16: peak ``max_memory_allocated`` over a step vs the plan's total."""
    from raylm.train.config import train_config
    from raylm.train.parallel import unwrap
    from raylm.train.strategy import build_strategy

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29555", RANK="0", WORLD_SIZE="1")
    dist.init_process_group("nccl", rank=0, world_size=1)
    device = torch.device("cuda", 0)
    rows = []
    shape = SHAPES["a"]
    for strategy in ("ddp", "fsdp2"):
        for ac in MODES:
            from raylm.optim.optimizers import OptimConfig, build_optimizer

            torch.manual_seed(0)
            model = Transformer(model_config("debug", **shape["model"])).to(device)
            tc = train_config({"data": {"path": "x"}, "scale": {"strategy": strategy, "num_workers": 1, "use_gpu": True,
                                                                "activation_checkpointing": ac, "checkpoint_every": 2}})
            model = build_strategy(tc, "bf16", device).wrap(model)
            optimizer = build_optimizer(model, OptimConfig(lr=1e-3))
            ids, _ = _batch(shape, torch.Generator().manual_seed(0), device)
            for step in range(2):
                if step == 1:
                    torch.cuda.reset_peak_memory_stats()
                with torch.autocast("cuda", torch.bfloat16, enabled=strategy == "ddp"):
                    loss = unwrap(model).loss_sum(model(ids[:, :-1]), ids[:, 1:])
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            measured = torch.cuda.max_memory_allocated()
            predicted = _predict(shape, strategy, ac, 1, "bf16")["total"]
            rows.append({"device": torch.cuda.get_device_name(), "world_size": 1, "shape": "a", "strategy": strategy,
                         "checkpointing": ac, "measured_mib": measured / 2**20, "predicted_mib": predicted / 2**20,
                         "rel_error": abs(predicted - measured) / measured})
            del model, optimizer
            gc.collect()
            torch.cuda.empty_cache()
    dist.destroy_process_group()
    return rows


def measured_gpu_rows(folder: Path) -> list[dict]:
    """The plan against the peak ``max_memory_allocated`` of every train_mfu run in ``folder``."""
    from raylm.plan import GiB

    table = json.loads((folder / "train_mfu.json").read_text())
    runs = table["runs"] + [json.loads(p.read_text()) for p in sorted(folder.glob("mfu_*.json"))]
    rows = []
    for run in runs:
        for key in ("raylm", "raylm_eager"):
            m = run.get(key)
            if not m or "peak_memory_gb" not in m:
                continue
            cfg = plan_config({"model": {"flavor": run["size"]}, "seq_len": run["seq_len"], "micro_batch_size": run["batch"],
                               "num_gpus": 1, "precision": "bf16", "gpu": "H200", "compile": m["compiled"]})
            predicted = memory(cfg, "ddp", "none")["total"] / GiB
            rows.append({"device": table["device"], "date": table["date"], "size": run["size"], "batch": run["batch"],
                         "seq_len": run["seq_len"], "compiled": m["compiled"], "measured_gib": m["peak_memory_gb"],
                         "predicted_gib": predicted, "rel_error": predicted / m["peak_memory_gb"] - 1})
    return rows


def measure_doc() -> str:
    return " ".join(_measure_doc.split("\n\n")[1].split())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="measure on the CUDA device instead (bf16, world size 1)")
    ap.add_argument("--only", help="comma-separated strategies to measure (a trial run; nothing is written)")
    ap.add_argument("-o", "--output", default=str(Path(__file__).parent / "results" / "plan_validation.json"))
    ap.add_argument("--gpu-results", type=Path, help="a folder of train_mfu.py results measured on a GPU: "
                    "write their rows against the plan into the results file, keeping its CPU table")
    args = ap.parse_args()
    if args.gpu_results:
        out = json.loads(Path(args.output).read_text())
        rows = measured_gpu_rows(args.gpu_results)
        for r in rows:
            print(f"{r['device']} {r['size']:>5} batch {r['batch']:>2} {'compiled' if r['compiled'] else 'eager':<8} "
                  f"measured {r['measured_gib']:6.1f} GiB  predicted {r['predicted_gib']:6.1f} GiB  {r['rel_error']:+.1%}")
        out["gpu_rows"] = rows
        out["gpu_method"] = " ".join(next(p for p in __doc__.split("\n\n") if p.startswith("``--gpu-results")).split())
        for label, compiled in (("compiled", True), ("eager", False)):
            errors = [r["rel_error"] for r in rows if r["compiled"] == compiled]
            out[f"gpu_{label}_rel_error_range"] = [min(errors), max(errors)]
        Path(args.output).write_text(json.dumps(out, indent=2))
        return
    cases = [c for c in CASES if not args.only or c[1] in args.only.split(",")]
    rows = gpu_table() if args.gpu else cpu_table(cases)
    rows.sort(key=lambda r: (r["shape"], r["strategy"], r["checkpointing"]))
    for r in rows:
        print(f"{r['shape']} {r['strategy']:<10} {r['checkpointing']:<10} measured {r['measured_mib']:8.2f} MiB  "
              f"predicted {r['predicted_mib']:8.2f} MiB  error {r['rel_error']:6.1%}"
              + (f"  (static {r['static_measured_mib']:.2f}/{r['static_predicted_mib']:.2f}, activations "
                 f"{r['activations_measured_mib']:.2f}/{r['activations_predicted_mib']:.2f})" if "static_measured_mib" in r else ""))
    if args.only:
        return
    out = {"benchmark": "plan_validation", "date": datetime.date.today().isoformat(), "host": platform.node(),
           "torch": torch.__version__, "shapes": SHAPES,
           "method": __doc__.split("\n\n")[1] + "\n" + __doc__.split("\n\n")[2] + "\n" + measure_doc(),
           "plan_max_rel_error": max(r["rel_error"] for r in rows), "rows": rows}
    Path(args.output).write_text(json.dumps(out, indent=2))
    print(f"plan_max_rel_error {out['plan_max_rel_error']:.1%} -> {args.output}")


if __name__ == "__main__":
    main()
