"""Self-speculative greedy decoding with multi-token-prediction drafts, measured on CPU.

Trains a tiny decoder with ``mtp_heads`` DeepSeek-V3 MTP modules (``raylm.model.mtp``: loss
main + lambda/D sum_k L_k) in-process on the shipped sample corpus (``data/sample/``, English
and Korean; the 1024-piece BPE and packing of ``mup_corpus``), then, on prompts from held-out
sequences, decodes greedily three ways in one process: plain greedy on the KV cache
(``raylm.model.generate``, one main-model forward per token) and speculative greedy
(``raylm.model.speculative``) with the first 1 and all ``mtp_heads`` depths drafting. The
outputs must be token for token identical; reported are the acceptance rate of the drafts,
the tokens per main-model forward and the speed-up over plain greedy, in wall-clock and in
CPU time (best of ``--repeats`` interleaved timings of all prompts; CPU time is what other
processes on a shared machine do not disturb). Generation ignores ``<eos>`` so every prompt
decodes the same number of tokens.

Writes ``benchmarks/results/mtp_speculative.json``.

    python benchmarks/mtp_speculative.py [--steps 400] [--mtp-heads 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mup_corpus import VOCAB, sample_shards  # noqa: E402

from raylm.model import ModelConfig, Transformer  # noqa: E402
from raylm.model.generate import SamplingConfig, generate  # noqa: E402
from raylm.model.mtp import IGNORE_INDEX, mtp_labels  # noqa: E402
from raylm.model.speculative import speculative_greedy  # noqa: E402
from raylm.optim import OptimConfig, ScheduleConfig, apply_lr, build_optimizer, lr_multiplier  # noqa: E402
from raylm.tune.local import load_batches  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def losses(model: Transformer, b: dict[str, Any]) -> list[torch.Tensor]:
    """Mean losses of the main model and of every MTP depth on batch ``b``."""
    logits, drafts = model(b["input_ids"], position_ids=b["position_ids"], cu_seqlens=b["cu_seqlens"],
                           max_seqlen=b["max_seqlen"], mtp=True)
    sums = model.mtp_loss_sums(drafts, b["labels"])
    counts = [(mtp_labels(b["labels"], k) != IGNORE_INDEX).sum().clamp(min=1) for k in range(1, len(sums) + 1)]
    return [model.loss(logits, b["labels"])] + [s / n for s, n in zip(sums, counts, strict=True)]


def train(cfg: ModelConfig, batches: list[dict[str, Any]], steps: int, lr: float) -> tuple[Transformer, list]:
    torch.manual_seed(0)
    model = Transformer(cfg)
    optim = OptimConfig(lr=lr, schedule=ScheduleConfig(name="cosine", warmup_steps=20, total_steps=steps))
    optimizer = build_optimizer(model, optim)
    history = []
    for step in range(steps):
        parts = losses(model, batches[step % len(batches)])
        (parts[0] + cfg.mtp_weight / cfg.mtp_heads * sum(parts[1:])).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        apply_lr(optimizer, lr, lr_multiplier(optim.schedule, step))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append([float(p.detach()) for p in parts])
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d}  main {history[-1][0]:.3f}  " + "  ".join(
                f"mtp_{k} {v:.3f}" for k, v in enumerate(history[-1][1:], 1)), flush=True)
    return model.eval(), history


def prompts(held_out: list[dict[str, Any]], length: int, count: int) -> list[list[int]]:
    """The first ``length`` tokens of held-out sequences whose first document is that long."""
    out = []
    for b in held_out:
        for row, pos in zip(b["input_ids"], b["position_ids"], strict=True):
            if int(pos[length - 1]) == length - 1:  # no document boundary inside the prompt
                out.append(row[:length].tolist())
    return out[:count]


def timed(fns: dict[str, Any], repeats: int) -> tuple[dict[str, list], dict[str, float], dict[str, float]]:
    """Results, best wall-clock and best CPU seconds of every ``fns`` entry, timed in turn
    ``repeats`` times (interleaved, so that a busy machine slows them alike)."""
    wall, cpu, results = dict.fromkeys(fns, float("inf")), dict.fromkeys(fns, float("inf")), {}
    for _ in range(repeats):
        for name, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            results[name] = fn()
            wall[name] = min(wall[name], time.perf_counter() - t)
            cpu[name] = min(cpu[name], time.process_time() - c)
    return results, wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--mtp-heads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/raylm-mtp-bench"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()

    shards = sample_shards(args.work, args.seq_len)
    n_held = 8
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in Path(shards).glob("*.parquet")) // args.batch_size
    all_batches = load_batches(shards, args.batch_size, total)
    batches, held_out = all_batches[:-n_held], all_batches[-n_held:]
    cfg = ModelConfig(vocab_size=VOCAB, d_model=args.d_model, n_layers=args.layers, n_heads=4, n_kv_heads=2,
                      multiple_of=64, max_seq_len=args.seq_len, attention="sdpa", mtp_heads=args.mtp_heads)
    print(f"{cfg.num_params():,} parameters ({cfg.mtp_params:,} in {args.mtp_heads} MTP modules); "
          f"{len(batches)} training batches of {args.batch_size} x {args.seq_len} tokens", flush=True)
    t_train = time.time()
    model, history = train(cfg, batches, args.steps, args.lr)
    train_s = time.time() - t_train
    with torch.no_grad():
        held = [[float(x) for x in losses(model, b)] for b in held_out]
    held_loss = [sum(col) / len(col) for col in zip(*held, strict=True)]

    ps = prompts(held_out, args.prompt_len, args.prompts)
    plain_cfg = SamplingConfig(max_new_tokens=args.new_tokens, eos_id=-1)
    depths = sorted({1, args.mtp_heads})
    fns = {"greedy": lambda: [generate(model, p, plain_cfg) for p in ps]}
    for depth in depths:
        fns[f"depth_{depth}"] = lambda d=depth: [speculative_greedy(model, p, max_new_tokens=args.new_tokens,
                                                                    eos_id=-1, depth=d) for p in ps]
    generate(model, ps[0], plain_cfg)  # warm-up
    out, wall, cpu = timed(fns, args.repeats)
    plain = out["greedy"]
    runs = {}
    for depth in depths:
        key = f"depth_{depth}"
        spec = out[key]
        if not all(s.tokens == g.tokens for s, g in zip(spec, plain, strict=True)):
            raise SystemExit(f"depth {depth}: speculative output differs from plain greedy")
        drafted, accepted = sum(s.drafted for s in spec), sum(s.accepted for s in spec)
        produced, forwards = sum(s.produced for s in spec), sum(s.forwards for s in spec)
        runs[key] = {
            "draft_depth": depth, "identical_to_greedy": True,
            "acceptance_rate": round(accepted / drafted, 4), "drafted": drafted, "accepted": accepted,
            "tokens_per_forward": round(produced / forwards, 4), "main_forwards": forwards,
            "wall_s": round(wall[key], 4), "cpu_s": round(cpu[key], 4), "tokens_per_s": round(produced / wall[key], 1),
            "speedup_vs_greedy": round(wall["greedy"] / wall[key], 4),
            "cpu_speedup_vs_greedy": round(cpu["greedy"] / cpu[key], 4),
            # speed-up = tokens_per_forward / this: what a draft-and-verify round costs in
            # plain greedy steps (CPU time)
            "round_cost_in_greedy_steps": round((cpu[key] / forwards) / (cpu["greedy"] / sum(g.forwards for g in plain)),
                                                4),
        }
        print(f"depth {depth}: acceptance {accepted / drafted:.3f}, {produced / forwards:.2f} tokens/forward, "
              f"{wall['greedy'] / wall[key]:.2f}x greedy's wall-clock speed ({cpu['greedy'] / cpu[key]:.2f}x in CPU time)",
              flush=True)
    produced = sum(g.produced for g in plain)
    result = {
        "benchmark": "mtp_speculative",
        "date": dt.date.today().isoformat(),
        "device": f"{platform.machine()}, CPU only, {args.threads} thread(s), torch {torch.__version__}",
        "model": {k: v for k, v in dataclasses.asdict(cfg).items()
                  if k in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "max_seq_len", "mtp_heads",
                           "mtp_weight")} | {"params": cfg.num_params(), "mtp_params": cfg.mtp_params},
        "training": {
            "steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len, "lr": args.lr,
            "corpus": "data/sample/corpus.jsonl.gz, BPE 1024", "wall_s": round(train_s, 1),
            "first_losses": [round(x, 4) for x in history[0]], "last_losses": [round(x, 4) for x in history[-1]],
            "held_out_losses": [round(x, 4) for x in held_loss],
            "losses_order": ["main"] + [f"mtp_{k}" for k in range(1, args.mtp_heads + 1)],
        },
        "decoding": {"prompts": len(ps), "prompt_tokens": args.prompt_len, "new_tokens": args.new_tokens,
                     "source": "held-out sequences (the last batches, never trained on)",
                     "repeats": args.repeats, "eos": "ignored (fixed length)",
                     "load_average_1min": round(os.getloadavg()[0], 2)},
        "greedy_kv_cache": {"wall_s": round(wall["greedy"], 4), "cpu_s": round(cpu["greedy"], 4),
                            "tokens_per_s": round(produced / wall["greedy"], 1), "tokens_per_forward": 1.0},
        "speculative": runs,
        "wall_s": round(time.time() - t0, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "mtp_speculative.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
