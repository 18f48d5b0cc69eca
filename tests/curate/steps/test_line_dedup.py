"""line_dedup: frequent lines counted by hash partition, removed from all but the first holder."""

from __future__ import annotations

import random

import pyarrow as pa

from raylm.config import from_dict
from raylm.curate.pipeline import CurateConfig, run
from raylm.curate.steps.line_dedup import frequent_units
from tests.curate.steps.dedup_corpus import doc, read_out, step_row, write


def test_frequent_units_marks_every_holder_and_the_first():
    t = pa.table({"shard": pa.array([0] * 7, pa.int32()), "bucket": pa.array([1, 1, 1, 2, 2, 3, 1], pa.uint64()),
                  "key": pa.array([30, 10, 20, 5, 6, 7, 40], pa.int64())})
    out = frequent_units(t, min_docs=3)
    rows = sorted(zip(out.column("key").to_pylist(), out.column("unit").to_pylist(), out.column("first").to_pylist()))
    assert rows == [(10, 1, True), (20, 1, False), (30, 1, False), (40, 1, False)]  # units 2, 3: too rare


def test_exact_then_line_dedup(ray_session, tmp_path):
    rng = random.Random(2)
    nav = "Home | About us | Contact | Privacy policy | Terms of service"
    bodies = [doc(rng, 60) for _ in range(12)]
    records = [{"id": f"p{i}", "text": f"{nav}\n{b}\nCopyright 2024 Example Corp. All rights reserved."}
               for i, b in enumerate(bodies)]
    records.append({"id": "dup-of-p0", "text": records[0]["text"].replace("\n", "  \n")})
    records.append({"id": "nav-only", "text": f"{nav}\nCopyright 2024 Example Corp. All rights reserved."})
    write(tmp_path / "in.jsonl", records)
    cfg = from_dict(CurateConfig, {"steps": ["exact_dedup", {"line_dedup": {"min_docs": 3}}]})
    run(cfg, [str(tmp_path / "in.jsonl")], str(tmp_path / "out"), quiet=True)
    data, rejected, _, stats = read_out(tmp_path / "out")
    reasons = {r["id"]: (r["step"], r["reason"]) for r in rejected}
    assert reasons == {"dup-of-p0": ("exact_dedup", "exact_duplicate"), "nav-only": ("line_dedup", "boilerplate")}
    by_id = {d["id"]: d["text"] for d in data}
    assert nav in by_id["p0"]  # the first occurrence keeps its lines (Dolma keeps the first)
    assert all(nav not in by_id[f"p{i}"] and bodies[i] in by_id[f"p{i}"] for i in range(1, 12))
    line = step_row(stats, "line_dedup")
    assert line["counters"]["units_removed"] == 2 * 11 + 2
    assert line["counters"]["frequent_units"] == 2  # the navigation line and the copyright line
