"""``OUT/report.html``: what a person looks at after a curate run.

Four plots (kept document lengths, language shares, duplicate-cluster sizes, drop reasons)
as PNGs under ``OUT/plots/`` and one self-contained HTML page with them and the step table.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

from raylm.curate.sink import LENGTH_BINS
from raylm.storage import filesystem


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def plots(stats: dict[str, Any], cluster_sizes: dict[int, int]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    fig, ax = plt.subplots(figsize=(6, 3.2))
    hist = np.asarray(stats.get("kept_length_hist") or np.zeros(len(LENGTH_BINS) - 1))
    ax.bar(LENGTH_BINS[:-1], hist, width=np.diff(LENGTH_BINS), align="edge", edgecolor="black", linewidth=0.3)
    ax.set_xscale("log")
    nonzero = np.flatnonzero(hist)
    if len(nonzero):  # show the populated range, one bin of margin each side
        ax.set_xlim(LENGTH_BINS[max(nonzero[0] - 1, 0)], LENGTH_BINS[min(nonzero[-1] + 2, len(LENGTH_BINS) - 1)])
    ax.set(title="Kept document length", xlabel="UTF-8 bytes (log scale)", ylabel="documents")
    out["lengths.png"] = _png(fig)
    plt.close(fig)

    langs = stats.get("kept_languages") or {}
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if langs:
        top = list(langs.items())[:12]
        ax.barh([k or "?" for k, _ in top][::-1], [v for _, v in top][::-1])
    ax.set(title="Languages of kept documents" if langs else "Languages (no langid step)", xlabel="documents")
    out["languages.png"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.2))
    if cluster_sizes:
        sizes = np.array(sorted(cluster_sizes))
        counts = np.array([cluster_sizes[s] for s in sizes])
        ax.bar(sizes.astype(str) if len(sizes) <= 20 else sizes, counts)
    ax.set(title="Duplicate clusters by size", xlabel="documents in cluster", ylabel="clusters")
    out["duplicate_clusters.png"] = _png(fig)
    plt.close(fig)

    drops = [(f"{s['step']}:{r}", n) for s in stats["steps"] for r, n in s["dropped"].items()]
    drops.sort(key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.28 * len(drops) + 1)))
    if drops:
        ax.barh([k for k, _ in drops], [v for _, v in drops], color="tab:red")
    ax.set(title="Dropped documents by reason", xlabel="documents")
    out["drop_reasons.png"] = _png(fig)
    plt.close(fig)
    return out


def write_report(out: str, stats: dict[str, Any], cluster_sizes: dict[int, int]) -> None:
    fs, root = filesystem(out)
    images = plots(stats, cluster_sizes)
    fs.create_dir(f"{root}/plots", recursive=True)
    for name, data in images.items():
        with fs.open_output_stream(f"{root}/plots/{name}") as f:
            f.write(data)
    rows = "".join(
        f"<tr><td>{html.escape(s['step'])}</td><td>{s['docs_in']}</td><td>{s['kept']}</td>"
        f"<td>{s['docs_in'] - s['kept']}</td><td>{s['seconds']:.1f}</td>"
        f"<td>{html.escape(', '.join(f'{r}={n}' for r, n in s['dropped'].items()))}</td></tr>"
        for s in stats["steps"])
    imgs = "".join(f'<img alt="{n}" src="data:image/png;base64,{base64.b64encode(d).decode()}">'
                   for n, d in images.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>raylm curate report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,td:last-child{{text-align:left}}
img{{max-width:48%;margin:4px}}</style></head><body>
<h1>raylm curate</h1>
<p>{stats['documents_in']} documents in, {stats['kept']} kept, {stats['dropped']} dropped,
{stats['seconds']:.1f} s. Conservation (in = kept + dropped): <b>{'ok' if stats['conservation_ok'] else 'VIOLATED'}</b></p>
<table><tr><th>step</th><th>docs in</th><th>kept</th><th>dropped</th><th>seconds</th><th>reasons</th></tr>{rows}</table>
<div>{imgs}</div></body></html>"""
    with fs.open_output_stream(f"{root}/report.html") as f:
        f.write(page.encode())
