"""The shipped sample corpus through every default step: what ``raylm demo`` runs."""

import gzip
import json

import pyarrow.parquet as pq

from raylm.curate.pipeline import CurateConfig, run
from raylm.demo import SAMPLE


def test_sample_corpus_is_shipped():
    files = sorted(SAMPLE.glob("*.jsonl*"))
    assert files and (SAMPLE / "SOURCES.md").is_file()
    docs = [json.loads(line) for f in files for line in gzip.open(f, "rt", encoding="utf-8")]
    size = {lang: sum(len(d["text"].encode()) for d in docs if d["lang"] == lang) for lang in ("ko", "en")}
    assert sum(size.values()) > 500_000 and size["ko"] > 0.1 * sum(size.values())
    assert all(d["license"] for d in docs) and len({d["id"] for d in docs}) == len(docs)


def test_default_pipeline_on_sample(ray_session, tmp_path):
    stats = run(CurateConfig(), [str(SAMPLE)], str(tmp_path / "out"), quiet=True)
    out = tmp_path / "out"
    assert stats["conservation_ok"]
    names = [s["step"] for s in stats["steps"]]
    assert names == ["read", "normalize", "quality", "langid", "pii", "exact_dedup", "line_dedup", "minhash_dedup"]
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
    report = (out / "report.html").read_text()
    assert "Conservation" in report and report.count("data:image/png;base64,") == 4
    assert json.loads((out / "stats.json").read_text())["kept"] == stats["kept"]
    assert all((out / "plots" / p).stat().st_size > 1000 for p in
               ("lengths.png", "languages.png", "duplicate_clusters.png", "drop_reasons.png"))
