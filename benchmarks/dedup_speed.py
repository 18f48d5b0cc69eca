"""Dedup speed: ``raylm curate`` with the dedup-only config against plain datasketch.

Both read the same near-duplicate-rich JSONL (real text plus edited copies, see
``neardup_corpus.py``). raylm's wall time includes starting Ray (a fresh process per run);
datasketch is the textbook single process: ``MinHash.update_batch`` per document and a
``MinHashLSH`` query + insert. raylm runs at num_cpus 2 and 1 to show how it scales, and on the same documents as one JSONL
file (read in byte ranges by several tasks: ``raylm.curate.split``). The
full default pipeline (every step) is timed on a slice of the corpus for its MB/s.

    python benchmarks/dedup_speed.py [--mb 300] [--full-mb 30]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import neardup_corpus as C  # noqa: E402

DEDUP_ONLY = "steps:\n  - minhash_dedup: {threshold: 0.8}\nreport: false\nwrite_rejected: false\n"
RUN = """
import sys, time, json
t0 = time.perf_counter()
from raylm.config import load
from raylm.curate.pipeline import CurateConfig, run
cfg = load(CurateConfig, sys.argv[1], ["ray.num_cpus=" + sys.argv[4]])
stats = run(cfg, [sys.argv[2]], sys.argv[3], overwrite=True, quiet=True)
print(json.dumps({"wall_s": time.perf_counter() - t0, "kept": stats["kept"], "in": stats["documents_in"],
                  "read_units": stats["resume"]["units"]}))
"""


def run_raylm(config: Path, folder: Path, out: Path, num_cpus: int) -> dict:
    """One fresh process (Ray start-up included) pinned with taskset to ``num_cpus`` cores, so
    that Ray's own processes and the driver get no spare core either."""
    env = dict(os.environ, RAY_DATA_DISABLE_PROGRESS_BARS="1")
    pin = ["taskset", "-c", ",".join(str(c) for c in range(num_cpus))] if shutil.which("taskset") else []
    res = subprocess.run([*pin, sys.executable, "-c", RUN, str(config), str(folder), str(out), str(num_cpus)],
                         capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-4000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_datasketch(folder: Path, threshold: float = 0.8, num_perm: int = 128) -> dict:
    from datasketch import MinHash, MinHashLSH

    t0 = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    kept = n = 0
    for path in sorted(folder.glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                w = d["text"].lower().split()
                m = MinHash(num_perm=num_perm)
                m.update_batch([" ".join(w[i:i + 5]).encode() for i in range(max(1, len(w) - 4))])
                n += 1
                if not lsh.query(m):
                    lsh.insert(d["id"], m)
                    kept += 1
    return {"wall_s": time.perf_counter() - t0, "kept": kept, "in": n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=300.0)
    ap.add_argument("--full-mb", type=float, default=30.0)
    ap.add_argument("--out", default=str(HERE / "results" / "dedup_speed.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_docs, n_bytes = C.write_jsonl(C.generate(int(args.mb * 1e6), seed=1), tmp / "in")
        cfg = tmp / "dedup.yaml"
        cfg.write_text(DEDUP_ONLY)
        two = run_raylm(cfg, tmp / "in", tmp / "o2", 2)
        one = run_raylm(cfg, tmp / "in", tmp / "o1", 1)
        (tmp / "one").mkdir()
        with open(tmp / "one" / "all.jsonl", "wb") as single:  # the same documents as one big file
            for part in sorted((tmp / "in").glob("*.jsonl")):
                single.write(part.read_bytes())
        one_file = run_raylm(cfg, tmp / "one", tmp / "o3", 2)
        base = run_datasketch(tmp / "in")
        C.write_jsonl(C.generate(int(args.full_mb * 1e6), seed=2), tmp / "full_in")
        full_bytes = sum(p.stat().st_size for p in (tmp / "full_in").glob("*.jsonl"))
        full_cfg = tmp / "full.yaml"
        full_cfg.write_text("report: false\n")
        full = run_raylm(full_cfg, tmp / "full_in", tmp / "of", 2)
    mb = n_bytes / 1e6
    result = {
        "benchmark": "dedup_speed",
        "date": dt.date.today().isoformat(),
        "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (CPU only)",
        "corpus": {"documents": n_docs, "mb": round(mb, 1)},
        "raylm_num_cpus_2": {**two, "mb_per_s": mb / two["wall_s"]},
        "raylm_num_cpus_1": {**one, "mb_per_s": mb / one["wall_s"]},
        "raylm_one_file_num_cpus_2": {**one_file, "mb_per_s": mb / one_file["wall_s"]},
        "datasketch_single_process": {**base, "mb_per_s": mb / base["wall_s"]},
        "wall_ratio_raylm2_vs_datasketch": two["wall_s"] / base["wall_s"],
        "speedup_vs_datasketch": base["wall_s"] / two["wall_s"],
        "wall_ratio_one_file_vs_datasketch": one_file["wall_s"] / base["wall_s"],
        "scaling_2_vs_1_cores": one["wall_s"] / two["wall_s"],
        "scaling_note": "whole process tree pinned with taskset to 1 vs 2 cores; Ray start-up included",
        "full_default_pipeline": {**full, "mb": round(full_bytes / 1e6, 1),
                                  "mb_per_s": full_bytes / 1e6 / full["wall_s"]},
        "target": "wall_ratio_raylm2_vs_datasketch <= 0.333",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
