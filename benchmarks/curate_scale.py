"""Curation at scale: near-dedup on 30k, 300k and 3M documents, with the driver's memory.

Each corpus is written here: documents of 100 words drawn from the real English vocabulary of
Python's documentation (``pydoc_data.topics``), 60% originals and 40% planted near-copies (one
word of an original replaced: Jaccard ~0.9 on word 5-grams, well above the 0.8 threshold), in
JSONL files of at most 100k documents, in random order. Originals share no 5-gram with each
other in practice (100 words from thousands), so the planted copies are exactly what a correct
near-dedup removes.

``raylm curate`` runs with the dedup-only config (``minhash_dedup``, threshold 0.8) as its own
process, as a user runs it, on a local Ray with ``--num-cpus`` CPUs; per size it records the
wall time, documents/s (curate's own timer, Ray start-up excluded, and the whole process), the
driver's peak RSS (``VmHWM`` of the ``raylm curate`` process alone, not Ray's workers),
removed vs planted, and the connected-components rounds.

Targets (issue 15): removed == planted at every size; driver peak RSS at 3M <= 1.2x that at
30k; throughput at 3M >= 0.8x that at 300k.

    python benchmarks/curate_scale.py [--sizes 30000,300000,3000000] [--num-cpus 2] [--one-file 3000000]

``--one-file N`` also curates the N-document corpus as one JSONL file (read in byte ranges of
``split_bytes``) and records how busy the machine's CPUs were (``*_one_file.json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from machine import cpu_model  # benchmarks/machine.py

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIG = "steps:\n  - minhash_dedup: {threshold: 0.8}\n"
# VmHWM is this process's own peak RSS (getrusage's ru_maxrss would also count the benchmark
# process's size at the fork that started this one: Linux keeps it across exec); the parts
# (anonymous memory, mapped files, shared memory such as Ray's object store) are sampled peaks
DRIVER = """
import json, sys, threading, time
def status():
    return {k: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in open("/proc/self/status"))
            if k in ("VmHWM", "RssAnon", "RssFile", "RssShmem")}
peak = {}
def sample():
    while True:
        for k, v in status().items():
            peak[k] = max(peak.get(k, 0.0), v)
        time.sleep(0.2)
threading.Thread(target=sample, daemon=True).start()
t0 = time.perf_counter()
from raylm.cli import main
rc = main(sys.argv[1:])
end = status()
print(json.dumps({"process_s": time.perf_counter() - t0, "driver_peak_rss_mb": end["VmHWM"],
                  "driver_peak_rss_parts_mb": {k: round(peak.get(k, 0.0), 1) for k in ("RssAnon", "RssFile", "RssShmem")}}))
sys.exit(rc or 0)
"""

def vocabulary() -> list[str]:
    from pydoc_data.topics import topics

    words = {w.lower() for text in topics.values() for w in re.findall(r"[A-Za-z]{3,}", text)}
    return sorted(words)


def write_corpus(folder: Path, n: int, seed: int = 0, per_file: int = 100_000, copy_share: float = 0.4) -> int:
    """``n`` documents (``copy_share`` of them planted near-copies) in JSONL files; returns the
    number planted."""
    rng = random.Random(seed)
    vocab = vocabulary()
    n_copies = int(n * copy_share)
    n_orig = n - n_copies
    folder.mkdir(parents=True, exist_ok=True)
    order = list(range(n))
    rng.shuffle(order)  # copies and originals interleaved, across files
    originals: list[list[str]] = []
    docs: list[str | None] = [None] * n
    for i in range(n_orig):
        words = rng.choices(vocab, k=100)
        originals.append(words)
        docs[order[i]] = " ".join(words)
    for i in range(n_copies):
        words = list(originals[rng.randrange(n_orig)])
        words[rng.randrange(100)] = rng.choice(vocab) + "x"  # a word no original has
        docs[order[n_orig + i]] = " ".join(words)
    for f, start in enumerate(range(0, n, per_file)):
        with open(folder / f"part-{f:04d}.jsonl", "w", encoding="utf-8") as out:
            for j in range(start, min(n, start + per_file)):
                out.write(json.dumps({"id": f"d{j}", "text": docs[j]}) + "\n")
    return n_copies


def write_in_child(folder: Path, n: int) -> int:
    """``write_corpus`` in its own process, so this one stays small (its memory is nobody's)."""
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import curate_scale as C; print(C.write_corpus(__import__('pathlib').Path({str(folder)!r}), {n}))"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def run_curate(corpus: Path, out: Path, num_cpus: int) -> dict:
    cfg = out.parent / "dedup.yaml"
    cfg.write_text(CONFIG)
    env = dict(os.environ, RAY_DATA_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", DRIVER, "curate", str(corpus), "-o", str(out), "--config", str(cfg),
                          "--set", f"ray.num_cpus={num_cpus}", "--overwrite"],
                         capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise SystemExit(res.stdout[-3000:] + res.stderr[-6000:])
    measured = json.loads(res.stdout.strip().splitlines()[-1])
    stats = json.loads((out / "stats.json").read_text())
    step = next(s for s in stats["steps"] if s["step"] == "minhash_dedup")
    return {**measured, "wall_s": time.perf_counter() - t0, "curate_s": stats["seconds"],
            "documents_in": stats["documents_in"], "kept": stats["kept"], "read_units": stats["resume"]["units"],
            "removed": step.get("counters", {}).get("removed"), "counters": step.get("counters", {})}


def _cpu_times() -> tuple[int, int]:
    """(all, idle) jiffies of the whole machine (``/proc/stat``)."""
    values = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(values), values[3] + values[4]


def one_file(work: Path, n: int, num_cpus: int) -> dict:
    """The ``n``-document corpus as one JSONL file, curated the same way, with how busy the
    machine's CPUs were (sampled every second from ``/proc/stat``; nothing else may run)."""
    corpus = work / f"onefile-{n}"
    target = corpus / "corpus.jsonl"
    if not target.exists():
        corpus.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            for part in sorted((work / f"corpus-{n}").glob("*.jsonl")):
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
    busy: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        prev = _cpu_times()
        while not stop.wait(1.0):
            cur = _cpu_times()
            busy.append(1 - (cur[1] - prev[1]) / max(cur[0] - prev[0], 1))
            prev = cur

    thread = threading.Thread(target=sample, daemon=True)
    start = _cpu_times()
    thread.start()
    r = run_curate(corpus, work / f"out-onefile-{n}", num_cpus)
    stop.set()
    end = _cpu_times()
    shutil.rmtree(work / f"out-onefile-{n}", ignore_errors=True)
    return {"documents": n, "input_mb": round(target.stat().st_size / 1e6, 1), **r, "docs_per_s": n / r["curate_s"],
            "cpu_busy_share": 1 - (end[1] - start[1]) / max(end[0] - start[0], 1),
            "seconds_over_90pct_busy": sum(b > 0.9 for b in busy), "seconds_sampled": len(busy)}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["documents"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(n, [r["driver_peak_rss_mb"] for r in rows], "o-")
    a.set(xscale="log", xlabel="documents", ylabel="MB", title="raylm curate driver peak RSS", ylim=(0, None))
    b.plot(n, [r["docs_per_s"] for r in rows], "o-", label="curate (Ray start-up excluded)")
    b.plot(n, [r["docs_per_s_process"] for r in rows], "s--", label="whole process")
    b.set(xscale="log", xlabel="documents", ylabel="documents / s", title="near-dedup throughput", ylim=(0, None))
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="30000,300000,3000000")
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--work", default=None, help="folder for corpora and outputs (default: a temp dir)")
    ap.add_argument("--prepare-only", action="store_true", help="write the corpora into --work and stop")
    ap.add_argument("--out", default=str(HERE / "results" / "curate_scale.json"))
    ap.add_argument("--one-file", type=int, default=0, metavar="N",
                    help="also the N-document corpus as one JSONL file, with CPU use (written to *_one_file.json)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="curate-scale-"))
    rows = []
    try:
        for n in sorted({int(s) for s in args.sizes.split(",") if s} | ({args.one_file} if args.one_file else set())):
            corpus = work / f"corpus-{n}"
            t0 = time.perf_counter()
            kept = work / f"corpus-{n}.planted"  # beside the corpus: a .json inside would be read as input
            if kept.exists():  # written by an earlier run with --work (same seed)
                planted = json.loads(kept.read_text())
            else:
                planted = write_in_child(corpus, n)
                kept.write_text(json.dumps(planted))
            size_mb = sum(p.stat().st_size for p in corpus.glob("*.jsonl")) / 1e6
            print(f"{n:>9,} documents ({size_mb:.0f} MB, {planted:,} planted) ready in {time.perf_counter() - t0:.0f}s",
                  flush=True)
            if args.prepare_only:
                continue
            if n == args.one_file:
                one = {**one_file(work, n, args.num_cpus), "planted": planted}
                one["removed_equals_planted"] = one["removed"] == planted
                print(f"{n:>9,} in one file: {one['read_units']} read units, removed {one['removed']:,} (planted "
                      f"{planted:,}), curate {one['curate_s']:.1f}s, CPUs {100 * one['cpu_busy_share']:.0f}% busy",
                      flush=True)
                Path(args.out).with_name(Path(args.out).stem + "_one_file.json").write_text(json.dumps({
                    "benchmark": "curate_scale --one-file", "date": dt.date.today().isoformat(),
                    "num_cpus": args.num_cpus, "device": f"{cpu_model()}, {os.cpu_count()} cores (CPU only)",
                    "config": CONFIG, **one}, indent=2) + "\n")
                if str(n) not in args.sizes.split(","):
                    continue
            r = run_curate(corpus, work / f"out-{n}", args.num_cpus)
            row = {"documents": n, "input_mb": round(size_mb, 1), "planted": planted, **r,
                   "docs_per_s": n / r["curate_s"], "docs_per_s_process": n / r["process_s"]}
            rows.append(row)
            print(f"{n:>9,}: removed {r['removed']:,} (planted {planted:,}), curate {r['curate_s']:.1f}s, process "
                  f"{r['process_s']:.1f}s, {row['docs_per_s']:,.0f} docs/s, driver peak RSS "
                  f"{r['driver_peak_rss_mb']:.0f} MB, rounds {r['counters'].get('cc_rounds')}", flush=True)
            shutil.rmtree(work / f"out-{n}", ignore_errors=True)
            if not args.work:
                shutil.rmtree(corpus, ignore_errors=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    if args.prepare_only or not rows:
        return
    by = {r["documents"]: r for r in rows}
    sizes = sorted(by)
    result = {
        "benchmark": "curate_scale", "date": dt.date.today().isoformat(), "num_cpus": args.num_cpus,
        "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (CPU only)",
        "cpu_model": cpu_model(), "config": CONFIG, "rows": rows,
        "removed_equals_planted": all(r["removed"] == r["planted"] for r in rows),
    }
    if len(sizes) >= 2:
        result["driver_rss_ratio_largest_vs_smallest"] = by[sizes[-1]]["driver_peak_rss_mb"] / by[sizes[0]]["driver_peak_rss_mb"]
    if len(sizes) >= 3:
        result["throughput_ratio_largest_vs_middle"] = by[sizes[-1]]["docs_per_s"] / by[sizes[-2]]["docs_per_s"]
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, Path(args.out).with_suffix(".png"))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()
