"""Small corpora for the dedup step tests: random word documents and edited copies."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq

WORDS = ("river mountain lantern quiet harvest copper window garden silver thunder meadow "
         "anchor velvet orchard compass ember harbor willow canyon marble").split()


def doc(rng: random.Random, n: int = 120) -> str:
    return " ".join(rng.choice(WORDS) + str(rng.randrange(50)) for _ in range(n))


def edit(text: str, positions: list[int], word: str = "EDITED") -> str:
    words = text.split()
    for p in positions:
        words[p] = word
    return " ".join(words)


def write(path: Path, records: list) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False))
            f.write("\n")
    return path


def read_out(out: Path) -> tuple[list[dict], list[dict], list[dict], dict]:
    """(kept, rejected, duplicates, stats) of a curate output folder."""
    data = pq.read_table(out / "data").to_pylist()
    rejected = pq.read_table(out / "rejected").to_pylist() if any((out / "rejected").iterdir()) else []
    dups = pq.read_table(out / "duplicates.parquet").to_pylist()
    return data, rejected, dups, json.loads((out / "stats.json").read_text())


def step_row(stats: dict, name: str) -> dict:
    return next(s for s in stats["steps"] if s["step"] == name)
