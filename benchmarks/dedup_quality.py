"""Dedup quality: raylm's minhash_dedup against plain datasketch MinHashLSH, same corpus.

Recall: of the document pairs whose true Jaccard (word 5-gram sets) is >= 0.8, the share
that ended in one duplicate cluster (so only one of the two is kept). Precision: of the
removed documents, the share that had a partner with true Jaccard >= 0.5 in their cluster.

    python benchmarks/dedup_quality.py [--mb 20] [--out benchmarks/results/dedup_quality.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import neardup_corpus as C  # noqa: E402


def clusters_from_pairs(pairs: list[tuple[str, str]]) -> dict[str, str]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in parent}


def evaluate(docs: list[dict], truth: list[tuple[str, str, float]], removed: set[str],
             cluster: dict[str, str]) -> dict:
    """Recall of J>=0.8 pairs, precision of removals (partner with J>=0.5 in the cluster)."""
    high = [(a, b) for a, b, j in truth if j >= 0.8]
    found = sum(1 for a, b in high if a in cluster and cluster.get(a) == cluster.get(b))
    text = {d["id"]: d["text"] for d in docs}
    members: dict[str, list[str]] = {}
    for doc_id, c in cluster.items():
        members.setdefault(c, []).append(doc_id)
    gram_cache: dict[str, set] = {}

    def g(i: str) -> set:
        if i not in gram_cache:
            gram_cache[i] = C.grams(text[i])
        return gram_cache[i]

    good = 0
    for r in removed:
        mates = [m for m in members.get(cluster.get(r, r), []) if m != r]
        if any(C.jaccard(g(r), g(m)) >= 0.5 for m in mates):
            good += 1
    return {
        "pairs_j_ge_0_8": len(high),
        "recall": found / max(len(high), 1),
        "removed": len(removed),
        "precision": good / max(len(removed), 1),
    }


def run_raylm(folder: Path, out: Path, num_cpus: int) -> tuple[set[str], dict[str, str], float]:
    import pyarrow.parquet as pq

    from raylm.config import from_dict
    from raylm.curate.pipeline import CurateConfig, run

    cfg = from_dict(CurateConfig, {"steps": [{"minhash_dedup": {"threshold": 0.8}}], "report": False,
                                   "write_rejected": False, "ray": {"num_cpus": num_cpus}})
    t0 = time.perf_counter()
    run(cfg, [str(folder)], str(out), overwrite=True, quiet=True)
    seconds = time.perf_counter() - t0
    dups = pq.read_table(out / "duplicates.parquet").to_pylist()
    removed = {d["removed_id"] for d in dups}
    cluster = {}
    for d in dups:
        cluster[d["removed_id"]] = d["kept_id"]
        cluster[d["kept_id"]] = d["kept_id"]
    return removed, cluster, seconds


def run_datasketch(docs: list[dict], threshold: float = 0.8, num_perm: int = 128) -> tuple[set[str], dict[str, str], float]:
    """The textbook single-process use: query the index, drop on a hit, else insert."""
    from datasketch import MinHash, MinHashLSH

    t0 = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    removed, pairs = set(), []
    for d in docs:
        w = d["text"].lower().split()
        sh = [" ".join(w[i:i + 5]).encode() for i in range(max(1, len(w) - 4))]
        m = MinHash(num_perm=num_perm)
        m.update_batch(sh)
        hits = lsh.query(m)
        if hits:
            removed.add(d["id"])
            pairs.append((min(hits), d["id"]))
        else:
            lsh.insert(d["id"], m)
    return removed, clusters_from_pairs(pairs), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "dedup_quality.json"))
    args = ap.parse_args()
    docs = list(C.generate(int(args.mb * 1e6), seed=args.seed))
    truth = C.truth_pairs(docs)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        C.write_jsonl(iter(docs), folder)
        removed, cluster, secs = run_raylm(folder, Path(tmp) / "out", args.num_cpus)
    ours = evaluate(docs, truth, removed, cluster) | {"seconds": round(secs, 2)}
    removed, cluster, secs = run_datasketch(docs)
    base = evaluate(docs, truth, removed, cluster) | {"seconds": round(secs, 2)}
    result = {
        "benchmark": "dedup_quality",
        "date": dt.date.today().isoformat(),
        "device": f"{platform.processor() or platform.machine()}, {args.num_cpus} Ray CPUs (CPU only)",
        "corpus": {"documents": len(docs), "mb": args.mb, "seed": args.seed,
                   "pairs_in_families": len(truth)},
        "raylm_minhash_dedup": ours,
        "datasketch_minhashlsh": base,
        "target": {"recall": 0.995, "precision": 0.995},
        "meets_target": ours["recall"] >= 0.995 and ours["precision"] >= 0.995,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
