"""Is the default ``quality`` step fair to every language? Share kept per language, before and after.

The corpus is ``benchmarks/data/quality_fairness/parallel.jsonl.gz``: 80 pages of
LibreOffice's help in the same seven languages (en, ko, ja, zh, de, fr, es; built by
``benchmarks/quality_corpus.py``, pages disjoint from the reference the table was fitted on).
Each version of raylm runs its own default pipeline's row steps up to ``quality``
(``normalize`` then ``quality``, with ``langid`` before it where the default puts it there)
on every page, and reports per language the share kept and the top drop reasons:

* ``before``: raylm at ``--before`` (default: the commit before per-language quality), taken
  with ``git archive`` and run in its own process;
* ``segmentation_only``: this tree with ``quality.fitted_thresholds: false`` (real words,
  per-language stop words, the English thresholds);
* ``after``: this tree as it ships.

The target: every language keeps within 15% (relative) of the English share, and English keeps
no less than before. ``langid`` is also run on ``mixed_ko.jsonl.gz`` (Korean help pages full of
English names, menu paths and commands): the share it calls Korean, and what ``quality``
keeps of them.

Throughput, measured in the same processes: ``raylm curate`` with the default config on the
shipped sample (``data/sample``: 227 documents, 0.96 MB; local Ray with 2 CPUs; one warm-up run
then the median of ``--repeats``), and the row steps up to ``quality`` in one process on the same
documents. The target is after/before >= 0.7.

    flock -x /work/cpu.lock python benchmarks/quality_fairness.py [--before REV] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data" / "quality_fairness"
SAMPLE = ROOT / "data" / "sample"
BEFORE = "217c1799e5bc3007e25b7f7a3324ef05c9d599fa"  # the Layout commit: one set of English thresholds
LANGS = ("en", "ko", "ja", "zh", "de", "fr", "es")
TOLERANCE = 0.15


def read_jsonl(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --- run inside a worker process, against whichever raylm is on sys.path ----------------------


def head_steps(quality_options: dict) -> list:
    """The default pipeline's row steps up to and including ``quality``, built."""
    from raylm.config import from_dict
    from raylm.curate.pipeline import DEFAULT_STEPS
    from raylm.curate.steps import step_class

    steps = []
    for item in DEFAULT_STEPS:
        name, options = (item, {}) if isinstance(item, str) else next(iter(item.items()))
        if name == "quality":
            options = {**options, **quality_options}
        step = step_class(name)(from_dict(step_class(name).Config, dict(options), name))
        step.setup()
        steps.append(step)
        if name == "quality":
            return steps
    raise RuntimeError("the default pipeline has no quality step")


def judge(steps: list, texts: list[str]) -> tuple[list[str | None], list[str | None]]:
    """(drop reason, lang) per text after the head steps."""
    import pyarrow as pa

    from raylm.curate.runner import apply_step

    batch = pa.table({"id": [str(i) for i in range(len(texts))], "text": pa.array(texts, pa.large_string()),
                      "_drop_step": pa.array([None] * len(texts), pa.string()),
                      "_drop_reason": pa.array([None] * len(texts), pa.string())})
    for step in steps:
        batch = apply_step(step, batch)
    order = {int(i): k for k, i in enumerate(batch.column("id").to_pylist())}
    reasons = batch.column("_drop_reason").to_pylist()
    langs = batch.column("lang").to_pylist() if "lang" in batch.column_names else [None] * len(texts)
    return [reasons[order[i]] for i in range(len(texts))], [langs[order[i]] for i in range(len(texts))]


def fairness(steps: list) -> dict:
    rows = read_jsonl(DATA / "parallel.jsonl.gz")
    reasons, _ = judge(steps, [r["text"] for r in rows])
    by: dict[str, Counter] = defaultdict(Counter)
    for row, reason in zip(rows, reasons):
        by[row["lang"]][reason] += 1
    out = {}
    for lang in LANGS:
        c = by[lang]
        total = sum(c.values())
        drops = Counter({k: v for k, v in c.items() if k is not None})
        out[lang] = {"kept": c[None], "docs": total, "share": round(c[None] / total, 4),
                     "top_reasons": dict(drops.most_common(4))}
    return out


def langid_check() -> dict:
    from raylm.curate.steps.langid import LangID, LangIDConfig

    step = LangID(LangIDConfig())
    step.setup()
    rows = read_jsonl(DATA / "parallel.jsonl.gz")
    langs, _ = step.predict([r["text"] for r in rows])
    right = Counter(r["lang"] for r, got in zip(rows, langs) if got == r["lang"])
    mixed = read_jsonl(DATA / "mixed_ko.jsonl.gz")
    got, _ = step.predict([r["text"] for r in mixed])
    return {"parallel_correct": {lang: f"{right[lang]}/{sum(r['lang'] == lang for r in rows)}" for lang in LANGS},
            "mixed_ko_docs": len(mixed), "mixed_ko_latin_share_mean": round(statistics.mean(
                r["latin_share"] for r in mixed), 3), "mixed_ko_called_ko": sum(g == "ko" for g in got),
            "mixed_ko_called": dict(Counter(got).most_common())}


def segmenter_speed() -> dict:
    """MB/s of each segmenter on the parallel set's text of its language (one process, after
    one warm-up pass that loads the dictionary); Thai, which the set lacks, on a repeated
    paragraph."""
    from raylm.curate.steps import segment

    rows = read_jsonl(DATA / "parallel.jsonl.gz")
    thai = ("การประมวลผลภาษาธรรมชาติเป็นสาขาหนึ่งของปัญญาประดิษฐ์ที่ศึกษาการทำให้คอมพิวเตอร์เข้าใจภาษามนุษย์ "
            "ระบบตัดคำภาษาไทยต้องใช้พจนานุกรมเพราะภาษาไทยไม่เว้นวรรคระหว่างคำ\n") * 300
    cases = [(name, "\n\n".join(r["text"] for r in rows if r["lang"] == lang))
             for name, lang in (("whitespace", "en"), ("korean", "ko"), ("sudachi", "ja"), ("jieba", "zh"))]
    cases.append(("thai", thai))
    out = {}
    for name, text in cases:
        seg = segment.get(name)
        run = seg.morphemes if name == "korean" else seg.words
        run(text[:1000])
        t0 = time.perf_counter()
        n = len(run(text))
        seconds = time.perf_counter() - t0
        out[name + (" (morphemes)" if name == "korean" else "")] = {
            "mb_per_s": round(len(text.encode()) / seconds / 1e6, 2), "tokens": n}
    return out


def throughput(steps: list, repeats: int) -> dict:
    import ray

    from raylm.cluster import RayConfig
    from raylm.curate import pipeline as P

    texts = [json.loads(line)["text"] for line in gzip.open(SAMPLE / "corpus.jsonl.gz", "rt", encoding="utf-8")]
    judge(steps, texts)  # warm: dictionaries loaded
    in_process = []
    for _ in range(5):
        t0 = time.perf_counter()
        judge(steps, texts)
        in_process.append(time.perf_counter() - t0)
    cfg = P.CurateConfig()
    cfg.ray, cfg.report = RayConfig(num_cpus=2), False
    runs, kept = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats + 1):
            stats = P.run(cfg, [str(SAMPLE)], f"{tmp}/run{i}", quiet=True)
            if i:
                runs.append(stats["seconds"])
            kept = stats["kept"]
    ray.shutdown()
    mb = sum(len(t.encode()) for t in texts) / 1e6
    return {"sample_docs": len(texts), "sample_mb": round(mb, 3),
            "head_steps_seconds": round(statistics.median(in_process), 4),
            "head_steps_mb_per_s": round(mb / statistics.median(in_process), 3),
            "curate_seconds": [round(s, 3) for s in runs], "curate_median_seconds": round(statistics.median(runs), 3),
            "curate_mb_per_s": round(mb / statistics.median(runs), 3), "curate_kept": kept}


def worker(args: argparse.Namespace) -> None:
    steps = head_steps(json.loads(args.quality_options))
    out = {"steps": [s.name for s in steps], "fairness": fairness(steps)}
    if args.langid:
        out["langid"] = langid_check()
        out["segmenter_speed"] = segmenter_speed()
        mixed = read_jsonl(DATA / "mixed_ko.jsonl.gz")
        reasons, langs = judge(steps, [r["text"] for r in mixed])
        out["mixed_ko_quality"] = {"docs": len(mixed), "judged_as": dict(Counter(langs)),
                                   "kept": reasons.count(None),
                                   "top_reasons": dict(Counter(r for r in reasons if r).most_common(4))}
    if args.repeats:
        out["throughput"] = throughput(steps, args.repeats)
    print("RESULT " + json.dumps(out, ensure_ascii=False))


# --- the driver ----------------------------------------------------------------------------------


def run_worker(src: Path, quality_options: dict, repeats: int, langid: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--quality-options", json.dumps(quality_options),
           "--repeats", str(repeats)] + (["--langid"] if langid else [])
    # cwd too: a local Ray's workers import from the driver's working directory
    proc = subprocess.run(cmd, env=env, cwd=src, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"worker for {src} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def verdict(fair: dict) -> dict:
    en = fair["en"]["share"]
    ratios = {lang: round(fair[lang]["share"] / en, 3) if en else None for lang in LANGS}
    return {"ratio_to_english": ratios,
            "within_tolerance": all(r is not None and abs(r - 1) <= TOLERANCE for r in ratios.values())}


def table(name: str, fair: dict) -> str:
    lines = [f"{name}:", f"  {'lang':<5}{'kept':>9}{'share':>8}{'vs en':>7}  top reasons"]
    en = fair["en"]["share"] or 1
    for lang in LANGS:
        f = fair[lang]
        top = ", ".join(f"{k}={v}" for k, v in list(f["top_reasons"].items())[:3])
        lines.append(f"  {lang:<5}{f['kept']:>4}/{f['docs']:<4}{f['share']:>8.3f}{f['share'] / en:>7.2f}  {top}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", default=BEFORE, help="git revision of the 'before' raylm")
    p.add_argument("--repeats", type=int, default=3, help="timed curate runs per version (0: no throughput)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality_fairness.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--langid", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--quality-options", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", args.before, "raylm"], cwd=ROOT, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        before = run_worker(Path(tmp), {}, args.repeats, langid=False)
    seg_only = run_worker(ROOT, {"fitted_thresholds": False}, 0, langid=False)
    after = run_worker(ROOT, {}, args.repeats, langid=True)
    result = {
        "benchmark": "quality_fairness",
        "date": dt.date.today().isoformat(),
        "device": f"{platform.machine()}, {os.cpu_count()} cores (CPU only)",
        "command": "python benchmarks/quality_fairness.py",
        "corpus": {"parallel": "benchmarks/data/quality_fairness/parallel.jsonl.gz (80 LibreOffice help pages x 7 "
                               "languages, MPL-2.0)", "tolerance": TOLERANCE},
        "before": {"revision": args.before, "steps": before["steps"], "fairness": before["fairness"],
                   **verdict(before["fairness"])},
        "segmentation_only": {"steps": seg_only["steps"], "fairness": seg_only["fairness"],
                              **verdict(seg_only["fairness"])},
        "after": {"revision": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                             text=True).stdout.strip(), "steps": after["steps"], "fairness": after["fairness"], **verdict(after["fairness"])},
        "english_share_not_lower": after["fairness"]["en"]["share"] >= before["fairness"]["en"]["share"],
        "langid": after["langid"],
        "mixed_ko_quality": after["mixed_ko_quality"],
        "segmenter_speed": after["segmenter_speed"],
    }
    if args.repeats:
        tb, ta = before["throughput"], after["throughput"]
        result["throughput"] = {
            "before": tb, "after": ta,
            "curate_ratio_after_vs_before": round(tb["curate_median_seconds"] / ta["curate_median_seconds"], 3),
            "head_steps_ratio_after_vs_before": round(tb["head_steps_seconds"] / ta["head_steps_seconds"], 3),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    for name in ("before", "segmentation_only", "after"):
        print(table(name, result[name]["fairness"]))
        print(f"  within ±{TOLERANCE:.0%} of English: {result[name]['within_tolerance']}")
    print(f"English share not lower than before: {result['english_share_not_lower']}")
    print(f"langid: {json.dumps(result['langid'], ensure_ascii=False)}")
    print(f"segmenters, MB/s: {json.dumps(result['segmenter_speed'], ensure_ascii=False)}")
    print(f"quality on the mixed Korean pages: {json.dumps(result['mixed_ko_quality'], ensure_ascii=False)}")
    if args.repeats:
        t = result["throughput"]
        print(f"curate on data/sample: before {t['before']['curate_median_seconds']}s, after "
              f"{t['after']['curate_median_seconds']}s -> {t['curate_ratio_after_vs_before']}x; head steps "
              f"{t['head_steps_ratio_after_vs_before']}x")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
