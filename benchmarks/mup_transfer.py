"""Proof of μP transfer (Yang et al. 2022, fig. 1) on tiny models and real text, on CPU.

For widths 128 -> 1024 (2 layers, 4 heads, seq_len 64, vocab 1024 BPE of the shipped sample
corpus) and learning rates on a log2 grid, train each model in-process (``raylm.tune.local``:
the same model, μP parameter groups and schedule as ``raylm train``; AdamW, warm-up 10 steps
then cosine) for the same steps on the same batches, once under SP and once under μP
(``base_width`` 128). The loss of a run is its loss on held-out sequences (the 128 after the
training ones) at the end. The other hyperparameters are those of a small sweep at width 128
(init std 0.02; output multiplier 4, the best of 1, 4, 8 and 16, worth 0.8 nats there); with the
untuned multiplier 1 (``--output-mult 1``) μP's wide models stay at the base model's loss while
SP's improve (``results/mup_transfer_output_mult1.json``).

Widths below ``--full-grid-below`` get the whole grid; wider ones (the costly ones) start at
the previous width's best learning rate and step along the grid until its best point has a
worse neighbour on both sides (the same best grid point as the full grid when the curve has one
minimum, at a third of the cost).

Writes ``benchmarks/results/mup_transfer.json`` (every run, the best grid point per width,
``mup_best_lr_shift_steps`` / ``sp_best_lr_shift_steps``: the largest move of the best grid
point between widths, in grid steps of x2) and ``mup_transfer.png``; and the transfer check:
the μP run at 8x the small width with the small width's best learning rate against the best
run of the direct sweeps (SP and μP) at that width, same steps and tokens.

    python benchmarks/mup_transfer.py [--widths 128 256 512 1024] [--steps 100]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mup_corpus import VOCAB, sample_shards  # noqa: E402

from raylm.model import ModelConfig, model_config  # noqa: E402
from raylm.optim import OptimConfig, ScheduleConfig  # noqa: E402
from raylm.tune.local import load_batches, train_local  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def base_model(seq_len: int, init_std: float = 0.02, output_mult: float = 4.0) -> ModelConfig:
    """The swept model; ``init_std`` and ``output_mult`` as tuned at width 128 (where μP is SP)."""
    return ModelConfig(vocab_size=VOCAB, n_layers=2, n_heads=4, multiple_of=16, max_seq_len=seq_len,
                       attention="sdpa", init_std=init_std, output_mult=output_mult)


def run_loss(model: ModelConfig, lr: float, batches: list, held_out: list) -> float:
    """Held-out loss after training (inf when the run diverged)."""
    optim = OptimConfig(lr=lr, schedule=ScheduleConfig(name="cosine", warmup_steps=10))
    return train_local(model, optim, batches, held_out).eval_loss


def sweep_width(width: int, param: str, grid: list[int], start: int | None, run) -> dict[int, float]:
    """log2(lr) -> loss at one width: the whole grid (``start`` None) or a walk from ``start``
    until the best point has a worse neighbour on both sides or the grid ends."""
    if start is None:
        return {s: run(width, param, s) for s in grid}
    lo, hi = grid[0], grid[-1]
    seen = {s: run(width, param, s) for s in (start - 1, start, start + 1) if lo <= s <= hi}
    while True:
        best = min(seen, key=seen.get)
        nxt = [s for s in (best - 1, best + 1) if lo <= s <= hi and s not in seen]
        if not nxt:
            return dict(sorted(seen.items()))
        for s in nxt:
            seen[s] = run(width, param, s)


def flops(model: ModelConfig, tokens: int) -> float:
    return float(model.flops_per_token(model.max_seq_len)) * tokens


def plot(runs: dict, best: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, param in zip(axes, ("sp", "mup")):
        for width, points in runs[param].items():
            xs = [s for s, v in points.items() if math.isfinite(v)]
            line, = ax.plot(xs, [points[s] for s in xs], marker="o", ms=3, label=f"width {width}")
            b = best[param][width]
            ax.plot([b], [points[b]], marker="*", ms=12, color=line.get_color())
        ax.set(title={"sp": "Standard parametrization", "mup": "μP (base width 128)"}[param],
               xlabel="log2 learning rate")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out loss")
    axes[1].legend()
    finite = [v for p in runs.values() for pts in p.values() for v in pts.values() if math.isfinite(v)]
    axes[0].set_ylim(min(finite) - 0.05, min(max(finite), min(finite) + 2.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[128, 256, 512, 1024])
    ap.add_argument("--base-width", type=int, default=128)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--log2-lr", type=int, nargs=2, default=[-14, -4], help="grid ends, inclusive")
    ap.add_argument("--full-grid-below", type=int, default=512)
    ap.add_argument("--init-std", type=float, default=0.02)
    ap.add_argument("--output-mult", type=float, default=4.0,
                    help="4: the best of {1, 4, 8, 16} at width 128 (1 is the untuned default)")
    ap.add_argument("--name", default="mup_transfer", help="stem of the JSON and PNG in --out")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/raylm-mup-bench"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    shards = sample_shards(args.work, args.seq_len)
    batches = load_batches(shards, args.batch_size, args.steps)
    held_out = load_batches(shards, args.batch_size, 128 // args.batch_size, skip=args.steps * args.batch_size)
    grid = list(range(args.log2_lr[0], args.log2_lr[1] + 1))
    base = base_model(args.seq_len, args.init_std, args.output_mult)

    def model(width: int, param: str) -> ModelConfig:
        return model_config(base, d_model=width, parametrization=param,
                            base_width=args.base_width if param == "mup" else None)

    def run(width: int, param: str, s: int) -> float:
        t = time.time()
        loss = run_loss(model(width, param), 2.0**s, batches, held_out)
        print(f"{param:>3} width {width:>5} lr 2^{s:<4} loss {loss:.4f}  ({time.time() - t:.0f} s)", flush=True)
        return loss

    runs: dict[str, dict[int, dict[int, float]]] = {"sp": {}, "mup": {}}
    best: dict[str, dict[int, int]] = {"sp": {}, "mup": {}}
    for param in ("mup", "sp"):
        prev = None
        for width in args.widths:
            start = None if width < args.full_grid_below else prev
            runs[param][width] = sweep_width(width, param, grid, start, run)
            best[param][width] = prev = min(runs[param][width], key=runs[param][width].get)

    shift = {p: max(best[p].values()) - min(best[p].values()) for p in best}
    small, large = args.widths[0], args.widths[-1]
    transferred_s = best["mup"][small]
    transferred = runs["mup"][large].get(transferred_s)
    if transferred is None:
        transferred = run(large, "mup", transferred_s)
        runs["mup"][large][transferred_s] = transferred
    direct = {p: min(runs[p][large].values()) for p in ("sp", "mup")}
    tokens = args.steps * args.batch_size * args.seq_len
    small_sweep = len(runs["mup"][small]) * flops(model(small, "mup"), tokens)
    large_run = flops(model(large, "mup"), tokens)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(runs, best, args.out / f"{args.name}.png")
    result = {
        "date": dt.date.today().isoformat(),
        "device": f"{platform.machine()}, CPU only, {args.threads} thread(s)",
        "wall_s": round(time.time() - t0, 1),
        "setup": {"widths": args.widths, "base_width": args.base_width, "n_layers": base.n_layers,
                  "n_heads": base.n_heads, "vocab_size": VOCAB, "init_std": base.init_std,
                  "output_mult": base.output_mult, "seq_len": args.seq_len,
                  "batch_size": args.batch_size, "steps": args.steps, "tokens_per_run": tokens,
                  "optimizer": "adamw, betas (0.9, 0.95), weight_decay 0.1, clip 1.0",
                  "schedule": "warmup 10 steps, cosine to 0.1",
                  "loss": "held-out loss (128 sequences after the training ones) after training",
                  "lr_grid_log2": grid, "full_grid_below_width": args.full_grid_below,
                  "data": "data/sample/corpus.jsonl.gz, BPE 1024, packed"},
        "runs": {p: {str(w): {str(s): (v if math.isfinite(v) else None) for s, v in pts.items()}
                     for w, pts in runs[p].items()} for p in runs},
        "best_log2_lr": {p: {str(w): s for w, s in best[p].items()} for p in best},
        "mup_best_lr_shift_steps": shift["mup"],
        "sp_best_lr_shift_steps": shift["sp"],
        "transfer": {
            "small_width": small, "large_width": large,
            "small_sweep_best_log2_lr": transferred_s,
            "transferred_run_loss": transferred,
            "direct_sweep_best_loss": direct,
            "direct_sweep_best_log2_lr": {p: best[p][large] for p in best},
            "transferred_no_worse_than_direct": transferred <= min(direct.values()) + 1e-9,
            "gap_to_best_direct": transferred - min(direct.values()),
            "flops_small_sweep_plus_transferred_run": small_sweep + large_run,
            "flops_direct_mup_sweep_at_large_width": len(runs["mup"][large]) * large_run,
            "flops_full_grid_at_large_width": len(grid) * large_run,
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("best_log2_lr", "mup_best_lr_shift_steps", "sp_best_lr_shift_steps",
                                             "transfer", "wall_s")}, indent=2))


if __name__ == "__main__":
    main()
