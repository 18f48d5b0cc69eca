"""Train-step throughput and MFU on one device: raylm's Transformer against Hugging Face
``LlamaForCausalLM`` of the same shape, same data, same optimizer (AdamW, fused on CUDA) and
bf16 autocast, in one process.

For each size: build both models, run ``--warmup`` steps, then time ``--steps`` steps
(forward, loss, backward, clip, optimizer step) with a device sync; tokens/s and MFU
(``ModelConfig.flops_per_token`` x tokens/s over the device's dense bf16 peak) for both.
Every row is one document of ``seq_len`` tokens, so both models compute the same causal
attention (raylm picks flash-attn's varlen kernel when it is installed, else SDPA).

"raylm" is our train step as ``scale.compile: true`` runs it (``apply_compile``: compiled
blocks and loss); ``--eager`` adds our uncompiled step; Hugging Face runs as users run it
(eager, SDPA attention).

``--pipeline-steps N`` (GPU, needs Ray) then trains the first size for N steps through the
whole of ``raylm train`` on one GPU worker: token shards of the shipped corpus packed at
``seq_len`` (``--tokens``, made with ``raylm prepare``), streamed by the loader, compiled;
it reports tokens/s, MFU and the share of step time spent waiting for data.

    python benchmarks/train_mfu.py [--sizes 125m,350m,1b] [--seq-len 2048] [--batch 16,8,8]
    python benchmarks/train_mfu.py --sizes debug --seq-len 128 --batch 4 --steps 3 --no-compile  # CPU smoke

Needs ``transformers`` for the baseline (installed on the GPU machine; skipped with a note
where it is missing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import platform
import time
from pathlib import Path

import torch

from raylm.model import Transformer, model_config
from raylm.model.attention import flash_available
from raylm.model.hf import llama_model
from raylm.train.metrics import peak_tflops
from raylm.train.parallel import apply_compile

HERE = Path(__file__).resolve().parent


def time_steps(step, warmup: int, steps: int, device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def bench(size: str, seq_len: int, batch: int, warmup: int, steps: int, device, compile: bool,
          eager: bool) -> dict:
    cfg = model_config(size, max_seq_len=seq_len)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), device=device)
    x, y = ids[:, :-1], ids[:, 1:]
    pos = torch.arange(seq_len, device=device).expand(batch, seq_len)
    cu = torch.arange(0, batch * seq_len + 1, seq_len, device=device, dtype=torch.int32)
    tokens = batch * seq_len
    result = {"size": size, "params": cfg.num_params(), "seq_len": seq_len, "batch": batch,
              "flops_per_token": cfg.flops_per_token(seq_len)}
    peak = peak_tflops(device)

    def run(model, forward) -> dict:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

        def step():
            with amp:
                loss = forward(model)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        step()  # first step: compilation, allocator warm-up
        first = time.perf_counter() - t0
        sec = time_steps(step, warmup, steps, device)
        out = {"step_s": sec, "tokens_per_s": tokens / sec, "first_step_s": first}
        if peak:
            out["mfu"] = tokens / sec * result["flops_per_token"] / (peak * 1e12)
        if device.type == "cuda":
            out["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        return out

    def ours_forward(m):
        logits = m(x, position_ids=pos, cu_seqlens=cu, max_seqlen=seq_len)
        return m.loss_sum(logits, y) / y.numel()

    for label, compiled in (("raylm", compile), ("raylm_eager", False)):
        if label == "raylm_eager" and not (eager and compile):
            continue
        torch.manual_seed(0)
        ours = Transformer(cfg).to(device)
        if compiled:
            apply_compile(ours)
        result[label] = run(ours, ours_forward)
        result[label]["compiled"] = compiled
        del ours
        free(device)
    try:
        base = llama_model(cfg).to(device)  # sdpa attention, Hugging Face's init
    except ImportError:
        result["hf_llama"] = None
        result["note"] = "transformers is not installed: no baseline"
        return result
    result["hf_llama"] = run(base, lambda m: torch.nn.functional.cross_entropy(
        m(input_ids=x).logits.float().flatten(0, 1), y.flatten()))
    result["tokens_per_s_ratio_vs_hf"] = result["raylm"]["tokens_per_s"] / result["hf_llama"]["tokens_per_s"]
    del base
    free(device)
    return result


def free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def pipeline(size: str, seq_len: int, batch: int, steps: int, tokens: str, compile: bool) -> dict:
    """``raylm train`` end to end on one GPU worker: loader -> compiled model -> metrics."""
    import tempfile

    import ray

    from raylm.data.shards import read_manifest
    from raylm.data.tokenizer import load_tokenizer
    from raylm.train.config import train_config
    from raylm.train.runlog import read_metrics
    from raylm.train.trainer import fit, run_dir

    manifest = read_manifest(tokens)  # raylm prepare writes it inside the source folder
    if manifest["seq_len"] != seq_len:
        raise SystemExit(f"--tokens {tokens}: packed at seq_len {manifest['seq_len']}, not --seq-len {seq_len}")
    tokenizer = (manifest.get("config") or {}).get("tokenizer")
    vocab = load_tokenizer(tokenizer).get_piece_size() if tokenizer and Path(tokenizer).is_file() else 32000
    ray.init(num_cpus=8, include_dashboard=False, logging_level="WARNING")
    storage = tempfile.mkdtemp(prefix="raylm-mfu-")
    cfg = train_config({
        "name": f"mfu-{size}", "storage_path": storage, "steps": steps, "log_every": 10,
        "model": {"flavor": size, "max_seq_len": seq_len, "vocab_size": max(vocab, 256)},
        "data": {"path": tokens, "window": 256, "prefetch": 2},
        "optim": {"lr": 3e-4, "fused": True, "schedule": {"name": "cosine", "warmup_steps": 10}},
        "micro_batch_size": batch,
        "scale": {"num_workers": 1, "use_gpu": True, "cpus_per_worker": 4, "compile": compile},
        "checkpoint": {"every": 0, "keep": 1}, "tensorboard": False,
    }, "pipeline")
    result = fit(cfg)
    ray.shutdown()
    if result.error is not None:
        raise result.error
    rows = read_metrics(run_dir(cfg))
    steady = rows[1:] or rows  # the first window holds the compilation
    mean = lambda key: sum(r[key] for r in steady) / len(steady)  # noqa: E731
    return {"size": size, "seq_len": seq_len, "batch": batch, "steps": steps, "compiled": compile,
            "tokens_per_s": mean("tokens_per_s"), "mfu": mean("mfu") if "mfu" in steady[0] else None,
            "data_wait_frac": mean("data_wait_frac"), "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"],
            "peak_memory_gb": rows[-1]["peak_memory_gb"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="125m,350m,1b")
    ap.add_argument("--batch", default="16,8,8", help="micro-batch per size (one value: all sizes)")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="run our step uncompiled")
    ap.add_argument("--eager", action="store_true", help="also time our uncompiled step")
    ap.add_argument("--pipeline-steps", type=int, default=0, help="then train the first size through raylm train")
    ap.add_argument("--tokens", default="out/gpu-tokens/tokens/sample", help="token shards for --pipeline-steps")
    ap.add_argument("--out", default=str(HERE / "results" / "train_mfu.json"))
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = args.sizes.split(",")
    batches = [int(b) for b in args.batch.split(",")]
    batches = batches * len(sizes) if len(batches) == 1 else batches
    rows = []
    for size, batch in zip(sizes, batches):
        row = bench(size, args.seq_len, batch, args.warmup, args.steps, device, args.compile, args.eager)
        print(json.dumps(row), flush=True)
        rows.append(row)
    big = rows[-1]
    result = {
        "benchmark": "train_mfu",
        "date": dt.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU",
        "peak_tflops": peak_tflops(device),
        "torch": torch.__version__,
        "flash_attn": flash_available(),
        "runs": rows,
        "mfu": big["raylm"].get("mfu"),
        "tokens_per_s_ratio_vs_hf": big.get("tokens_per_s_ratio_vs_hf"),
        "target": {"mfu_at_1b": 0.45, "tokens_per_s_ratio_vs_hf": 1.3, "data_wait_frac": 0.02},
    }
    if args.pipeline_steps:
        result["pipeline"] = pipeline(sizes[0], args.seq_len, batches[0], args.pipeline_steps, args.tokens,
                                      args.compile)
        result["data_wait_frac"] = result["pipeline"]["data_wait_frac"]
        print(json.dumps(result["pipeline"]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
