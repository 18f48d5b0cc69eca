"""The μP coordinate check (Yang et al. 2022, fig. 5; the ``mup`` package's ``coord_check``):
train models of several widths for a few Adam steps on the same batches and record the mean
absolute value of every layer's output coordinates after each step. Under μP the curves are
flat in the width; under SP the later layers and the logits grow with it (the sign that the
best learning rate shifts with width).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from raylm.model import Transformer
from raylm.model.config import ModelConfig
from raylm.model.mup import mup_lr_scale
from raylm.optim.optimizers import OptimConfig, build_optimizer
from raylm.optim.schedules import ScheduleConfig


def text_batches(path: str | Path, n: int, batch: int, seq_len: int, seed: int = 0) -> list[torch.Tensor]:
    """``n`` batches ``(batch, seq_len + 1)`` of UTF-8 bytes (a 256-token vocabulary) from a text,
    JSONL or ``.gz`` file: real text without needing a tokenizer."""
    import gzip

    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = np.frombuffer(f.read(), np.uint8)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(data) - seq_len - 1, size=(n, batch))
    return [torch.from_numpy(np.stack([data[s:s + seq_len + 1] for s in row]).astype(np.int64)) for row in starts]


def model_at(base: ModelConfig, width: int) -> ModelConfig:
    """``base`` at ``d_model = width`` (heads and depth kept; the MLP at 8/3 of the width)."""
    return dataclasses.replace(base, d_model=width, ffn_hidden=None, multiple_of=8)


def coord_check(
    base: ModelConfig,
    widths: Sequence[int],
    batches: Sequence[torch.Tensor],
    lr: float = 1e-2,
    seed: int = 0,
) -> dict[int, dict[str, list[float]]]:
    """``out[width][layer]``: mean |coordinate| of each layer's output after 0, 1, ...
    ``len(batches)`` Adam steps (measured on ``batches[0]``). Layers: ``embedding``,
    ``block.<i>`` and ``logits``. ``base.base_width`` is the μP base (None: ``widths[0]``)."""
    out: dict[int, dict[str, list[float]]] = {}
    for width in widths:
        cfg = model_at(base, width)
        if cfg.base_width is None:
            cfg = dataclasses.replace(cfg, base_width=widths[0])
        torch.manual_seed(seed)
        model = Transformer(cfg)
        opt_cfg = OptimConfig(lr=lr, weight_decay=0.0, schedule=ScheduleConfig(name="constant"))
        optimizer = build_optimizer(model, opt_cfg, mup_lr_scale(cfg))
        record: dict[str, list[float]] = {}
        acts: dict[str, torch.Tensor] = {}
        named = [("embedding", model.tok_embeddings)] + [(f"block.{i}", b) for i, b in enumerate(model.layers)]
        hooks = [module.register_forward_hook(lambda m, inp, o, name=name, acts=acts: acts.__setitem__(name, o))
                 for name, module in named]
        probe = batches[0]
        for step in range(len(batches) + 1):
            with torch.no_grad():
                logits = model(probe[:, :-1])
            acts["embedding"] = acts["embedding"] * cfg.input_mult
            acts["logits"] = logits
            for name, a in acts.items():
                record.setdefault(name, []).append(float(a.abs().mean()))
            if step == len(batches):
                break
            b = batches[step]
            loss = model.loss_sum(model(b[:, :-1]), b[:, 1:]) / b[:, 1:].numel()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        for h in hooks:
            h.remove()
        out[width] = record
    return out


def growth(table: dict[int, dict[str, list[float]]], step: int | None = None) -> dict[str, float]:
    """Per layer: the largest over the smallest mean |coordinate| across widths (1 = perfectly
    flat in the width), at ``step``, or (None) of the average over the steps after the first
    update, which is steadier than any single step."""
    widths = sorted(table)

    def size(w: int, name: str) -> float:
        values = table[w][name]
        return values[step] if step is not None else float(np.mean(values[1:] if len(values) > 1 else values))

    return {name: max(size(w, name) for w in widths) / min(size(w, name) for w in widths)
            for name in table[widths[0]]}


def plot(tables: dict[str, dict[int, dict[str, list[float]]]], path: str | Path) -> None:
    """One panel per parametrisation: mean |coordinate| against width, a line per layer and
    step (darker = later)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(5.5 * len(tables), 4.2), sharey=True, squeeze=False)
    for ax, (name, table) in zip(axes[0], tables.items()):
        widths = sorted(table)
        layers = list(table[widths[0]])
        steps = len(table[widths[0]][layers[0]])
        cmap = plt.get_cmap("viridis")
        for li, layer in enumerate(layers):
            for s in range(steps):
                ys = [table[w][layer][s] for w in widths]
                ax.plot(widths, ys, color=cmap(li / max(1, len(layers) - 1)), alpha=0.25 + 0.75 * s / max(1, steps - 1),
                        marker="o", ms=2.5, label=layer if s == steps - 1 else None)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width (d_model)")
        label = {"sp": "SP", "mup": "μP"}.get(name, name)
        ax.set_title(f"{label}: mean |coordinate| by layer, steps 0..{steps - 1}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean |activation|")
    axes[0][-1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(base: ModelConfig, widths: Sequence[int], batches: Sequence[torch.Tensor], out_dir: str | Path,
        lr: float = 1e-2) -> dict:
    """SP and μP coordinate checks, written to ``out_dir``: ``coord_check.json`` (the tables
    and the per-layer growth across widths) and ``coord_check.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {p: coord_check(dataclasses.replace(base, parametrization=p), widths, batches, lr=lr)
              for p in ("sp", "mup")}
    result = {
        "widths": list(widths), "lr": lr, "steps": len(batches),
        "growth_across_widths": {p: growth(t) for p, t in tables.items()},
        "growth_note": "largest / smallest across widths of the mean |coordinate| averaged over steps 1..steps",
        "tables": {p: {str(w): v for w, v in t.items()} for p, t in tables.items()},
    }
    (out_dir / "coord_check.json").write_text(json.dumps(result, indent=1))
    plot(tables, out_dir / "coord_check.png")
    return result
