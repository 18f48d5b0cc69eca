"""``raylm demo``: the whole platform on the shipped sample corpus, on a local Ray.

curate (every default step) -> train a SentencePiece tokenizer on the curated text -> tokenise
and pack into token shards with a held-out split -> train a tiny model with 2 Ray Train workers
(gloo on CPU), evaluated on the held-out split per language. Each stage prints one short
paragraph with its figures (its progress line, or bar on a terminal, and what it wrote); the
last lines say where everything is and what to run next. The run's ``report.html`` has the
curves; the loss curve alone is also ``OUT/train/demo/loss.png``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from raylm.cluster import RayConfig
from raylm.console import duration, say
from raylm.curate.pipeline import CurateConfig, run

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"


def plot_loss(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title("raylm demo: tiny model on the sample corpus")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _curate_paragraph(stats: dict, out: Path) -> None:
    langs = ", ".join(f"{k or '?'} {v}" for k, v in list(stats["kept_languages"].items())[:4])
    drops = [(f"{s['step']}:{r}", n) for s in stats["steps"] for r, n in s["dropped"].items()]
    top = ", ".join(f"{k} {n}" for k, n in sorted(drops, key=lambda kv: -kv[1])[:3])
    say(f"   kept {stats['kept']} of {stats['documents_in']} documents ({langs}); "
        f"dropped {stats['dropped']}" + (f" (most: {top})" if top else ""))
    say(f"   -> {out}/curated/ (report.html: lengths, languages, duplicates, drop reasons)")


def _tokenizer_paragraph(report: dict, out: Path) -> None:
    fert = ", ".join(f"{lang} {f['tokens_per_char']:.2f}" for lang, f in report["fertility"].items()
                     if f.get("tokens_per_char"))
    say(f"   {report['vocab_size']} pieces; tokens per character on {report['heldout_docs_evaluated']} "
        f"held-out documents: {fert}")
    say(f"   -> {out}/tokenizer/sp.model")


def run_demo(output: str = "out/demo", num_cpus: int = 4, steps: int = 60) -> int:
    from raylm.cluster import ensure_ray
    from raylm.data.prepare import HeldOutConfig, PrepareConfig, prepare
    from raylm.data.tokenizer import TokenizerConfig, train_tokenizer
    from raylm.train.config import train_config
    from raylm.train.progress import TrainProgress
    from raylm.train.report import run_report
    from raylm.train.runlog import read_metrics
    from raylm.train.trainer import fit, run_dir

    if not SAMPLE.is_dir():
        raise FileNotFoundError(f"{SAMPLE}: the sample corpus is missing from this checkout")
    t0 = time.perf_counter()
    out = Path(output).resolve()
    mb = sum(p.stat().st_size for p in SAMPLE.glob("*.jsonl*")) / 1e6
    say(f"raylm demo: the shipped sample corpus ({mb:.1f} MB compressed, English and Korean public-domain "
        f"text) to a trained model, on a local Ray with {num_cpus} logical CPUs. Output: {out}")
    cfg = CurateConfig(ray=RayConfig(num_cpus=num_cpus))
    ensure_ray(cfg.ray)

    say(f"\n1. Curate with Ray Data: {', '.join(name for name, _ in cfg.parsed_steps())}")
    stats = run(cfg, [str(SAMPLE)], str(out / "curated"), overwrite=True, quiet=True)
    _curate_paragraph(stats, out)

    say("\n2. Train a SentencePiece tokenizer on the curated text")
    (out / "tokenizer").mkdir(parents=True, exist_ok=True)
    report = train_tokenizer([str(out / "curated")], str(out / "tokenizer" / "sp"),
                             TokenizerConfig(vocab_size=2000, num_threads=2))
    _tokenizer_paragraph(report, out)

    seq_len = 128
    say(f"\n3. Tokenise and pack into {seq_len}-token sequences, 10% of documents held out")
    summary = prepare(PrepareConfig(tokenizer=str(out / "tokenizer" / "sp.model"), seq_len=seq_len,
                                    sources={"sample": [str(out / "curated")]}, batch_size=200,
                                    rows_per_shard=500, val=HeldOutConfig(fraction=0.1)),
                      str(out / "tokens"), overwrite=True)
    say(f"   {summary['num_tokens']:,} training tokens -> {out}/tokens/sample (held out: tokens/sample/val)")

    train = train_config({
        "name": "demo", "storage_path": str(out / "train"), "steps": steps, "log_every": 5, "seed": 0,
        "model": {"flavor": "debug", "vocab_size": report["vocab_size"], "max_seq_len": seq_len,
                  "attention": "sdpa"},
        "data": {"path": str(out / "tokens" / "sample"), "window": 512},
        "optim": {"lr": 3e-3, "schedule": {"name": "cosine", "warmup_steps": 5}},
        "micro_batch_size": 8, "scale": {"num_workers": 2, "cpus_per_worker": 0.5},
        "checkpoint": {"every": 0, "keep": 1}, "eval": {"every": max(1, steps // 2), "max_sequences": 64},
    }, "demo")
    say(f"\n4. Train a {train.model.num_params() / 1e6:.1f}M-parameter model: 2 Ray Train workers (DDP over gloo), "
        f"{steps} steps of {train.global_batch_size} x {seq_len} tokens")
    shutil.rmtree(run_dir(train), ignore_errors=True)  # a new run, not the resumption of the last demo's
    t_train = time.perf_counter()
    with TrainProgress(train) as progress:
        result = fit(train, callbacks=progress.callbacks)
    folder = run_dir(train)
    rows = [r for r in read_metrics(folder) if "loss" in r]
    plot_loss(rows, str(Path(folder) / "loss.png"))
    tps = sorted(r["tokens_per_s"] for r in rows[1:] or rows)
    say(f"   loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f} in {duration(time.perf_counter() - t_train)} "
        f"(median {tps[len(tps) // 2]:,.0f} tokens/s)")
    say(f"   report: {run_report(train)}")
    say(f"   checkpoint: {result.checkpoint.path if result.checkpoint else 'none'}")

    say(f"\nDone in {duration(time.perf_counter() - t0)}. Everything is under {out}:")
    for path, what in (("curated/report.html", "what curation kept and dropped, and why"),
                       ("tokenizer/sp.model", "the tokenizer"),
                       ("tokens/sample/", "token shards (val/: the held-out split)"),
                       ("train/demo/report.html", "the run: loss, held-out loss per language, lr, throughput, "
                                                  "hardware, config")):
        say(f"  {path:<24} {what}")
    say("Next:")
    say(f"  raylm generate {folder} \"The old man\" --max-new-tokens 40")
    say(f"  raylm eval {folder} --data {out}/tokens/sample/val")
    say(f"  tensorboard --logdir {folder}/tensorboard")
    say("  raylm demo -v        # the same, with Ray's own logs")
    ok = stats["conservation_ok"] and result.error is None and rows[-1]["loss"] < rows[0]["loss"]
    return 0 if ok else 1
