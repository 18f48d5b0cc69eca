"""Near-dedup against datatrove: raylm's ``minhash_dedup`` and datatrove's MinHash pipeline on
the same near-duplicate-rich corpus, in this process, timed end to end, scored on the truth.

The corpus is ``neardup_corpus.py``'s (real text plus lightly edited copies, every pair's true
Jaccard of word 5-gram sets known). Both sides run on the same cores:

- **raylm**: ``raylm curate`` with the one step ``minhash_dedup: {threshold: 0.8}`` on a local
  Ray with ``--num-cpus`` CPUs (its start-up included), as ``dedup_quality.py`` runs it.
- **datatrove**: the four stages of its MinHash example (signatures, buckets, clusters,
  filter) with ``LocalPipelineExecutor(workers=--num-cpus)``, its default ``MinhashConfig``
  (word 5-grams after its text normalisation, 14 buckets of 8 hashes), one task per input
  file for the signature and filter stages, one per bucket for the bucket stage, and the
  kept and removed documents written as JSONL, as a user of it would.

Scores (``dedup_quality.evaluate``): recall of the pairs with J >= 0.8 (both ends in one
duplicate cluster) and precision of the removals (a removed document has a cluster mate with
J >= 0.5). Writes ``benchmarks/results/datatrove_dedup.json``.

    pip install datatrove 'xxhash<4' orjson spacy   # not raylm's; xxhash 4 takes bytes only, datatrove 0.10 hashes str
    python benchmarks/datatrove_dedup.py [--mb 20] [--num-cpus 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import neardup_corpus as C  # noqa: E402
from dedup_quality import evaluate, run_raylm  # noqa: E402


def run_datatrove(folder: Path, work: Path, workers: int) -> tuple[set[str], dict[str, str], float]:
    """datatrove's MinHash dedup, its four stages one after the other; the removed ids and
    each document's cluster (its own id when it has no duplicate)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers.jsonl import JsonlWriter

    config = MinhashConfig()
    files = len(list(folder.glob("*.jsonl")))
    logs = work / "logs"

    def executor(name: str, pipeline: list, tasks: int) -> LocalPipelineExecutor:
        return LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=workers, logging_dir=str(logs / name))

    t0 = time.perf_counter()
    executor("signatures", [JsonlReader(str(folder)),
                            MinhashDedupSignature(output_folder=str(work / "signatures"), config=config)], files).run()
    executor("buckets", [MinhashDedupBuckets(input_folder=str(work / "signatures"), output_folder=str(work / "buckets"),
                                             config=config)], config.num_buckets).run()
    executor("clusters", [MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove_ids"),
                                              config=config, save_cluster_id=True)], 1).run()
    executor("filter", [JsonlReader(str(folder)),
                        MinhashDedupFilter(input_folder=str(work / "remove_ids"), load_cluster_ids=True,
                                           exclusion_writer=JsonlWriter(str(work / "removed"), compression=None)),
                        JsonlWriter(str(work / "kept"), compression=None)], files).run()
    seconds = time.perf_counter() - t0

    removed: set[str] = set()
    cluster: dict[str, str] = {}
    by_cluster: dict[int, list[str]] = {}
    for part in ("kept", "removed"):
        for path in sorted((work / part).glob("*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                d = json.loads(line)
                if part == "removed":
                    removed.add(d["id"])
                cid = d.get("metadata", {}).get("minhash_cluster_id")
                if cid is not None and cid != -1:
                    by_cluster.setdefault(cid, []).append(d["id"])
    for members in by_cluster.values():
        root = min(members)
        cluster.update(dict.fromkeys(members, root))
    return removed, cluster, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "datatrove_dedup.json"))
    args = ap.parse_args()
    docs = list(C.generate(int(args.mb * 1e6), seed=args.seed))
    truth = C.truth_pairs(docs)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        _, n_bytes = C.write_jsonl(iter(docs), folder)
        removed, cluster, secs = run_raylm(folder, Path(tmp) / "raylm", args.num_cpus)
        ours = evaluate(docs, truth, removed, cluster) | {"seconds": round(secs, 2)}
        removed, cluster, secs = run_datatrove(folder, Path(tmp) / "datatrove", args.num_cpus)
        theirs = evaluate(docs, truth, removed, cluster) | {"seconds": round(secs, 2)}
    result = {
        "benchmark": "datatrove_dedup",
        "date": dt.date.today().isoformat(),
        "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                  f"{args.num_cpus} used by each side (CPU only)",
        "versions": {"datatrove": version("datatrove"), "ray": version("ray")},
        "corpus": {"documents": len(docs), "mb": round(n_bytes / 1e6, 1), "seed": args.seed,
                   "pairs_in_families": len(truth)},
        "settings": {"raylm": "minhash_dedup threshold 0.8 (128 permutations, word 5-grams), Ray start-up included",
                     "datatrove": "MinhashConfig() defaults: word 5-grams, 14 buckets x 8 hashes; 4 stages, "
                                  f"LocalPipelineExecutor(workers={args.num_cpus})"},
        "raylm": ours,
        "datatrove": theirs,
        "wall_ratio_raylm_vs_datatrove": ours["seconds"] / theirs["seconds"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
