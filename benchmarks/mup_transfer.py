"""μP's central figure on real text: training loss against log2(learning rate) for several
widths, under SP and under μP (Yang et al. 2022, fig. 1), plus a Chinchilla-form scaling-law
fit from the same runs that predicts the widest run before it is used.

Every run trains our Transformer (byte-level: the shipped sample corpus's UTF-8 bytes are the
tokens, so no tokenizer is needed) with AdamW and a warmup-then-constant schedule on the same
batches in the same order, in this process (the sweep machinery in ``raylm tune`` is tested
separately; here the budget goes to the runs). The loss is measured on held-out text.

Figures in the JSON:
- ``mup_best_lr_shift_steps`` / ``sp_best_lr_shift_steps``: the largest move of the best grid
  point between any two widths, in grid steps (the grid is factors of 2).
- ``transfer``: the best lr of the μP sweep at the smallest width, used unchanged at the widest
  width, against the best run of a direct sweep at the widest width (SP and μP).
- ``scaling_law``: L(N, D) = E + A/N^a + B/D^b fitted (scipy ``curve_fit``, 1-sigma errors
  from its covariance) to the μP best-lr runs of every width but the widest, at several token
  counts (the schedule is constant after warmup, so a run's loss at step t stands for a run of
  t steps, as in Kaplan et al. 2020); the prediction for the widest run is compared with it.

    python benchmarks/mup_transfer.py                 # the committed configuration: widths 64..512 (8x),
                                                      # ~15 min on 2 free cores (width 1024: --widths 128 256 512 1024)
    python benchmarks/mup_transfer.py --quick         # a 2-minute smoke run
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from raylm.model import Transformer
from raylm.model.config import ModelConfig
from raylm.model.mup import mup_lr_scale
from raylm.optim.optimizers import OptimConfig, apply_lr, build_optimizer
from raylm.optim.schedules import ScheduleConfig, lr_multiplier

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data/sample/corpus.jsonl.gz"


def corpus_bytes() -> tuple[np.ndarray, np.ndarray]:
    """The sample corpus's texts as UTF-8 bytes: (train, held-out last 5%)."""
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        text = "\n\n".join(json.loads(line)["text"] for line in f)
    data = np.frombuffer(text.encode(), np.uint8)
    cut = int(len(data) * 0.95)
    return data[:cut], data[cut:]


def batches(data: np.ndarray, n: int, batch: int, seq_len: int, seed: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(data) - seq_len - 1, size=(n, batch))
    idx = starts[..., None] + np.arange(seq_len + 1)
    return [torch.from_numpy(data[i].astype(np.int64)) for i in idx]


INIT_STD: float | None = None  # set by main(): --init-std, default 1/sqrt(base_width)


def model_config(width: int, parametrization: str, base_width: int, layers: int, seq_len: int) -> ModelConfig:
    return ModelConfig(vocab_size=256, d_model=width, n_layers=layers, n_heads=4, max_seq_len=seq_len,
                       multiple_of=8, attention="sdpa", parametrization=parametrization, base_width=base_width,
                       init_std=INIT_STD or base_width ** -0.5)


@torch.no_grad()
def evaluate(model: Transformer, held: list[torch.Tensor]) -> float:
    total = sum(float(model.loss_sum(model(b[:, :-1]), b[:, 1:])) for b in held)
    return total / sum(b[:, 1:].numel() for b in held)


def train(cfg: ModelConfig, lr: float, train_batches: list[torch.Tensor], held: list[torch.Tensor],
          eval_at: list[int], warmup: int, seed: int = 0) -> dict[int, float]:
    """Held-out loss after each step in ``eval_at`` (inf once the run diverges)."""
    torch.manual_seed(seed)
    model = Transformer(cfg)
    opt_cfg = OptimConfig(lr=lr, weight_decay=0.0, schedule=ScheduleConfig(name="constant", warmup_steps=warmup))
    optimizer = build_optimizer(model, opt_cfg, mup_lr_scale(cfg))
    out: dict[int, float] = {}
    for step, b in enumerate(train_batches, start=1):
        apply_lr(optimizer, lr, lr_multiplier(opt_cfg.schedule, step - 1))
        loss = model.loss_sum(model(b[:, :-1]), b[:, 1:]) / b[:, 1:].numel()
        if not torch.isfinite(loss.detach()) or float(loss.detach()) > 20:
            return {s: math.inf for s in eval_at}
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step in eval_at:
            out[step] = evaluate(model, held)
    return out


def best_index(losses: list[float]) -> int:
    return int(np.argmin(losses))


def fit_scaling_law(points: list[tuple[float, float, float]]) -> dict:
    """Fit L = E + A/N^a + B/D^b to ``(N, D, L)`` points; constants with 1-sigma errors."""
    from scipy.optimize import curve_fit

    N, D, L = (np.array(x, float) for x in zip(*points))

    def law(x, E, logA, a, logB, b):
        n, d = x
        return E + np.exp(logA) / n ** a + np.exp(logB) / d ** b

    p0 = [max(0.1, L.min() * 0.8), math.log(10.0), 0.3, math.log(10.0), 0.3]
    popt, pcov = curve_fit(law, (N, D), L, p0=p0, bounds=([0, -20, 0, -20, 0], [L.min(), 40, 2, 40, 2]), maxfev=20000)
    err = np.sqrt(np.clip(np.diag(pcov), 0, None))
    names = ["E", "log_A", "alpha", "log_B", "beta"]
    return {"constants": dict(zip(names, popt.tolist())), "stderr": dict(zip(names, err.tolist())),
            "predict": lambda n, d: float(law((np.array([n]), np.array([d])), *popt)[0])}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    log2 = [math.log2(x) for x in result["lr_grid"]]
    cmap = plt.get_cmap("viridis")
    widths = result["widths"]
    for ax, p in zip(axes, ("sp", "mup")):
        for i, w in enumerate(widths):
            ys = result["loss"][p][str(w)]
            color = cmap(i / max(1, len(widths) - 1))
            ax.plot(log2, [y if math.isfinite(y) else np.nan for y in ys], marker="o", ms=3, color=color,
                    label=f"width {w}")
            b = best_index(ys)
            ax.plot(log2[b], ys[b], marker="*", ms=12, color=color)
        ax.set_title({"sp": "SP", "mup": "μP"}[p] + f": best lr moves {result[f'{p}_best_lr_shift_steps']} grid steps")
        ax.set_xlabel("log2(learning rate)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"held-out loss after {result['steps']} steps (nats/byte)")
    axes[1].legend(fontsize=8)
    lo = min(min(v for v in ys if math.isfinite(v)) for p in result["loss"].values() for ys in p.values())
    axes[0].set_ylim(lo - 0.05, lo + 1.2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--lr-log2", type=int, nargs=2, default=[-11, -5], help="grid of 2^k, k in [lo, hi]")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init-std", type=float, default=None, help="default 1/sqrt(base width): a fan-in init at the base")
    ap.add_argument("--quick", action="store_true", help="widths 64 128 256, 30 steps, 5 lrs")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/mup_transfer.json"))
    args = ap.parse_args()
    if args.quick:
        args.widths, args.steps, args.lr_log2 = [64, 128, 256], 30, [-10, -6]
    torch.set_num_threads(args.threads)
    global INIT_STD
    INIT_STD = args.init_std
    train_data, held_data = corpus_bytes()
    train_batches = batches(train_data, args.steps, args.batch, args.seq_len, seed=1)
    held = batches(held_data, 8, 16, args.seq_len, seed=2)
    grid = [2.0 ** k for k in range(args.lr_log2[0], args.lr_log2[1] + 1)]
    eval_at = sorted({args.steps // 4, args.steps // 2, 3 * args.steps // 4, args.steps})
    base = args.widths[0]
    loss: dict[str, dict[str, list[float]]] = {"sp": {}, "mup": {}}
    curves: dict[str, dict[str, dict[str, dict[int, float]]]] = {"sp": {}, "mup": {}}
    t0 = time.time()
    for w in args.widths:
        for p in ("sp", "mup"):
            cfg = model_config(w, p, base, args.layers, args.seq_len)
            runs = [train(cfg, lr, train_batches, held, eval_at, args.warmup) for lr in grid]
            loss[p][str(w)] = [r[args.steps] for r in runs]
            curves[p][str(w)] = {f"{lr:g}": r for lr, r in zip(grid, runs)}
            print(f"width {w:>5} {p:>3}: " + " ".join(f"{x:.3f}" for x in loss[p][str(w)])
                  + f"  best 2^{args.lr_log2[0] + best_index(loss[p][str(w)])}  ({time.time() - t0:.0f}s)", flush=True)

    def shift(p: str) -> int:
        best = [best_index(loss[p][str(w)]) for w in args.widths]
        return int(max(best) - min(best))

    wide = str(args.widths[-1])
    small_best = best_index(loss["mup"][str(base)])
    transfer = {
        "small_width": base, "wide_width": int(wide), "width_ratio": int(wide) // base,
        "lr_from_small_sweep": grid[small_best],
        "transferred_loss": loss["mup"][wide][small_best],
        "direct_sweep_best_loss_mup": min(loss["mup"][wide]),
        "direct_sweep_best_loss_sp": min(loss["sp"][wide]),
    }
    transfer["no_worse_than_direct_sweeps"] = bool(
        transfer["transferred_loss"] <= min(transfer["direct_sweep_best_loss_mup"], transfer["direct_sweep_best_loss_sp"]) + 1e-9)

    tokens_per_step = args.batch * args.seq_len
    points = []
    for w in args.widths[:-1]:
        n = model_config(w, "mup", base, args.layers, args.seq_len).num_params(include_embedding=False)
        run = curves["mup"][str(w)][f"{grid[best_index(loss['mup'][str(w)])]:g}"]
        points += [(n, s * tokens_per_step, run[s]) for s in eval_at if math.isfinite(run[s])]
    law = fit_scaling_law(points)
    n_wide = model_config(int(wide), "mup", base, args.layers, args.seq_len).num_params(include_embedding=False)
    predicted = law["predict"](n_wide, args.steps * tokens_per_step)
    measured = loss["mup"][wide][small_best]

    result = {
        "benchmark": "mup_transfer",
        "date": datetime.date.today().isoformat(),
        "device": f"{platform.machine()} CPU, {args.threads} threads",
        "torch": torch.__version__,
        "setup": {"data": "data/sample corpus as UTF-8 bytes (vocab 256); held-out last 5%", "layers": args.layers,
                  "heads": 4, "seq_len": args.seq_len, "batch": args.batch, "optimizer": "AdamW betas (0.9, 0.95), wd 0",
                  "schedule": f"linear warmup {args.warmup} then constant", "base_width": base,
                  "init_std": model_config(base, "mup", base, args.layers, args.seq_len).init_std},
        "widths": args.widths, "lr_grid": grid, "steps": args.steps,
        "loss": loss,
        "best_lr": {p: {str(w): grid[best_index(loss[p][str(w)])] for w in args.widths} for p in ("sp", "mup")},
        "mup_best_lr_shift_steps": shift("mup"),
        "sp_best_lr_shift_steps": shift("sp"),
        "transfer": transfer,
        "scaling_law": {
            "form": "L(N, D) = E + A/N^alpha + B/D^beta; N non-embedding params, D tokens",
            "fitted_on": f"μP best-lr runs of widths {args.widths[:-1]} at steps {eval_at}",
            "constants": law["constants"], "stderr": law["stderr"],
            "predicted_wide_loss": predicted, "measured_wide_loss": measured,
            "prediction_rel_error": (predicted - measured) / measured,
        },
        "curves": curves,
        "seconds": round(time.time() - t0, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot(result, out.with_suffix(".png"))
    print(json.dumps({k: result[k] for k in ("mup_best_lr_shift_steps", "sp_best_lr_shift_steps", "transfer")}, indent=1))
    print(f"scaling law: predicted {predicted:.3f} vs measured {measured:.3f}; wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
