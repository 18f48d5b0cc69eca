"""Finding and reading a curated corpus: the inputs of tokenizer training and ``raylm prepare``.

A curated output folder (``raylm curate -o OUT``) stands for its ``data/``; other folders are
searched for Parquet and JSONL files. ``uniform`` gives every document a fixed number in
[0, 1) from its id, which is how both the tokenizer's held-out sample and prepare's held-out
split choose documents, the same ones on every run and every machine.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from raylm.storage import InputError


def is_json(path: str) -> bool:
    name = path.lower()
    for ext in (".gz", ".zst", ".zstd", ".bz2"):
        name = name.removesuffix(ext)
    return name.endswith((".jsonl", ".json", ".ndjson"))


def sort_inputs(inputs: list[str]) -> tuple[list[str], list[str]]:
    """(parquet paths, JSONL paths). A curated output folder stands for its ``data/`` (not
    ``rejected/`` or ``duplicates.parquet``); other folders are searched recursively."""
    parquet: list[str] = []
    jsonl: list[str] = []
    for raw in inputs:
        if "://" in raw:  # remote: a JSONL file, else Parquet (file or folder)
            (jsonl if is_json(raw) else parquet).append(raw)
            continue
        p = Path(raw)
        if not p.exists():
            raise InputError(f"{raw}: no such file or directory")
        if p.is_dir() and (p / "data").is_dir():
            p = p / "data"
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        files = [f for f in files if not any(part.startswith((".", "_")) for part in f.relative_to(p).parts)
                 ] if p.is_dir() else files
        found_pq = [str(f) for f in files if f.name.lower().endswith(".parquet")]
        found_js = [str(f) for f in files if is_json(f.name)]
        if not found_pq and not found_js:
            raise InputError(f"{raw}: no .parquet or .jsonl files")
        parquet.extend(found_pq)
        jsonl.extend(found_js)
    return parquet, jsonl


def read_parquet_v1(paths: list[str], **read_args: Any):
    """``ray.data.read_parquet`` through the V1 datasource (chosen when the dataset is built).

    Ray 2.60's default V2 reader lists files with 32 footer-reading actors per execution,
    which costs seconds of actor start-up on a small machine (4 s for one 1 MB file on 2
    cores, against 0.3 s for V1); the tokenizer reads a sample and does not need it."""
    import ray
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = getattr(ctx, "use_datasource_v2", None)
    if before is None:
        return ray.data.read_parquet(paths, **read_args)
    ctx.use_datasource_v2 = False
    try:
        return ray.data.read_parquet(paths, **read_args)
    finally:
        ctx.use_datasource_v2 = before


def uniform(keys: list[Any], seed: int) -> np.ndarray:
    """A deterministic number in [0, 1) per key (blake2b of the key and the seed)."""
    salt = seed.to_bytes(8, "little", signed=True)
    out = np.empty(len(keys), dtype=np.float64)
    for i, k in enumerate(keys):
        b = (k if isinstance(k, str) else str(k)).encode("utf-8", "surrogatepass")
        out[i] = int.from_bytes(hashlib.blake2b(b, digest_size=8, salt=salt).digest(), "little")
    return out / 2.0**64
