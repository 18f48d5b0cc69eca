"""A scaling law from μP sweep runs, and the large run's loss predicted before it is read.

Runs: μP models (the ``mup_transfer.py`` setup: 2 layers, 4 heads, seq_len 64, BPE 1024 of
the shipped sample corpus, base width 128, output multiplier 4) at widths 64..512 and 25, 50
and 100 optimizer steps of 8 sequences (each budget a full cosine schedule), all at the
learning rate the width-128 μP
sweep found best (``--log2-lr``; μP makes it the best at every width), each scored by its
held-out loss on the same 128 sequences as ``mup_transfer.py``. ``L(N, D) = E + A/N^alpha +
B/D^beta`` is fitted to them (``raylm.tune.scaling``: Huber on log-loss, bootstrap for the
uncertainty), with ``N`` the non-embedding parameters and ``D`` the training tokens.

The fit predicts the large run, width 1024 for 100 steps (8x the widest fitted model), and
the prediction is written to ``benchmarks/results/scaling_law.json`` *before* the large run's
loss is read: from ``--target-json`` (``mup_transfer.json``'s transferred run, the same model,
data, seed and learning rate, hence the same loss; the script waits for the file when it is
started alongside ``mup_transfer.py``) when given, else by training it here.

    python benchmarks/scaling_law.py [--log2-lr -9] [--target-json benchmarks/results/mup_transfer.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mup_corpus import sample_shards  # noqa: E402
from mup_transfer import RESULTS, base_model, run_loss  # noqa: E402

from raylm.model import model_config  # noqa: E402
from raylm.tune.local import load_batches  # noqa: E402
from raylm.tune.scaling import fit_scaling_law, predict  # noqa: E402


def plot(points: list[dict], fit: dict, target: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from raylm.tune.scaling import law

    fig, ax = plt.subplots(figsize=(6, 4))
    theta = np.asarray(fit["theta"])
    for steps in sorted({p["steps"] for p in points}):
        pts = [p for p in points if p["steps"] == steps]
        line, = ax.plot([p["n"] for p in pts], [p["loss"] for p in pts], "o", label=f"{steps} steps")
        d = pts[0]["d"]
        ns = np.geomspace(min(p["n"] for p in points), target["n"], 50)
        ax.plot(ns, law(theta, ns, np.full_like(ns, d)), "-", color=line.get_color(), alpha=0.6)
    ax.errorbar([target["n"]], [target["predicted"]["loss"]],
                yerr=[[max(0.0, target["predicted"]["loss"] - target["predicted"]["p05"])],
                      [max(0.0, target["predicted"]["p95"] - target["predicted"]["loss"])]],
                fmt="s", color="k", mfc="none", label="prediction (1024, 100 steps)")
    if target.get("actual") is not None:
        ax.plot([target["n"]], [target["actual"]], "*", ms=12, color="k", label="actual")
    ax.set(xscale="log", xlabel="non-embedding parameters N", ylabel="held-out loss",
           title="L(N, D) = E + A/N^α + B/D^β (μP runs)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--target-width", type=int, default=1024)
    ap.add_argument("--target-steps", type=int, default=100)
    ap.add_argument("--log2-lr", type=int, default=-9, help="the best of the width-128 μP sweep (mup_transfer.json)")
    ap.add_argument("--base-width", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--bootstrap", type=int, default=100)
    ap.add_argument("--target-json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/raylm-mup-bench"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    shards = sample_shards(args.work, args.seq_len)
    # the held-out sequences of mup_transfer.py: the 128 after its 100 steps of 8
    held_out = load_batches(shards, args.batch_size, 128 // args.batch_size, skip=100 * args.batch_size)
    if max(args.steps + [args.target_steps]) * args.batch_size > 100 * args.batch_size:
        raise SystemExit("budgets above 100 steps would train on the held-out sequences")
    batches = load_batches(shards, args.batch_size, max(args.steps))
    lr = 2.0 ** args.log2_lr

    def model(width: int):
        return model_config(base_model(args.seq_len), d_model=width, parametrization="mup",
                            base_width=args.base_width)

    points = []
    for width in args.widths:
        for steps in args.steps:
            t = time.time()
            loss = run_loss(model(width), lr, batches[:steps], held_out)
            points.append({"width": width, "steps": steps, "n": model(width).num_params(include_embedding=False),
                           "d": steps * args.batch_size * args.seq_len, "loss": loss})
            print(f"width {width:>5} steps {steps:>4} loss {loss:.4f} ({time.time() - t:.0f} s)", flush=True)
    fit = fit_scaling_law([p["n"] for p in points], [p["d"] for p in points], [p["loss"] for p in points],
                          bootstrap=args.bootstrap)
    target = {"width": args.target_width, "steps": args.target_steps,
              "n": model(args.target_width).num_params(include_embedding=False),
              "d": args.target_steps * args.batch_size * args.seq_len}
    target["predicted"] = predict(fit, target["n"], target["d"])
    target["predicted_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "date": dt.date.today().isoformat(),
        "device": f"{platform.machine()}, CPU only, {args.threads} thread(s)",
        "setup": {"parametrization": "mup", "base_width": args.base_width, "log2_lr": args.log2_lr,
                  "widths": args.widths, "steps": args.steps, "batch_size": args.batch_size,
                  "seq_len": args.seq_len, "loss": "held-out loss, 128 sequences (as mup_transfer.py)",
                  "n": "non-embedding parameters", "d": "training tokens"},
        "runs": points,
        "fit": {k: fit[k] for k in ("fit", "std", "p05", "p95", "runs", "bootstraps", "rmse_log")},
        "target": target,
    }
    path = args.out / "scaling_law.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"fit: {json.dumps(fit['fit'])}\nprediction for width {args.target_width}, {args.target_steps} steps: "
          f"{json.dumps(target['predicted'])} (written to {path} at {target['predicted_at']})", flush=True)

    actual = None
    source = "trained here"
    if args.target_json is not None:
        while not args.target_json.exists():  # mup_transfer.py, started alongside, is not done yet
            time.sleep(30)
        transfer = json.loads(args.target_json.read_text())["transfer"]
        if transfer["large_width"] == args.target_width and transfer["small_sweep_best_log2_lr"] == args.log2_lr:
            actual, source = transfer["transferred_run_loss"], f"{args.target_json.name}: transfer.transferred_run_loss"
    if actual is None:
        actual = run_loss(model(args.target_width), lr, batches[:args.target_steps], held_out)
    target.update(actual=actual, actual_source=source,
                  error=actual - target["predicted"]["loss"],
                  relative_error=(actual - target["predicted"]["loss"]) / actual,
                  inside_p05_p95=target["predicted"]["p05"] <= actual <= target["predicted"]["p95"])
    result["wall_s"] = round(time.time() - t0, 1)
    path.write_text(json.dumps(result, indent=2) + "\n")
    plot(points, fit, target, args.out / "scaling_law.png")
    print(json.dumps({"fit": result["fit"]["fit"], "std": result["fit"]["std"], "target": target}, indent=2))


if __name__ == "__main__":
    main()
