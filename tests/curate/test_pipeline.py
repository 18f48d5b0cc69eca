"""The curate pipeline end to end on a real local Ray."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from raylm.config import from_dict
from raylm.curate.pipeline import CurateConfig, run

WORDS = ("river mountain lantern quiet harvest copper window garden silver thunder meadow "
         "anchor velvet orchard compass ember harbor willow canyon marble").split()


def doc(rng, n=120):
    return " ".join(rng.choice(WORDS) + str(rng.randrange(50)) for _ in range(n))


def write(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False))
            f.write("\n")


def read_out(out):
    data = pq.read_table(out / "data").to_pylist()
    rejected = pq.read_table(out / "rejected").to_pylist() if any((out / "rejected").iterdir()) else []
    stats = json.loads((out / "stats.json").read_text())
    return data, rejected, stats


def test_bad_input_is_quarantined_and_counted(ray_session, tmp_path):
    good = [{"text": f"a good document number {i} with enough words in it"} for i in range(5)]
    p = tmp_path / "in.jsonl"
    write(p, [*good, "{broken json", {"title": "no text field"}, {"text": ""}])
    with open(p, "ab") as f:
        f.write(b'{"text": "bad \xff\xfe bytes"}\n')
        f.write(json.dumps({"id": "huge", "text": "y" * 50_000_000}).encode() + b"\n")
    cfg = from_dict(CurateConfig, {"steps": ["exact_dedup"], "report": False})
    stats = run(cfg, [str(tmp_path)], str(tmp_path / "out"), quiet=True)
    data, rejected, _ = read_out(tmp_path / "out")
    assert len(data) == 5
    got = sorted((r["reason"], r["id"].split("/")[-1]) for r in rejected)
    assert got == [("empty", "in.jsonl:8"), ("invalid_utf8", "in.jsonl:9"), ("malformed_json", "in.jsonl:6"),
                   ("missing_text", "in.jsonl:7"), ("too_large", "huge")]
    huge = next(r for r in rejected if r["id"] == "huge")
    assert len(huge["text"]) == 50_000_000  # quarantined whole, not lost
    assert stats["steps"][0]["dropped"] == {"empty": 1, "invalid_utf8": 1, "malformed_json": 1,
                                             "missing_text": 1, "too_large": 1}
    assert stats["documents_in"] == 10 and stats["conservation_ok"]


def test_conservation_compares_what_was_read_with_what_was_written():
    """documents_in is counted per read unit as it is read, apart from the sink's totals: a
    record lost between the two (or written twice) shows as a violation."""
    from raylm.curate.stats import build_stats, merge_sink_results

    written = merge_sink_results([{"kept": 7, "kept_bytes": 70, "length_hist": [0], "langs": {},
                                   "dropped": {("read", "empty"): 2}, "dropped_bytes": {("read", "empty"): 0}}])
    assert build_stats([], written, {}, 1.0, 100, records_read=9)["conservation_ok"]
    for read in (10, 8):
        stats = build_stats([], written, {}, 1.0, 100, records_read=read)
        assert stats["documents_in"] == read and not stats["conservation_ok"]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "raylm.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_missing_path_and_bad_config_exit_2(tmp_path):
    res = cli("curate", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o"))
    assert res.returncode == 2
    assert "nope.jsonl: no such file or directory" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "in.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "bad.yaml").write_text("steps:\n  - minhash_dedup: {treshold: 0.8}\n")
    res = cli("curate", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o"), "-c", str(tmp_path / "bad.yaml"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "bad.yaml" in res.stderr and "treshold" in res.stderr
    res = cli("curate", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o"), "--set", "steps=[nosuchstep]")
    assert res.returncode == 2 and "unknown step 'nosuchstep'" in res.stderr


def test_refuses_to_overwrite_without_flag(ray_session, tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "some text here"}\n')
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    cfg = from_dict(CurateConfig, {"steps": []})
    from raylm.storage import InputError
    with pytest.raises(InputError, match="not empty"):
        run(cfg, [str(tmp_path / "in.jsonl")], str(tmp_path / "out"), quiet=True)


def test_uri_paths_and_rejected_switched_off(ray_session, tmp_path):
    # file:// goes through the same pyarrow filesystem code as s3:// or gs://
    write(tmp_path / "in.jsonl", [{"text": "one real document with some words"}, "{oops"])
    cfg = from_dict(CurateConfig, {"steps": ["exact_dedup"], "write_rejected": False, "report": True})
    stats = run(cfg, [f"file://{tmp_path}/in.jsonl"], f"file://{tmp_path}/out", quiet=True)
    out = tmp_path / "out"
    assert pq.read_table(out / "data").num_rows == 1
    assert not list((out / "rejected").iterdir())  # switched off: nothing written ...
    assert stats["steps"][0]["dropped"] == {"malformed_json": 1}  # ... but still counted
    assert stats["conservation_ok"] and (out / "report.html").is_file()
