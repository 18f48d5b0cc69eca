"""``raylm demo`` as a person runs it, output in a file (as in a Ray job's log, CI or
``nohup``): the shipped sample corpus through every stage, in one subprocess on its own local
Ray, checked for what it says (a short story, none of Ray's internals) and what it wrote."""

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from raylm.demo import SAMPLE

REPO = Path(__file__).resolve().parent.parent
# what Ray printed into the demo's log before raylm's console was quiet (issue 18)
NOISE = ("logging_progress", "PlacementGroupCleaner", "State API", "execution finished",
         "Reporting training result", "TrainingReport(", "Token authentication is enabled", "Traceback")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``raylm demo --steps 20 > log 2>&1``: (exit code, the log's lines, the output folder)."""
    out = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_DEDUP_LOGS", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAYLM_LOG_LEVEL")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    with open(out / "log", "w") as log:
        code = subprocess.run([sys.executable, "-m", "raylm.cli", "demo", "-o", str(out / "demo"), "--steps", "20"],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=900).returncode
    return code, (out / "log").read_text().splitlines(), out / "demo"


def test_sample_corpus_is_shipped():
    files = sorted(SAMPLE.glob("*.jsonl*"))
    assert files and (SAMPLE / "SOURCES.md").is_file()
    docs = [json.loads(line) for f in files for line in gzip.open(f, "rt", encoding="utf-8")]
    size = {lang: sum(len(d["text"].encode()) for d in docs if d["lang"] == lang) for lang in ("ko", "en")}
    assert sum(size.values()) > 500_000 and size["ko"] > 0.1 * sum(size.values())
    assert all(d["license"] for d in docs) and len({d["id"] for d in docs}) == len(docs)


def test_demo_log_is_a_short_story(demo):
    code, lines, out = demo
    text = "\n".join(lines)
    assert code == 0, text[-3000:]
    assert len(lines) <= 80, text
    assert not [n for n in NOISE if n in text], text
    # no Ray log record at all, but the one Ray's C++ core writes itself when Ray Data starts an actor
    # pool (prepare's tokenizers): a false alarm for Ray Data, whose pools hold their arguments (ray#53727)
    assert not [x for x in lines if re.match(r"^\[?\d{4}-\d\d-\d\d", x) and "issues/53727" not in x], text
    headings = [x for x in lines if re.match(r"^\d\. ", x)]
    assert [h[:2] for h in headings] == ["1.", "2.", "3.", "4."]
    for stage in ("curate ", "dedup ", "tokenizer ", "prepare "):  # one progress line per stage
        assert sum(x.startswith(stage) for x in lines) >= 1, stage
    windows = [x for x in lines if re.match(r"^step +\d+/20 +loss", x)]
    assert len(windows) == 4 and "eta" in windows[1]  # a line per log window (log_every 5)
    assert any(x.startswith("eval @ 20: val ") and " en " in x for x in lines)
    assert f"   report: {out}/train/demo/report.html" in lines
    assert (out / "train" / "demo" / "report.html").is_file()
    assert "Next:" in lines[-6:]  # the last lines: where everything is, what to run next
    assert any(x.strip().startswith("raylm generate ") for x in lines[-5:])


def test_default_pipeline_on_sample(demo):
    """The demo's curation: every default step, conservation, Korean kept, the report."""
    out = demo[2] / "curated"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["conservation_ok"]
    names = [s["step"] for s in stats["steps"]]
    assert names == ["read", "normalize", "langid", "quality", "pii", "exact_dedup", "line_dedup", "minhash_dedup"]
    for prev, cur in zip(stats["steps"], stats["steps"][1:]):
        assert cur["docs_in"] == prev["kept"]  # what one step keeps, the next receives
        assert cur["docs_in"] == cur["kept"] + sum(cur["dropped"].values())
    data = pq.read_table(out / "data")
    assert data.num_rows == stats["kept"] > 0.3 * stats["documents_in"]
    langs = set(data.column("lang").to_pylist())
    assert {"ko", "en"} <= langs  # Korean survives every step
    assert {"lang_score", "pii_count", "source"} <= set(data.column_names)
    assert not {"_key", "_drop_step", "_drop_reason"} & set(data.column_names)
    rejected = pq.read_table(out / "rejected")
    assert rejected.num_rows == stats["dropped"]
    assert set(rejected.column("step").to_pylist()) <= set(names)
    quality = next(s for s in stats["steps"] if s["step"] == "quality")
    judged = {k: v for k, v in quality["counters"].items() if k.startswith("judged_as_")}
    assert judged["judged_as_ko"] > 0 and sum(judged.values()) == quality["docs_in"]  # each by its language
    quality_rows = rejected.filter(pc.equal(rejected.column("step"), "quality"))
    assert sorted(set(quality_rows.column("reason").to_pylist())) == sorted(quality["dropped"])
    report = (out / "report.html").read_text()
    assert "Conservation" in report and report.count("data:image/png;base64,") == 4
    assert all((out / "plots" / p).stat().st_size > 1000 for p in
               ("lengths.png", "languages.png", "duplicate_clusters.png", "drop_reasons.png"))
