"""The figures of a run report (``raylm.train.report``), each a PNG from ``metrics.jsonl`` rows.

Loss with spikes and rollbacks marked, held-out loss per set and per language, the learning
rate, the gradient norm, throughput with MFU, the data wait, and peak memory: what a person
looks at first to judge a run. A figure whose metric the run never logged is left out.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

Rows = list[dict[str, Any]]


def _series(rows: Rows, key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], float(r[key])) for r in rows if isinstance(r.get(key), (int, float))]
    return [s for s, _ in pts], [v for _, v in pts]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def _loss(ax, rows: Rows, clip: float | None) -> None:
    steps, loss = _series(rows, "loss")
    ax.plot(steps, loss, label="training loss", color="tab:blue")
    spikes = [(r["step"], r["loss"]) for r in rows if r.get("spike") and "loss" in r]
    if spikes:
        ax.scatter(*zip(*spikes), color="tab:red", marker="x", s=50, zorder=3, label=f"spike ({len(spikes)}, skipped)")
    prev = 0
    for r in rows:  # a rollback: the counter went up in this window
        if r.get("rollbacks", 0) > prev:
            ax.axvline(r["step"], color="tab:red", linestyle="--", alpha=0.6)
            prev = r["rollbacks"]
    if prev:
        ax.plot([], [], color="tab:red", linestyle="--", label=f"rollback ({prev})")
    s, v = _series(rows, "val/loss")
    if s:
        ax.plot(s, v, "o-", color="tab:orange", label="held-out loss (all sets)")
    ax.set(title="Loss", xlabel="step", ylabel="nats / token")


def _held_out(ax, rows: Rows, prefix: str, title: str) -> None:
    keys = sorted({k for r in rows for k in r if k.startswith(prefix) and k.endswith("/loss")
                   and k.count("/") == prefix.count("/") + 1})
    for k in keys:
        ax.plot(*_series(rows, k), "o-", label=k[len(prefix):-5])
    ax.set(title=title, xlabel="step", ylabel="nats / token")


def _grad(ax, rows: Rows, clip: float | None) -> None:
    ax.plot(*_series(rows, "grad_norm"), color="tab:purple")
    if clip:
        ax.axhline(clip, color="gray", linestyle=":", label=f"clip at {clip:g}")
    ax.set_yscale("log")
    ax.set(title="Gradient norm (before clipping)", xlabel="step")


def _throughput(ax, rows: Rows, clip: float | None) -> None:
    ax.plot(*_series(rows, "tokens_per_s"), color="tab:green", label="tokens/s")
    ax.set(title="Throughput", xlabel="step", ylabel="tokens / s (all workers)")
    steps, mfu = _series(rows, "mfu")
    if steps:
        twin = ax.twinx()
        twin.plot(steps, [100 * m for m in mfu], color="tab:olive", linestyle="--", label="MFU")
        twin.set_ylabel("MFU (%)")
        twin.legend(loc="lower right", fontsize=8)


def _simple(key: str, title: str, ylabel: str, scale: float = 1.0) -> Callable:
    def draw(ax, rows: Rows, clip: float | None) -> None:
        steps, v = _series(rows, key)
        ax.plot(steps, [x * scale for x in v], color="tab:brown")
        ax.set(title=title, xlabel="step", ylabel=ylabel)
    return draw


def _mix(ax, rows: Rows, clip: float | None) -> None:
    for k in sorted({k for r in rows for k in r if k.startswith("mix/")}):
        ax.plot(*_series(rows, k), label=k[4:])
    ax.set(title="Realised data mix per log window", xlabel="step", ylabel="share of sequences")


# figure name -> (the metric it needs, how to draw it)
FIGURES: dict[str, tuple[str, Callable]] = {
    "loss": ("loss", _loss),
    "held_out_sets": ("val/loss", lambda ax, rows, clip: _held_out(ax, rows, "val/", "Held-out loss per set")),
    "held_out_languages": ("val/lang/", lambda ax, rows, clip: _held_out(ax, rows, "val/lang/",
                                                                          "Held-out loss per language")),
    "lr": ("lr", _simple("lr", "Learning rate", "lr")),
    "grad_norm": ("grad_norm", _grad),
    "throughput": ("tokens_per_s", _throughput),
    "data_wait": ("data_wait_frac", _simple("data_wait_frac", "Time waiting for data", "% of the window", 100.0)),
    "memory": ("peak_memory_gb", _simple("peak_memory_gb", "Peak memory (rank 0)", "GiB")),
    "mix": ("mix/", _mix),
}


def figures(rows: Rows, clip: float | None = None) -> dict[str, bytes]:
    """name -> PNG of every figure whose metric ``rows`` has."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = {k for r in rows for k in r}
    out: dict[str, bytes] = {}
    for name, (needs, draw) in FIGURES.items():
        if not any(k == needs or (needs.endswith("/") and k.startswith(needs)) for k in present):
            continue
        fig, ax = plt.subplots(figsize=(6, 3.4))
        draw(ax, rows, clip)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        out[name] = _png(fig)
        plt.close(fig)
    return out
