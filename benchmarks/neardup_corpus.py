"""Build a near-duplicate-rich corpus from real text, with the truth known.

Base documents are the real documents of the shipped sample corpus plus new documents made of
real paragraphs drawn at random from it (so the text is real but the documents are many).
A share of them get *families*: copies edited lightly (word substitutions, deletions,
insertions, a paragraph dropped or appended) at random strengths, so the true Jaccard of a
copy to its original spans about 0.3 to 1.0. ``truth_pairs`` computes the exact Jaccard of
word 5-gram sets for every pair inside every family.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"


def real_documents() -> list[str]:
    docs = []
    for path in sorted(SAMPLE.glob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            docs.extend(json.loads(line)["text"] for line in f if line.strip())
    if not docs:
        raise SystemExit(f"no sample corpus under {SAMPLE}")
    return docs


def _edit(text: str, strength: float, rng: random.Random, vocab: list[str]) -> str:
    paras = text.split("\n\n")
    if len(paras) > 3 and rng.random() < strength:
        paras.pop(rng.randrange(len(paras)))
    out = []
    for para in paras:
        words = para.split(" ")
        new = []
        for w in words:
            r = rng.random()
            if r < strength / 3:
                new.append(rng.choice(vocab))  # substitution
            elif r < 2 * strength / 3:
                continue  # deletion
            else:
                new.append(w)
                if r > 1 - strength / 3:
                    new.append(rng.choice(vocab))  # insertion
        out.append(" ".join(new))
    return "\n\n".join(out)


def generate(target_bytes: int, seed: int = 0, dup_share: float = 0.4,
             max_family: int = 4) -> Iterator[dict]:
    """Yield documents ``{id, text, family, parent}`` until about ``target_bytes``."""
    rng = random.Random(seed)
    real = real_documents()
    paras = [p for d in real for p in d.split("\n\n") if len(p) > 80]
    vocab = sorted({w for p in paras[:2000] for w in p.split()})
    size, n = 0, 0
    real_iter = iter(real)
    while size < target_bytes:
        base = next(real_iter, None)
        if base is None:
            base = "\n\n".join(rng.choice(paras) for _ in range(rng.randint(3, 12)))
        fam = f"f{n}"
        docs = [{"id": f"{fam}-0", "text": base, "family": fam, "parent": ""}]
        if rng.random() < dup_share:
            for k in range(rng.randint(1, max_family)):
                strength = rng.choice([0.0, 0.01, 0.02, 0.05, 0.08, 0.12, 0.2, 0.3])
                docs.append({"id": f"{fam}-{k + 1}", "text": _edit(base, strength, rng, vocab),
                             "family": fam, "parent": f"{fam}-0"})
        for d in docs:
            size += len(d["text"].encode())
            yield d
        n += 1


def grams(text: str, n: int = 5) -> set[tuple[str, ...]]:
    w = text.lower().split()
    if len(w) < n:
        return {tuple(w)} if w else set()
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def truth_pairs(docs: list[dict]) -> list[tuple[str, str, float]]:
    """Exact Jaccard of word 5-gram sets for every pair within each family."""
    fams: dict[str, list[dict]] = {}
    for d in docs:
        fams.setdefault(d["family"], []).append(d)
    out = []
    for members in fams.values():
        g = [grams(m["text"]) for m in members]
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                out.append((members[i]["id"], members[j]["id"], jaccard(g[i], g[j])))
    return out


def write_jsonl(docs: Iterator[dict], folder: Path, shard_bytes: int = 16 << 20) -> tuple[int, int]:
    """Write sharded JSONL; returns (documents, bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    shard, size, count, total = 0, 0, 0, 0
    f = open(folder / f"part-{shard:04d}.jsonl", "w", encoding="utf-8")
    for d in docs:
        line = json.dumps(d, ensure_ascii=False) + "\n"
        f.write(line)
        size += len(line)
        total += len(line.encode())
        count += 1
        if size >= shard_bytes:
            f.close()
            shard, size = shard + 1, 0
            f = open(folder / f"part-{shard:04d}.jsonl", "w", encoding="utf-8")
    f.close()
    return count, total
