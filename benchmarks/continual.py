"""Continual pretraining on the shipped sample corpus, on CPU: how much English a tiny model
forgets while it learns Korean, against the share of English replayed.

1. ``raylm prepare`` the corpus into two sources, ``en`` (Austen, Bierce) and ``ko`` (the
   Korean constitution, bills), with a 15% held-out split of documents, seq_len 128, a
   2048-piece BPE trained on both.
2. Pretrain a tiny model (4 layers, width 128) on ``en`` with a WSD schedule and stop at the end
   of its stable phase (checkpoint at step S).
3. From that checkpoint, continue on ``ko`` (``continual.init_from``) for the same steps and
   batch, once per replay share of English (``continual.replay``: 0, 10%, 25%), with a fresh
   optimizer and a re-warmed cosine at a third of the pretraining lr; and as a WSD branch
   (``continual.decay_steps``): the pretraining run's decay, from S, on ``ko`` with 10% replay.

Each run evaluates both held-out splits at its start and every ``--eval-every`` steps; the
figures are the runs' own metrics: ``val/ko/ppl`` before and after (the gain) and
``forgetting/old_en/*`` (English loss and perplexity after minus before). Ray Train with one
worker, in one local Ray started here.

Writes ``benchmarks/results/continual.json`` and ``continual.png`` (English forgetting
against Korean gain, one point per run).

    python benchmarks/continual.py [--pretrain-steps 400] [--steps 100]
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from raylm.config import to_dict
from raylm.data.prepare import HeldOutConfig, PrepareConfig, prepare
from raylm.data.tokenizer import TokenizerConfig, train_from_iterator
from raylm.train.config import train_config
from raylm.train.runlog import read_metrics
from raylm.train.trainer import fit, run_dir

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data/sample/corpus.jsonl.gz"
RESULTS = ROOT / "benchmarks/results"
SOURCES = {"en": ("gutenberg-105", "devils-dictionary"), "ko": ("kolaw", "kobill")}
SEQ_LEN, VOCAB, LR = 128, 2048, 3e-3
REPLAYS = (0.0, 0.1, 0.25)


def prepare_corpus(out: Path) -> Path:
    """Token shards of ``en`` and ``ko`` with held-out splits under ``out/tokens`` (kept)."""
    tokens = out / "tokens"
    if (tokens / "ko" / "val" / "manifest.json").exists():
        return tokens
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    for name, origins in SOURCES.items():
        folder = out / "curated" / name
        folder.mkdir(parents=True, exist_ok=True)
        for origin in origins:  # one file (one packing unit) per origin
            part = [d for d in docs if d["source"] == origin]
            pq.write_table(pa.table({k: [d[k] for d in part] for k in ("id", "text", "lang")}),
                           folder / f"{origin}.parquet")
    lines = [x for d in docs for x in d["text"].splitlines() if x.strip()]
    model = str(train_from_iterator(lines, str(out / "tok"),
                                    TokenizerConfig(vocab_size=VOCAB, num_threads=2, character_coverage=0.995)))
    prepare(PrepareConfig(tokenizer=model, seq_len=SEQ_LEN, batch_size=64, rows_per_shard=4096,
                          val=HeldOutConfig(fraction=0.15, seed=0),
                          sources={name: [str(out / "curated" / name)] for name in SOURCES}), str(tokens))
    return tokens


def base_config(tokens: Path, storage: Path, name: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": name, "storage_path": str(storage), "seed": 0, "log_every": 10,
        "model": {"vocab_size": VOCAB, "d_model": 128, "n_layers": 4, "n_heads": 4, "multiple_of": 16,
                  "max_seq_len": SEQ_LEN, "attention": "sdpa"},
        "data": {"path": str(tokens / "en"), "window": 1024, "prefetch": 2},
        "optim": {"lr": LR, "weight_decay": 0.1,
                  "schedule": {"name": "wsd", "warmup_steps": 20, "decay_fraction": 0.2,
                               "total_steps": round(args.pretrain_steps / 0.8)}},
        "micro_batch_size": args.batch, "scale": {"num_workers": 1, "cpus_per_worker": 1},
        "checkpoint": {"every": 0, "keep": 1}, "tensorboard": False, "spike_guard": {"enabled": False},
        "eval": {"every": args.eval_every, "max_sequences": args.eval_sequences, "batch_size": 32},
    }


def continual_runs(tokens: Path, storage: Path, init: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The continued runs' configs by label."""
    out = {}
    for share in REPLAYS:
        d = base_config(tokens, storage, f"ko-replay{round(share * 100)}", args)
        d.update(steps=args.steps,
                 data={"sources": {"ko": str(tokens / "ko")}, "mix": {"weights": {"ko": 1.0}, "max_epochs": 100},
                       "window": 1024, "prefetch": 2},
                 optim={**d["optim"], "lr": LR / 3,
                        "schedule": {"name": "cosine", "warmup_steps": 10, "min_lr_ratio": 0.1}},
                 continual={"init_from": init, "replay": share})
        out[f"replay {share:.0%}"] = d
    branch = base_config(tokens, storage, "ko-wsd-branch", args)
    branch.update(data=out["replay 10%"]["data"], continual={"init_from": init, "replay": 0.1,
                                                              "decay_steps": args.steps})
    out["WSD branch, replay 10%"] = branch
    return out


def figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Before and after, from the run's own metrics."""
    first, last = rows[0], rows[-1]
    shares = [r["mix/old_en"] for r in rows if "mix/old_en" in r]
    return {
        "ko_ppl_before": first["val/ko/ppl"], "ko_ppl_after": last["val/ko/ppl"],
        "ko_loss_gain": first["val/ko/loss"] - last["val/ko/loss"],
        "en_ppl_before": first["val/old_en/ppl"], "en_ppl_after": last["val/old_en/ppl"],
        "forgetting_en_loss": last["forgetting/old_en/loss"], "forgetting_en_ppl_ratio": last["forgetting/old_en/ppl_ratio"],
        "replay_share_realised": sum(shares) / len(shares) if shares else 0.0,
        "curve": [{"step": r["step"], "ko_loss": r["val/ko/loss"], "en_loss": r["val/old_en/loss"]}
                  for r in rows if "val/ko/loss" in r],
    }


def plot(results: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, r in results.items():
        f = r["figures"]
        branch = "branch" in label
        ax.scatter(f["forgetting_en_loss"], f["ko_loss_gain"], marker="s" if branch else "o", s=60,
                   color="tab:red" if branch else "tab:blue")
        ax.annotate(label, (f["forgetting_en_loss"], f["ko_loss_gain"]), textcoords="offset points", xytext=(6, 4))
    ax.set_xlabel("English forgetting: held-out loss after - before (nats/token)")
    ax.set_ylabel("Korean gain: held-out loss before - after (nats/token)")
    ax.set_title("Continual pretraining en -> ko, tiny model, CPU")
    ax.margins(0.2)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrain-steps", type=int, default=400)
    ap.add_argument("--steps", type=int, default=100, help="steps of every continued run")
    ap.add_argument("--batch", type=int, default=16, help="sequences of 128 tokens per step")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--eval-sequences", type=int, default=0, help="per set; 0: the whole held-out split")
    ap.add_argument("--work", type=Path, default=ROOT / "out/continual_bench")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    threads = os.cpu_count() or 1
    t0 = time.perf_counter()
    tokens = prepare_corpus(args.work)
    storage = args.work / "runs"
    shutil.rmtree(storage, ignore_errors=True)
    if not ray.is_initialized():
        ray.init(num_cpus=threads + 1, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    env = {"OMP_NUM_THREADS": str(threads)}  # the one Train worker uses every core

    pre = base_config(tokens, storage, "pretrain-en", args)
    pre["steps"] = args.pretrain_steps
    assert fit(train_config(pre), env=env).error is None
    init = run_dir(train_config(pre))
    results: dict[str, Any] = {}
    for label, d in continual_runs(tokens, storage, init, args).items():
        start = time.perf_counter()
        cfg = train_config(d)
        result = fit(cfg, env=env)
        assert result.error is None, result.error
        folder = run_dir(cfg)
        resolved = json.loads((Path(folder) / "config.json").read_text())
        results[label] = {"continual": resolved["continual"], "mix": resolved["data"]["mix"]["weights"],
                          "lr": resolved["optim"]["lr"], "schedule": resolved["optim"]["schedule"],
                          "steps": resolved["steps"], "wall_s": round(time.perf_counter() - start, 1),
                          "figures": figures(read_metrics(folder))}
        f = results[label]["figures"]
        print(f"{label:<24} ko ppl {f['ko_ppl_before']:8.1f} -> {f['ko_ppl_after']:7.1f}   "
              f"en ppl {f['en_ppl_before']:6.2f} -> {f['en_ppl_after']:6.2f} (forgetting {f['forgetting_en_loss']:+.3f} "
              f"nats, x{f['forgetting_en_ppl_ratio']:.3f})   replay {f['replay_share_realised']:.3f}", flush=True)
    manifests = {n: json.loads((tokens / n / "manifest.json").read_text()) for n in SOURCES}
    vals = {n: json.loads((tokens / n / "val" / "manifest.json").read_text()) for n in SOURCES}
    out = {
        "benchmark": "continual pretraining en -> ko: forgetting vs replay share",
        "date": "2026-12-01",
        "device": f"{platform.machine()} CPU, {threads} core(s), 1 Ray Train worker, fp32",
        "data": {n: {"train_sequences": manifests[n]["num_sequences"], "val_sequences": vals[n]["num_sequences"],
                     "val_documents": vals[n]["documents"], "seq_len": SEQ_LEN} for n in SOURCES},
        "pretrain": {"config": to_dict(train_config(pre)), "steps": args.pretrain_steps,
                     "en_val_ppl": read_metrics(init)[-1]["val/en/ppl"]},
        "runs": results,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "continual.json").write_text(json.dumps(out, indent=2) + "\n")
    plot(results, args.out / "continual.png")
    print(f"wrote {args.out / 'continual.json'} and continual.png in {out['wall_s']:.0f} s")
    assert all(math.isfinite(r["figures"]["forgetting_en_loss"]) for r in results.values())


if __name__ == "__main__":
    main()
