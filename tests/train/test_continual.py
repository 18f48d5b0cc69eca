"""Continual pretraining through real 2-worker Ray Train runs on the prepared sample corpus
(session fixture ``prepared``: sources ``books`` and ``web`` with held-out splits).

One module fixture trains a WSD run on ``books`` (decay from step 4 of 8, checkpoints at 4
and 8), a WSD branch from its step-4 checkpoint, and a continual run from its run folder on
``web`` replaying 25% of ``books`` under FSDP2, whose worker is killed at step 6.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from raylm.cli import main
from raylm.config import ConfigError, to_dict
from raylm.optim.schedules import ScheduleConfig, lr_at
from raylm.train.config import train_config
from raylm.train.continual import load_init, resolve
from raylm.train.runlog import read_metrics
from raylm.train.trainer import fit, run_dir
from tests.train.test_eval import checkpoint_at, run_config

LR = 3e-3


def wsd_config(prepared: dict, storage: Path, name: str, **kw) -> dict:
    """Causal LM on ``books`` alone: warmup 2, stable lr until step 4, decay over 4 to step 8."""
    return run_config(prepared, storage, name, objective="causal", **{
        "data": {"path": str(prepared["tokens"] / "books"), "window": 64, "prefetch": 1},
        "optim": {"lr": LR, "schedule": {"name": "wsd", "warmup_steps": 2, "decay_fraction": 0.5}},
        "eval": {"every": 0, "max_sequences": 16, "batch_size": 4}, **kw})


def continual_config(prepared: dict, storage: Path, name: str, init_from: str, **kw) -> dict:
    """From ``init_from`` on ``web``, replaying 25% of ``books``, at a lower re-warmed lr, FSDP2."""
    return wsd_config(prepared, storage, name, **{
        "data": {"path": str(prepared["tokens"] / "web"), "window": 64, "prefetch": 1},
        "optim": {"lr": 1e-3, "schedule": {"name": "cosine", "warmup_steps": 2}},
        "continual": {"init_from": init_from, "replay": 0.25},
        "eval": {"every": 4, "max_sequences": 16, "batch_size": 4}, "scale.strategy": "fsdp2", **kw})


@pytest.fixture(scope="module")
def runs(prepared, tmp_path_factory) -> dict:
    storage = tmp_path_factory.mktemp("continual")
    wsd = wsd_config(prepared, storage, "wsd")
    assert fit(train_config(wsd)).error is None
    wsd_run = run_dir(train_config(wsd))
    configs = {
        "wsd": wsd,
        "branch": wsd_config(prepared, storage, "branch",
                             continual={"init_from": str(checkpoint_at(wsd_run, 4)), "decay_steps": 4}),
        "cont": continual_config(prepared, storage, "cont", wsd_run, fail_at_step=6, max_failures=1),
    }
    for name in ("branch", "cont"):
        assert fit(train_config(configs[name])).error is None
    out = {}
    for name, d in configs.items():
        folder = run_dir(train_config(d))
        out[name] = {"run": folder, "rows": {r["step"]: r for r in read_metrics(folder)},
                     "config": json.loads((Path(folder) / "config.json").read_text())}
    return out


def test_continual_run_starts_from_the_checkpoint_weights(runs, prepared, tmp_path):
    """Its step-0 evaluation is ``raylm eval`` of the init run's latest checkpoint on the same
    sets: the old domain's held-out split (added as ``old_books``) and the new one's."""
    start = runs["cont"]["rows"][0]
    sets = {"old_books": prepared["tokens"] / "books" / "val", "web": prepared["tokens"] / "web" / "val"}
    out = tmp_path / "eval.json"
    assert main(["eval", runs["wsd"]["run"], "--data", *(f"{n}={f}" for n, f in sets.items()),
                 "--max-sequences", "16", "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["step"] == 8
    for name in sets:
        assert start[f"val/{name}/loss"] == pytest.approx(report["metrics"][f"val/{name}/loss"], rel=1e-6)
    assert start["val/old_books/loss"] < start["val/web/loss"]  # it was trained on books
    resolved = runs["cont"]["config"]["continual"]
    assert resolved["init_from"] == str(checkpoint_at(runs["wsd"]["run"], 8))  # the run folder's latest
    assert resolved["init_optimizer"] is False and resolved["forgetting_sets"] == ["old_books"]
    rows = runs["cont"]["rows"]
    assert [s for s in rows if "loss" in rows[s]] == list(range(1, 9))  # its own step count, from 0
    assert rows[1]["lr"] == pytest.approx(1e-3 / 3)  # its own schedule: re-warmed


def test_replay_share_is_realised(runs, prepared):
    d = runs["cont"]["config"]["data"]
    assert d["path"] == "" and d["sources"] == {"web": str(prepared["tokens"] / "web"),
                                                "old_books": str(prepared["tokens"] / "books")}
    assert d["mix"]["weights"] == {"web": 0.75, "old_books": 0.25}
    assert to_dict(resolve(train_config(runs["cont"]["config"]))) == runs["cont"]["config"]  # resolved: a fixed point
    for step, r in runs["cont"]["rows"].items():
        if step:  # 8 sequences per step and log window: 2 replayed
            assert r["mix/old_books"] == pytest.approx(0.25) and r["mix/web"] == pytest.approx(0.75)


def test_forgetting_is_reported(runs):
    rows = runs["cont"]["rows"]
    for step in (4, 8):
        diff = rows[step]["val/old_books/loss"] - rows[0]["val/old_books/loss"]
        assert rows[step]["forgetting/old_books/loss"] == pytest.approx(diff, rel=1e-12)
        assert rows[step]["forgetting/old_books/ppl_ratio"] == pytest.approx(
            rows[step]["val/old_books/ppl"] / rows[0]["val/old_books/ppl"])
        assert not any(k.startswith("forgetting/web") for k in rows[step])  # the new domain: its gain
    assert rows[8]["val/web/loss"] < rows[0]["val/web/loss"]  # it learns the new domain


def test_preempted_continual_run_resumes_from_its_own_checkpoint(runs):
    """Killed at step 6, it restarts from its own step-4 checkpoint, not from ``init_from``:
    steps 0-4 (the start evaluation with them) are logged once, step 5 twice; forgetting is still
    measured against its step 0 (``test_forgetting_is_reported``)."""
    run = Path(runs["cont"]["run"])
    assert (run / ".failed-at-6").exists()
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [logged.count(step) for step in range(6)] == [1, 1, 1, 1, 1, 2] and logged[-1] == 8


def test_wsd_branch_is_the_decay_of_an_uninterrupted_run(runs):
    """From the step-4 (stable) checkpoint of the WSD run, a 4-step decay on the run's own data
    goes on with its optimizer, RNG and data position: the lr and the losses of steps 5-8 are
    those of the run that decayed from step 4 without stopping."""
    wsd, branch = runs["wsd"]["rows"], runs["branch"]["rows"]
    assert sorted(branch) == [4, 5, 6, 7, 8] and "loss" not in branch[4]  # the start evaluation at step 4
    for step in range(5, 9):
        assert branch[step]["lr"] == wsd[step]["lr"] == pytest.approx(LR * (0.1 + 0.9 * (1 - (step - 5) / 4)))
        assert branch[step]["loss"] == wsd[step]["loss"]  # exactly, as a resume
    assert branch[8]["val/books/loss"] == pytest.approx(wsd[8]["val/books/loss"], rel=1e-6)
    assert branch[8]["forgetting/books/loss"] < 0  # the same data: the decay lowers its loss


def fake_checkpoint(folder: Path, cfg: dict, step: int) -> Path:
    """A checkpoint folder as far as ``resolve`` reads it: config, state, a model file."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(to_dict(train_config(cfg))))
    (folder / "state.json").write_text(json.dumps({"step": step, "data": {}, "spike_guard": {}}))
    (folder / "model.pt").write_bytes(b"")
    return folder


def test_branch_schedule_is_the_decay_the_run_would_have_had(prepared, tmp_path):
    """A branch at step 40 of a 100-step WSD run (decay from 80) with a 25-step decay: its lr
    at every step is the full WSD schedule's with the decay moved to step 40."""
    old = wsd_config(prepared, tmp_path, "long", steps=100, **{"optim.schedule": {
        "name": "wsd", "warmup_steps": 10, "decay_fraction": 0.2, "decay_shape": "sqrt", "min_lr_ratio": 0.0}})
    ckpt = fake_checkpoint(tmp_path / "long" / "checkpoint_000000", old, 40)
    new = resolve(train_config({**old, "continual": {"init_from": str(tmp_path / "long"), "decay_steps": 25}}))
    assert new.steps == 65 and new.continual.init_from == str(ckpt) and new.continual.init_optimizer is True
    full = ScheduleConfig(name="wsd", warmup_steps=10, total_steps=65, decay_fraction=25 / 65, decay_shape="sqrt",
                          min_lr_ratio=0.0)
    assert full.decay_start == 40
    for step in range(40, 65):
        assert lr_at(new.optim.schedule, LR, step) == lr_at(full, LR, step)
        assert lr_at(new.optim.schedule, LR, step) == pytest.approx(LR * (1 - ((step - 40) / 25) ** 0.5))
    with pytest.raises(ConfigError, match="outside the stable phase of its run \\(steps 10..80\\)"):
        resolve(train_config({**old, "continual": {"init_from": str(fake_checkpoint(tmp_path / "late", old, 90)),
                                                   "decay_steps": 10}}))
    with pytest.raises(ConfigError, match="optim.lr: 0.001 is not the stable lr 0.003"):
        resolve(train_config({**old, "optim": {**old["optim"], "lr": 1e-3},
                              "continual": {"init_from": str(ckpt), "decay_steps": 10}}))
    cosine = {**old, "optim": {"lr": LR, "schedule": {"name": "cosine"}}}
    with pytest.raises(ConfigError, match="needs a checkpoint of a wsd run; .* is of a cosine run"):
        resolve(train_config({**old, "continual": {"init_from": str(fake_checkpoint(tmp_path / "cos", cosine, 40)),
                                                   "decay_steps": 10}}))


def test_architecture_and_tokenizer_must_match_the_checkpoint(runs, prepared, tmp_path):
    cont = runs["cont"]["config"]
    base = {**cont, "continual": {"init_from": runs["wsd"]["run"]}}
    with pytest.raises(ConfigError, match=r"another architecture: model.d_model 32 \(checkpoint: 64\), "
                                          r"model.n_layers 3 \(checkpoint: 2\)"):
        resolve(train_config({**base, "model": {**cont["model"], "d_model": 32, "n_layers": 3}}))
    ok = resolve(train_config({**base, "model": {**cont["model"], "max_seq_len": 128, "attention": "eager"}}))
    assert ok.model.max_seq_len == 128  # the context length and the kernel are free
    other = tmp_path / "web"
    shutil.copytree(prepared["tokens"] / "web", other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "tokenizer_hash": "0123456789abcdef"}))
    with pytest.raises(ConfigError, match="tokenised with different tokenizers"):
        resolve(train_config({**base, "data": {"path": str(other)}}))
    with pytest.raises(ConfigError, match="continual: replay, decay_steps.* need init_from"):
        train_config({**cont, "continual": {"replay": 0.1}})
    with pytest.raises(ConfigError, match="only the weights are loaded"):
        train_config({**base, "continual": {"init_from": "x", "init_optimizer": True},
                      "scale": {**cont["scale"], "strategy": "deepspeed"}, "spike_guard": {"enabled": False}})


def test_init_optimizer_loads_the_moments_and_keeps_this_runs_settings(runs):
    """``init_optimizer: true``: Adam's state is the checkpoint's, weight decay this run's."""
    from raylm.checkpoint import optimizer_state_dict
    from raylm.model import Transformer
    from raylm.optim.optimizers import build_optimizer

    cfg = train_config({**runs["cont"]["config"], "optim": {"lr": 1e-3, "weight_decay": 0.05},
                        "continual": {"init_from": str(checkpoint_at(runs["wsd"]["run"], 8)), "init_optimizer": True}})
    model = Transformer(cfg.model)
    optimizer = build_optimizer(model, cfg.optim, {})
    assert load_init(cfg, model, optimizer, 0).step == 0
    saved = optimizer_state_dict(cfg.continual.init_from)
    moments = optimizer.state_dict()["state"]
    assert len(moments) == len(saved["state"]) > 0
    name = "layers.0.attention.wq.weight"
    param = next(p for g in optimizer.param_groups for p, n in zip(g["params"], g["param_names"]) if n == name)
    torch.testing.assert_close(optimizer.state[param]["exp_avg_sq"], saved["state"][name]["exp_avg_sq"], rtol=0, atol=0)
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.05, 0.0}
