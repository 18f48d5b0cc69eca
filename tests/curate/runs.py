"""The corpus and the comparisons that the resume and node-loss tests share."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq

SAMPLE = Path(__file__).parents[2] / "data/sample/corpus.jsonl.gz"
STEPS = ["normalize", "quality", "langid", "pii", "exact_dedup", {"line_dedup": {"min_docs": 3}},
         {"minhash_dedup": {"threshold": 0.8}}]
N_FILES = 16


def outputs(out: Path) -> tuple[list, list, dict]:
    data = sorted((r["id"], r["text"]) for r in pq.read_table(out / "data").select(["id", "text"]).to_pylist())
    rejected = sorted((r["id"], r["step"], r["reason"])
                      for r in pq.read_table(out / "rejected").select(["id", "step", "reason"]).to_pylist())
    stats = json.loads((out / "stats.json").read_text())
    return data, rejected, stats


def counts(stats: dict) -> list:
    return [(s["step"], s["docs_in"], s["kept"], s["dropped"], s.get("counters")) for s in stats["steps"]]


def write_inputs(folder: Path) -> Path:
    """The sample corpus in N_FILES JSONL files, with some documents copied into a second file
    (exact duplicates across files) so the dedup steps have work to resume."""
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    files: list[list[dict]] = [[] for _ in range(N_FILES)]
    for i, d in enumerate(docs):
        files[i % N_FILES].append(d)
        if i % 10 == 0:
            files[(i + 7) % N_FILES].append({**d, "id": f"{d['id']}-copy"})
    for i, records in enumerate(files):
        with open(folder / f"part-{i:02d}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return folder
