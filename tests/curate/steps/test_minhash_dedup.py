"""minhash_dedup on a real local Ray: near-copies found across files, clusters by connected
components, counters and duplicate rows as a user reads them."""

from __future__ import annotations

import random

import pytest

from raylm.config import ConfigError, from_dict, load
from raylm.curate.pipeline import CurateConfig, run
from raylm.curate.steps.minhash_dedup import MinHashConfig
from tests.curate.steps.dedup_corpus import doc, edit, read_out, step_row, write


def test_near_copies_in_another_file_are_removed_and_ids_kept(ray_session, tmp_path):
    rng = random.Random(1)
    originals = [{"id": f"orig-{i}", "text": doc(rng), "url": f"https://x/{i}"} for i in range(40)]
    copies = [{"id": f"copy-{i}", "text": edit(originals[i]["text"], [60])} for i in range(10)]
    write(tmp_path / "a.jsonl", originals)
    write(tmp_path / "b.jsonl", copies)
    (tmp_path / "c.yaml").write_text("steps:\n  - minhash_dedup: {threshold: 0.8}\n")
    cfg = load(CurateConfig, tmp_path / "c.yaml")
    run(cfg, [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")], str(tmp_path / "out"), quiet=True)
    data, rejected, dups, stats = read_out(tmp_path / "out")
    assert sorted(d["id"] for d in data) == sorted(o["id"] for o in originals)
    assert {d["id"]: d["url"] for d in data}["orig-3"] == "https://x/3"
    assert sorted((r["id"], r["reason"]) for r in rejected) == sorted((f"copy-{i}", "near_duplicate") for i in range(10))
    assert {(d["removed_id"], d["kept_id"], d["cluster_size"], d["step"]) for d in dups} == {
        (f"copy-{i}", f"orig-{i}", 2, "minhash_dedup") for i in range(10)}
    assert len({d["cluster"] for d in dups}) == 10
    counters = step_row(stats, "minhash_dedup")["counters"]
    assert counters["removed"] == 10 and counters["clusters"] == 10
    assert counters["candidate_pairs"] >= counters["duplicate_pairs"] == 10
    assert counters["cc_converged"] == 1 and counters["cc_rounds"] >= 1
    assert stats["documents_in"] == 50 == stats["kept"] + stats["dropped"] and stats["conservation_ok"]


def test_a_chain_of_edits_is_one_cluster_rooted_at_the_first_document(ray_session, tmp_path):
    """a ~ b ~ c ~ d with each step above the threshold but a and d far apart: connected
    components put all four in one cluster and keep the document read first."""
    rng = random.Random(7)
    a = doc(rng, 200)
    chain = [a]
    for k in range(3):  # each link changes 3 new words: J ~ 0.86 per link, ~0.6 from a to d
        chain.append(edit(chain[-1], [20 + 60 * k, 40 + 60 * k, 50 + 60 * k], f"CHANGED{k}"))
    others = [{"id": f"other-{i}", "text": doc(rng, 200)} for i in range(20)]
    order = [("d", chain[3]), ("b", chain[1]), ("a", chain[0]), ("c", chain[2])]  # read order: d first
    write(tmp_path / "in.jsonl", [{"id": k, "text": t} for k, t in order] + others)
    cfg = from_dict(CurateConfig, {"steps": [{"minhash_dedup": {"threshold": 0.8}}]})
    run(cfg, [str(tmp_path / "in.jsonl")], str(tmp_path / "out"), quiet=True)
    data, rejected, dups, stats = read_out(tmp_path / "out")
    assert sorted(r["id"] for r in rejected) == ["a", "b", "c"]
    assert {(d["removed_id"], d["kept_id"], d["cluster_size"]) for d in dups} == {(x, "d", 4) for x in "abc"}
    counters = step_row(stats, "minhash_dedup")["counters"]
    assert counters["clusters"] == 1 and counters["removed"] == 3 and counters["cc_converged"] == 1


def test_config_checks():
    with pytest.raises(ConfigError, match="threshold"):
        from_dict(MinHashConfig, {"threshold": 1.5})
    with pytest.raises(ConfigError, match="max_rounds"):
        from_dict(MinHashConfig, {"max_rounds": 0})
    assert MinHashConfig().min_shared_bands() >= 1
