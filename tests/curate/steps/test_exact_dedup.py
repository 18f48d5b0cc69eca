"""exact_dedup: hash buckets as clusters, the first document read kept, on a real local Ray."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa

from raylm.config import from_dict
from raylm.curate.pipeline import CurateConfig, run
from raylm.curate.steps.exact_dedup import ExactDedupConfig, bucket_roots, text_hash
from tests.curate.steps.dedup_corpus import doc, read_out, step_row, write


def test_hash_ignores_whitespace_runs_and_optionally_case():
    cfg = ExactDedupConfig()
    assert text_hash("a  b\n c ", cfg) == text_hash("a b c", cfg) != text_hash("A b c", cfg)
    assert text_hash("A b c", ExactDedupConfig(lowercase=True)) == text_hash("a b c", ExactDedupConfig(lowercase=True))
    assert text_hash("a  b", ExactDedupConfig(collapse_whitespace=False)) != text_hash("a b", cfg)


def test_bucket_roots_names_every_member_and_its_smallest_key():
    t = pa.table({"shard": pa.array([0] * 6, pa.int32()), "bucket": pa.array([7, 3, 7, 9, 7, 3], pa.uint64()),
                  "key": pa.array([50, 20, 10, 99, 30, 40], pa.int64())})
    out = bucket_roots(t)
    got = dict(zip(out.column("key").to_pylist(), out.column("root").to_pylist()))
    assert got == {10: 10, 30: 10, 50: 10, 20: 20, 40: 20}  # 99 has no twin: not a member
    assert np.all(out.column("key").to_numpy() >= out.column("root").to_numpy())


def test_copies_across_files_keep_the_first_read(ray_session, tmp_path):
    rng = random.Random(2)
    texts = [doc(rng, 40) for _ in range(30)]
    write(tmp_path / "a.jsonl", [{"id": f"a{i}", "text": t} for i, t in enumerate(texts)])
    write(tmp_path / "b.jsonl", [{"id": f"b{i}", "text": texts[i].replace(" ", "   ")} for i in range(0, 30, 3)]
          + [{"id": "b-triple", "text": texts[0]}])
    cfg = from_dict(CurateConfig, {"steps": ["exact_dedup"]})
    run(cfg, [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")], str(tmp_path / "out"), quiet=True)
    data, rejected, dups, stats = read_out(tmp_path / "out")
    assert sorted(d["id"] for d in data) == sorted(f"a{i}" for i in range(30))
    assert all(r["reason"] == "exact_duplicate" for r in rejected) and len(rejected) == 11
    pairs = {(d["removed_id"], d["kept_id"], d["cluster_size"]) for d in dups}
    assert pairs == {(f"b{i}", f"a{i}", 3 if i == 0 else 2) for i in range(0, 30, 3)} | {("b-triple", "a0", 3)}
    counters = step_row(stats, "exact_dedup")["counters"]
    assert counters == {"removed": 11, "clusters": 10}
