"""``raylm demo``: the whole platform on the shipped sample corpus, on a local Ray.

curate (every default step) -> train a SentencePiece tokenizer on the curated text ->
tokenise and pack into token shards -> train a tiny model with 2 Ray Train workers (gloo on
CPU) and print its loss falling; the loss curve is also plotted to ``OUT/train/loss.png``.
"""

from __future__ import annotations

from pathlib import Path

from raylm.cluster import RayConfig
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


def run_demo(output: str = "out/demo", num_cpus: int = 4, steps: int = 60) -> int:
    from raylm.data.prepare import PrepareConfig, prepare
    from raylm.data.tokenizer import TokenizerConfig, train_tokenizer
    from raylm.train.config import train_config
    from raylm.train.trainer import fit, read_metrics, run_dir

    if not SAMPLE.is_dir():
        raise FileNotFoundError(f"{SAMPLE}: the sample corpus is missing from this checkout")
    out = Path(output).resolve()
    cfg = CurateConfig(ray=RayConfig(num_cpus=num_cpus))
    stats = run(cfg, [str(SAMPLE)], str(out / "curated"), overwrite=True)
    print(f"\ncurated {stats['documents_in']} sample documents -> {stats['kept']} kept; "
          f"report: {out}/curated/report.html")

    (out / "tokenizer").mkdir(parents=True, exist_ok=True)
    report = train_tokenizer([str(out / "curated")], str(out / "tokenizer" / "sp"),
                             TokenizerConfig(vocab_size=2000, num_threads=2))
    print(f"tokenizer: {report['vocab_size']} pieces -> {out}/tokenizer/sp.model")

    seq_len = 128
    summary = prepare(PrepareConfig(tokenizer=str(out / "tokenizer" / "sp.model"), seq_len=seq_len,
                                    sources={"sample": [str(out / "curated")]}, batch_size=200,
                                    rows_per_shard=500),
                      str(out / "tokens"), overwrite=True)
    print(f"packed {summary['num_tokens']} tokens into {seq_len}-token sequences -> {out}/tokens/sample")

    train = train_config({
        "name": "demo", "storage_path": str(out / "train"), "steps": steps, "log_every": 5, "seed": 0,
        "model": {"flavor": "debug", "vocab_size": report["vocab_size"], "max_seq_len": seq_len,
                  "attention": "sdpa"},
        "data": {"path": str(out / "tokens" / "sample"), "window": 512},
        "optim": {"lr": 3e-3, "schedule": {"name": "cosine", "warmup_steps": 5}},
        "micro_batch_size": 8, "scale": {"num_workers": 2, "cpus_per_worker": 0.5},
        "checkpoint": {"every": 0, "keep": 1},
    }, "demo")
    result = fit(train)
    rows = read_metrics(run_dir(train))
    for r in rows:
        print(f"step {r['step']:>4}  loss {r['loss']:.3f}  lr {r['lr']:.1e}  tokens/s {r['tokens_per_s']:.0f}")
    plot_loss(rows, str(Path(run_dir(train)) / "loss.png"))
    print(f"loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}; curve: {run_dir(train)}/loss.png; "
          f"tensorboard --logdir {run_dir(train)}/tensorboard")
    ok = stats["conservation_ok"] and result.error is None and rows[-1]["loss"] < rows[0]["loss"]
    return 0 if ok else 1
