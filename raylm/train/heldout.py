"""Held-out loss and perplexity of a model on token-shard sets: per set, per language, FIM middles.

``loss_sums`` is the one function that accumulates: the training loop calls it on every rank
for that rank's slice and all-reduces the sums (``raylm.train.evaluate``), ``raylm eval``
(``raylm.infer.evaluate``) calls it in one process (``evaluate``); ``metrics`` turns the sums
into numbers. So a
checkpoint evaluated offline gives the numbers the run reported at that step.

What is measured (a language model's held-out cross-entropy, as in GPT-2/3's evaluations):

* ``val/<set>/loss``: summed cross-entropy (nats, fp32 logits) over every labelled token of the
  set, divided by the number of those tokens (token-weighted, never a mean of batch means);
  ``ppl`` is ``exp(loss)``; ``tokens`` is the count. The training loss's z-loss and label
  smoothing are not part of it. ``val/loss`` pools every set.
* ``val/lang/<lang>/...``: the same over the tokens of documents in that language, pooled over
  the sets whose shards record languages (``raylm prepare``'s held-out shards do).
* Under ``objective: mlm`` the labelled tokens are the masked ones, with the fixed evaluation
  mask (``raylm.train.objective.EVAL_KEY``).
* ``val/<set>/fim_middle/...`` (causal objectives; held-out shards prepared with ``fim:``
  record which tokens are middles): the loss of predicting the middles of FIM documents and
  the eos after each, PSM and SPM alike, the infilling task of Bavarian et al. 2022 (their
  "FIM loss"). A middle cut by a sequence boundary counts on both sides of the cut.
* Padding (the manifest's ``pad_id``; held-out shards pad each file's last sequence) has no label.

Deterministic: a set's sequences are fixed (all, or ``max_sequences`` evenly spaced by index
in seq_id order), the sums are float64, and each rank's slice depends only on the rank and
the world size; only the float rounding of the forward pass can differ between batch shapes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raylm.data.loader import IGNORE_INDEX, make_batch
from raylm.train.objective import EVAL_KEY

Transform = Callable[[dict[str, Any], int], dict[str, Any]]


@dataclasses.dataclass
class EvalSet:
    """The sequences of one evaluation set, in memory."""

    name: str
    path: str
    seq_ids: np.ndarray
    """int64 ``(n,)``, ascending."""
    tokens: np.ndarray
    """int32 ``(n, seq_len)``."""
    cu_seqlens: list[np.ndarray]
    """Every sequence's segment boundaries, 0 .. seq_len."""
    langs: list[list[str]] | None
    """Every sequence's segments' languages ("" unknown), when the shards record them."""
    pad_id: int
    middle: np.ndarray | None
    """bool ``(n, seq_len)``, True at the tokens of FIM middles, when the shards record them."""

    def __len__(self) -> int:
        return len(self.seq_ids)


def load_set(name: str, path: str, max_sequences: int = 0) -> EvalSet:
    """Set ``name`` from the token-shard folder ``path`` (``InputError`` without a manifest):
    all sequences, or ``max_sequences`` of them evenly spaced over the set."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from raylm.data.reader import manifest_id_map, parquet_row_groups
    from raylm.data.shards import read_manifest
    from raylm.storage import filesystem

    manifest = read_manifest(path)
    has_langs, has_middle = bool(manifest.get("langs")), bool(manifest.get("fim_middle"))
    n = int(manifest["num_sequences"])
    k = n if not max_sequences else min(n, max_sequences)
    seq_ids = manifest_id_map(path).to_seq_id((np.arange(k) * n) // k) if k else np.zeros(0, np.int64)
    columns = ["seq_id", "tokens", "cu_seqlens"] + (["langs"] if has_langs else []) + (["fim_middle"] if has_middle else [])
    parts = []
    for g in parquet_row_groups(path) if k else []:
        if g.lo is not None and not np.any((seq_ids >= g.lo) & (seq_ids <= g.hi)):
            continue
        fs, p = filesystem(g.uri)
        t = pq.ParquetFile(p, filesystem=fs).read_row_group(g.index, columns=columns)
        parts.append(t.filter(pc.is_in(t.column("seq_id"), value_set=pa.array(seq_ids, pa.int64()))))
    rows = {}
    for t in parts:
        for row in t.to_pylist():
            rows[row["seq_id"]] = row
    missing = [int(s) for s in seq_ids if int(s) not in rows]
    if missing:
        raise ValueError(f"{path}: seq_ids {missing[:5]} of the manifest are not in its shards")
    ordered = [rows[int(s)] for s in seq_ids]
    seq_len = int(manifest["seq_len"])
    tokens = np.asarray([r["tokens"] for r in ordered], np.int32).reshape(k, seq_len)
    return EvalSet(name=name, path=path, seq_ids=np.asarray(seq_ids, np.int64), tokens=tokens,
                   cu_seqlens=[np.asarray(r["cu_seqlens"], np.int64) for r in ordered],
                   langs=[list(r["langs"]) for r in ordered] if has_langs else None,
                   pad_id=int(manifest.get("pad_id", 0)),
                   middle=np.asarray([r["fim_middle"] for r in ordered], bool).reshape(k, seq_len) if has_middle else None)


def source_name(folder: str, manifest: dict[str, Any] | None = None) -> str:
    """A token-shard folder's name as a set: its manifest's one source (``manifest`` when it was
    read already), else the folder's name."""
    from raylm.data.shards import read_manifest

    sources = list((manifest if manifest is not None else read_manifest(folder)).get("sources", {}))
    return sources[0] if len(sources) == 1 else folder.rstrip("/").rsplit("/", 1)[-1]


def group_names(sets: Sequence[EvalSet], fim_middle: bool = True) -> list[str]:
    """The metric groups ``loss_sums`` fills, in its row order."""
    langs = sorted({x for s in sets if s.langs for row in s.langs for x in row} - {""})
    return (["val"] + [f"val/{s.name}" for s in sets]
            + [f"val/{s.name}/fim_middle" for s in sets if fim_middle and s.middle is not None]
            + [f"val/lang/{x}" for x in langs])


def loss_sums(model: nn.Module, sets: Sequence[EvalSet], *, batch_size: int, device: torch.device,
              rank: int = 0, world_size: int = 1, transform: Transform | None = None,
              autocast: Callable[[], Any] = contextlib.nullcontext, contribute: bool = True) -> torch.Tensor:
    """float64 ``(len(group_names(sets)), 2)``: summed loss and token count per group over this
    rank's slice: of every ``batch_size * world_size`` consecutive sequences of a set, the
    ``rank``-th block of ``batch_size``. Every rank runs the same number of forwards (a rank
    without sequences left runs one whose tokens count for nothing), as FSDP2's all-gathers
    need; ``contribute=False`` runs them all and adds nothing (tensor-parallel peers).
    ``transform(batch, key)`` makes the objective's batch (MLM masking); the FIM-middle groups
    exist only without it."""
    groups = group_names(sets, fim_middle=transform is None)
    index = {g: i for i, g in enumerate(groups)}
    sums = torch.zeros(len(groups), 2, dtype=torch.float64, device=device)
    lang_index = {g.removeprefix("val/lang/"): i for g, i in index.items() if g.startswith("val/lang/")}
    for s in sets:
        with_middle = f"val/{s.name}/fim_middle" in index
        for start in range(0, len(s), batch_size * world_size):
            rows = np.arange(start + rank * batch_size, min(start + (rank + 1) * batch_size, len(s)))
            counts = contribute and len(rows) > 0
            rows = rows if len(rows) else np.zeros(1, np.int64)
            cus = [s.cu_seqlens[i] for i in rows]
            batch = make_batch(s.seq_ids[rows], s.tokens[rows], cus)
            if transform is not None:
                batch = transform(batch, EVAL_KEY)
            with torch.no_grad(), autocast():
                logits = model(batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device),
                               cu_seqlens=batch["cu_seqlens"].to(device), max_seqlen=batch["max_seqlen"])
                loss = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten().to(device),
                                       ignore_index=IGNORE_INDEX, reduction="none").double()  # (B*L,)
            if not counts:
                continue
            tokens = s.tokens[rows].reshape(-1)
            labelled = (batch["labels"].numpy().reshape(-1) != IGNORE_INDEX) & (tokens != s.pad_id)
            group = np.full(len(tokens), -1, np.int64)  # the token's language group
            if s.langs is not None and lang_index:
                group = np.concatenate([np.repeat([lang_index.get(x, -1) for x in s.langs[i]], np.diff(c))
                                        for i, c in zip(rows, cus)])
            masks = [(index["val"], labelled), (index[f"val/{s.name}"], labelled)]
            if with_middle:  # label t predicts token t + 1 (labels at segment ends are -100)
                predicts_middle = np.append(s.middle[rows].reshape(-1)[1:], False)
                masks.append((index[f"val/{s.name}/fim_middle"], labelled & predicts_middle))
            for g in np.unique(group[labelled & (group >= 0)]):
                masks.append((int(g), labelled & (group == g)))
            for g, m in masks:
                m = torch.from_numpy(m).to(device)
                sums[g, 0] += loss[m].sum()
                sums[g, 1] += m.sum()
    return sums


def metrics(groups: Sequence[str], sums: torch.Tensor) -> dict[str, float]:
    """``<group>/loss``, ``/ppl`` and ``/tokens`` of every group with tokens."""
    out: dict[str, float] = {}
    for g, (total, n) in zip(groups, sums.double().cpu().tolist()):
        if n > 0:
            loss = total / n
            out.update({f"{g}/loss": loss, f"{g}/ppl": math.exp(min(loss, 50.0)), f"{g}/tokens": int(n)})
    return out


def evaluate(model: nn.Module, sets: Sequence[EvalSet], *, batch_size: int = 8, device: str | torch.device = "cpu",
             transform: Transform | None = None) -> dict[str, float]:
    """Every set in this process: the ``val/...`` metrics (see the module docstring)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        sums = loss_sums(model, sets, batch_size=batch_size, device=device, transform=transform)
    finally:
        model.train(was_training)
    return metrics(group_names(sets, fim_middle=transform is None), sums)
