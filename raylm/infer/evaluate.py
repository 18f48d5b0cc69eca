"""``raylm eval``: a checkpoint's held-out loss and perplexity on token-shard sets, in one
process, with the run's own objective and eval settings; the numbers are those the run
reported at that step (the sets and sums are ``raylm.train.heldout``'s, as in training).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raylm.checkpoint import CheckpointError
from raylm.infer.checkpoint import load_model
from raylm.storage import InputError
from raylm.train.heldout import EvalSet, evaluate, load_set, source_name
from raylm.train.objective import batch_transform


def evaluate_checkpoint(checkpoint: str, folders: Sequence[str], *, max_sequences: int | None = None,
                        batch_size: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """``raylm eval``: the model of ``checkpoint`` (a checkpoint or run folder) on the sets
    ``folders`` (token-shard folders, each optionally ``NAME=FOLDER``), with the run's own
    objective and eval settings unless given; returns the report (step, sets, metrics).
    ``InputError`` names a bad checkpoint, folder or set name."""
    try:
        model, cfg, state = load_model(checkpoint, device=device)
    except CheckpointError as exc:
        raise InputError(str(exc)) from None
    max_sequences = cfg.eval.max_sequences if max_sequences is None else max_sequences
    sets: list[EvalSet] = []
    for spec in folders:
        name, folder = spec.split("=", 1) if "=" in spec else ("", spec)
        if "://" not in folder and not Path(folder).is_dir():
            raise InputError(f"--data: {folder}: no such folder")
        s = load_set(name or source_name(folder), folder, max_sequences)
        if s.name in {x.name for x in sets}:
            raise InputError(f"--data: two sets are named {s.name!r}; name them with NAME=FOLDER")
        sets.append(s)
    out = evaluate(model, sets, batch_size=batch_size or cfg.eval.batch_size or cfg.micro_batch_size,
                   device=device, transform=batch_transform(cfg))
    return {"checkpoint": str(checkpoint), "step": state["step"], "objective": cfg.objective,
            "sets": {s.name: s.path for s in sets}, "metrics": out}
