"""``raylm report RUN``: one self-contained HTML page about a training run.

Written at the end of every run that ``raylm train``, ``raylm recipe`` or ``raylm demo`` starts
(``run_report``) as ``<run>/report.html``, and on demand for any run folder, local or in an
object store (``raylm report RUN``). The page leads with the figures a person asks first
(steps, loss from first to last, held-out loss, throughput, where the checkpoint is), then the
plots of ``raylm.train.plots`` (loss with spikes and rollbacks marked, held-out loss per set and
per language, learning rate, gradient norm, tokens/s and MFU, data wait, memory), then the
hardware (``hardware.json``: the Ray cluster the run had; ``meta.json``: rank 0's view of the
parallelism) and the resolved config (``config.json``), as curate's ``report.html`` does for a
curated dataset.
"""

from __future__ import annotations

import base64
import html
import json
import platform
from typing import Any

from raylm import storage
from raylm.train.plots import figures

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1300px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
.figs img{width:49%;min-width:420px;margin:2px}pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}
.warn{color:#b00}"""


def _read(fs, path: str) -> str | None:
    try:
        with fs.open_input_stream(path) as f:
            return f.read().decode("utf-8")
    except (FileNotFoundError, OSError):
        return None


def hardware() -> dict[str, Any]:
    """The Ray cluster this process is connected to (nodes, CPUs, GPUs and their kinds) and the
    software versions; written next to a run as ``hardware.json`` by ``fit``."""
    import ray
    import torch

    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__}
    if ray.is_initialized():
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        res = [n.get("Resources", {}) for n in nodes]
        out.update({"nodes": len(nodes), "cpus": sum(r.get("CPU", 0) for r in res),
                    "gpus": sum(r.get("GPU", 0) for r in res),
                    "accelerators": sorted({k.split(":", 1)[1] for r in res for k in r
                                            if k.startswith("accelerator_type:")}),
                    "memory_gb": round(sum(r.get("memory", 0) for r in res) / 2**30, 1)})
    return out


def _cell(v: Any) -> str:
    return ", ".join(map(str, v)) or "none" if isinstance(v, (list, tuple)) else str(v)


def _rows_table(pairs: list[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_cell(v))}</td></tr>"
                               for k, v in pairs if v is not None) + "</table>"


def headline(rows: list[dict[str, Any]], cfg: dict[str, Any]) -> list[tuple[str, Any]]:
    """The figures at the top of the page."""
    train = [r for r in rows if "loss" in r]
    out: list[tuple[str, Any]] = [("steps", f"{train[-1]['step']} of {cfg.get('steps', '?')}" if train else "none logged")]
    if train:
        out.append(("training loss", f"{train[0]['loss']:.4f} (step {train[0]['step']}) -> "
                                     f"{train[-1]['loss']:.4f} (step {train[-1]['step']})"))
        tps = [r["tokens_per_s"] for r in train[1:] or train]
        out.append(("tokens/s (median window)", f"{sorted(tps)[len(tps) // 2]:,.0f}"))
        mfu = [r["mfu"] for r in train if r.get("mfu") is not None]
        if mfu:
            out.append(("MFU (median window)", f"{100 * sorted(mfu)[len(mfu) // 2]:.1f}%"))
        out.append(("tokens seen", f"{train[-1].get('tokens_seen', 0):,}"))
        spikes, rollbacks = sum(bool(r.get("spike")) for r in train), train[-1].get("rollbacks", 0)
        out.append(("spikes skipped / rollbacks", f"{spikes} / {rollbacks}"))
    evals = [r for r in rows if "val/loss" in r]
    if evals:
        out.append(("held-out loss", f"{evals[-1]['val/loss']:.4f} at step {evals[-1]['step']}"))
    return out


def render(name: str, rows: list[dict[str, Any]], cfg: dict[str, Any], meta: dict[str, Any],
           hw: dict[str, Any], checkpoints: list[str]) -> str:
    """The page as a string (every image inline)."""
    imgs = "".join(f'<img alt="{n}" src="data:image/png;base64,{base64.b64encode(d).decode()}">'
                   for n, d in figures(rows, cfg.get("clip_grad_norm")).items())
    top = headline(rows, cfg) + [("latest checkpoint", checkpoints[-1] if checkpoints else "none")]
    samples = {k: v for k, v in (next((r for r in reversed(rows) if any(k.startswith("samples/") for k in r)), {})
                                 ).items() if k.startswith("samples/")}
    sample_html = ("<h2>Generation samples (last evaluation)</h2>"
                   + "".join(f"<p><b>{html.escape(k)}</b></p><pre>{html.escape(str(v))}</pre>" for k, v in samples.items())
                   if samples else "")
    empty = "" if rows else '<p class="warn">This run logged no metrics (metrics.jsonl is missing or empty).</p>'
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>raylm run {html.escape(name)}</title>
<style>{_STYLE}</style></head><body>
<h1>raylm run <code>{html.escape(name)}</code></h1>{empty}
{_rows_table(top)}
<h2>Curves</h2><div class="figs">{imgs}</div>{sample_html}
<h2>Hardware</h2>{_rows_table(sorted(hw.items()))}{_rows_table(sorted((k, v) for k, v in meta.items() if k != 'deepspeed'))}
<h2>Config</h2><pre>{html.escape(json.dumps(cfg, indent=2, ensure_ascii=False))}</pre>
</body></html>"""


def write_report(run: str, out: str | None = None, endpoint: str | None = None) -> str:
    """Write the report of run folder ``run`` (local or a URI) to ``out`` (default
    ``<run>/report.html``); returns where it went."""
    from raylm.train.runlog import read_metrics

    fs, root = storage.filesystem(run, endpoint)
    root = root.rstrip("/")
    if _read(fs, f"{root}/config.json") is None and _read(fs, f"{root}/metrics.jsonl") is None:
        raise storage.InputError(f"{run}: not a run folder (no config.json or metrics.jsonl)")
    rows = read_metrics(run, endpoint)
    cfg = json.loads(_read(fs, f"{root}/config.json") or "{}")
    meta = json.loads(_read(fs, f"{root}/meta.json") or "{}")
    hw = json.loads(_read(fs, f"{root}/hardware.json") or "{}")
    import pyarrow.fs as pafs

    ckpts = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
                   if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_"))
    page = render(cfg.get("name") or root.rsplit("/", 1)[-1], rows, cfg, meta, hw, ckpts)
    target = out or f"{run.rstrip('/')}/report.html"
    ofs, opath = storage.filesystem(target, endpoint)
    with ofs.open_output_stream(opath) as f:
        f.write(page.encode("utf-8"))
    return target


def run_report(cfg: Any) -> str | None:
    """``<run>/report.html`` of the run of train config ``cfg`` as it ended; returns its path. A
    run whose report cannot be drawn still succeeded, so a failure here is a warning."""
    import warnings

    run = f"{cfg.storage_path.rstrip('/')}/{cfg.name}"
    try:
        return write_report(run, endpoint=cfg.storage_endpoint)
    except Exception as exc:  # noqa: BLE001 - the report is a courtesy, the run is what matters
        warnings.warn(f"{run}: the run report could not be written: {exc!r}", stacklevel=2)
        return None
