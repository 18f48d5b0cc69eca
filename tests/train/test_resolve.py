"""A run resolved once on the driver (``raylm.train.resolve.resolve_run``), and the one config
mechanism (YAML + ``--set``, flavors, dotted keys) it starts from. No Ray run: the session's
prepared sample corpus (``prepared``) and its reference runs' folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import raylm.data.shards
from raylm.config import ConfigError, load_data, set_dotted, to_dict
from raylm.model.config import FLAVORS
from raylm.plan import plan_config
from raylm.train.config import load_train_config, train_config
from raylm.train.resolve import resolve_run
from raylm.train.run import ResolvedRun
from raylm.train.trainer import run_dir
from tests.train.sample import SEQ_LEN, SOURCES, STEPS
from tests.train.test_continual import fake_checkpoint, wsd_config
from tests.train.test_eval import run_config


@pytest.fixture
def reads(monkeypatch) -> dict[str, int]:
    """Folder -> times its manifest was read."""
    counts: dict[str, int] = {}
    read = raylm.data.shards.read_manifest

    def counted(path: str):
        counts[os.path.abspath(path)] = counts.get(os.path.abspath(path), 0) + 1
        return read(path)

    monkeypatch.setattr(raylm.data.shards, "read_manifest", counted)
    return counts


def test_a_continual_run_is_resolved_with_one_read_per_manifest(prepared, tmp_path, reads):
    """A continual fim run with replay and an extra eval set touches the manifests of its new
    data, the old run's data, their held-out splits and the eval set: each is read once."""
    tokens = prepared["tokens"]
    old = wsd_config(prepared, tmp_path, "old")
    fake_checkpoint(tmp_path / "old" / "checkpoint_000000", old, 4)
    d = run_config(prepared, tmp_path, "new", **{
        "data": {"path": str(tokens / "web"), "window": 64, "prefetch": 1},
        "continual": {"init_from": str(tmp_path / "old"), "replay": 0.25},
        "eval.sets": {"extra": str(tokens / "tiny" / "val")}})
    run = resolve_run(train_config(d))
    assert run.cfg.data.sources == {"web": str(tokens / "web"), "old_books": str(tokens / "books")}
    assert run.eval_sets == {"web": str(tokens / "web" / "val"), "old_books": str(tokens / "books" / "val"),
                             "extra": str(tokens / "tiny" / "val")}
    assert reads == {str(tokens / n): 1 for n in ("web", "books")} | {
        str(tokens / n / "val"): 1 for n in ("tiny",)}
    assert run.tokenizer == prepared["model"] and run.seq_len == SEQ_LEN and run.tokenizer_hash
    assert ResolvedRun.from_dict(json.loads(json.dumps(run.to_dict()))) == run  # what the workers get


def test_the_resolved_config_says_what_runs(prepared, tmp_path, monkeypatch):
    """Local paths absolute (the workers do not share the driver's working directory), the lr
    schedule's length set; the manifest's sequence length checked against the model's."""
    monkeypatch.chdir(prepared["root"])
    d = run_config(prepared, Path("runs"), "rel", **{
        "data": {"sources": {n: f"tokens/{n}" for n in SOURCES}, "mix": {"weights": {"books": 1, "web": 1}}}})
    cfg = resolve_run(train_config(d)).cfg
    assert cfg.data.sources == {n: str(prepared["tokens"] / n) for n in SOURCES}
    assert cfg.storage_path == str(prepared["root"] / "runs") and cfg.optim.schedule.total_steps == STEPS
    assert to_dict(resolve_run(cfg).cfg) == to_dict(cfg)  # a fixed point
    with pytest.raises(ConfigError, match=rf"model.max_seq_len: 32 is shorter than the sequences of "
                                          rf"data.sources.books .*books \({SEQ_LEN} tokens"):
        resolve_run(train_config(with_model(d, max_seq_len=32)))
    with pytest.raises(ConfigError, match="eval.samples: eval.samples.tokenizer .*nope.model is not a file"):
        resolve_run(train_config({**d, "eval": {"samples": {"prompts": ["x"], "tokenizer": "nope.model"}}}))
    rel = os.path.relpath(prepared["model"], prepared["root"])  # a file, made absolute too
    run = resolve_run(train_config({**d, "eval": {"samples": {"prompts": ["x"], "tokenizer": rel}}}))
    assert run.cfg.eval.samples.tokenizer == os.fspath(prepared["model"]) and not os.path.isabs(rel)


def with_model(d: dict, **model) -> dict:
    return {**d, "model": {**d["model"], **model}}


def test_the_run_folder_keeps_the_resolved_config(reference_runs):
    d, _ = reference_runs["one"]
    saved = json.loads(Path(run_dir(train_config(d)), "config.json").read_text())
    assert saved["optim"]["schedule"]["total_steps"] == STEPS  # set on the driver, not by the workers


def test_one_config_mechanism(tmp_path):
    """YAML + --set, the dotted keys of a sweep and the model flavors: one implementation each,
    shared by the train config, the planner and Tune."""
    path = tmp_path / "t.yaml"
    path.write_text("model: {flavor: debug, d_model: 32}\ndata: {path: x}\n")
    data, origin = load_data(path, ["optim.lr=0.01", "model.n_layers=3"])
    assert origin == f"{path} (with --set)" and data["optim"] == {"lr": 0.01} and data["model"]["n_layers"] == 3
    cfg = load_train_config(path, ["optim.lr=0.01", "model.n_layers=3"])
    assert (cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads) == (32, 3, FLAVORS["debug"].n_heads)
    assert plan_config({"model": {"flavor": "debug", "d_model": 32}}).model == train_config(
        {"model": {"flavor": "debug", "d_model": 32}, "data": {"path": "x"}}).model
    assert set_dotted({"a": {"b": 1}}, "a.c.d", 2) == {"a": {"b": 1, "c": {"d": 2}}}
    with pytest.raises(ConfigError, match="search: 'a.b.c': 'b' is not a section"):
        set_dotted({"a": {"b": 1}}, "a.b.c", 2, "search: 'a.b.c'")
    with pytest.raises(ConfigError, match=r"model.flavor: 'huge' is not one of"):
        plan_config({"model": {"flavor": "huge"}})
