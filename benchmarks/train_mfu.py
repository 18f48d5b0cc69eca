"""Train-step throughput and MFU on one device: raylm's Transformer against Hugging Face
``LlamaForCausalLM`` of the same shape, same data, same optimizer (AdamW, fused on CUDA) and
bf16 autocast, in one process.

For each size: build both models, run ``--warmup`` steps, then time ``--steps`` steps
(forward, loss, backward, clip, optimizer step) with a device sync; tokens/s and MFU
(``ModelConfig.flops_per_token`` x tokens/s over the device's dense bf16 peak) for both.
Every row is one document of ``seq_len`` tokens, so both models compute the same causal
attention (raylm picks flash-attn's varlen kernel when it is installed, else SDPA).

    python benchmarks/train_mfu.py [--sizes 125m,350m,1b] [--seq-len 2048] [--batch 8,4,2]
    python benchmarks/train_mfu.py --sizes debug --seq-len 128 --batch 4 --steps 3   # CPU smoke run

Needs ``transformers`` for the baseline (installed on the GPU machine; skipped with a note
where it is missing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path

import torch

from raylm.model import Transformer, model_config
from raylm.train.metrics import peak_tflops

HERE = Path(__file__).resolve().parent


def hf_model(cfg, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim,
                     num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                     num_key_value_heads=cfg.kv_heads, max_position_embeddings=cfg.max_seq_len,
                     rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
                     attention_bias=False, mlp_bias=False)
    hf._attn_implementation = "sdpa"
    return LlamaForCausalLM(hf).to(device)


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


def bench(size: str, seq_len: int, batch: int, warmup: int, steps: int, device) -> dict:
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
        sec = time_steps(step, warmup, steps, device)
        out = {"step_s": sec, "tokens_per_s": tokens / sec}
        if peak:
            out["mfu"] = tokens / sec * result["flops_per_token"] / (peak * 1e12)
        if device.type == "cuda":
            out["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        return out

    ours = Transformer(cfg).to(device)
    with torch.no_grad():
        ours.init_weights()
    result["raylm"] = run(ours, lambda m: torch.nn.functional.cross_entropy(
        m(x, position_ids=pos, cu_seqlens=cu, max_seqlen=seq_len).float().flatten(0, 1), y.flatten()))
    del ours
    try:
        base = hf_model(cfg, device)
    except ImportError:
        result["hf_llama"] = None
        result["note"] = "transformers is not installed: no baseline"
        return result
    result["hf_llama"] = run(base, lambda m: torch.nn.functional.cross_entropy(
        m(input_ids=x).logits.float().flatten(0, 1), y.flatten()))
    result["tokens_per_s_ratio_vs_hf"] = result["raylm"]["tokens_per_s"] / result["hf_llama"]["tokens_per_s"]
    del base
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="125m,350m,1b")
    ap.add_argument("--batch", default="8,4,2", help="micro-batch per size (one value: all sizes)")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default=str(HERE / "results" / "train_mfu.json"))
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = args.sizes.split(",")
    batches = [int(b) for b in args.batch.split(",")]
    batches = batches * len(sizes) if len(batches) == 1 else batches
    rows = []
    for size, batch in zip(sizes, batches):
        row = bench(size, args.seq_len, batch, args.warmup, args.steps, device)
        print(json.dumps(row), flush=True)
        rows.append(row)
    big = rows[-1]
    result = {
        "benchmark": "train_mfu",
        "date": dt.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU",
        "torch": torch.__version__,
        "runs": rows,
        "mfu": big["raylm"].get("mfu"),
        "tokens_per_s_ratio_vs_hf": big.get("tokens_per_s_ratio_vs_hf"),
        "target": {"mfu_at_1b": 0.45, "tokens_per_s_ratio_vs_hf": 1.3},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
