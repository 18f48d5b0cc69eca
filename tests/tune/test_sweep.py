"""A real Ray Tune sweep of real tiny μP runs (Train V2: a Tune function fits a TorchTrainer
with TuneReportCallback), its results table and best config, and the transfer of the best
values to a wider, deeper run through ``raylm train --from-sweep``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from raylm.cli import main
from raylm.config import ConfigError
from raylm.train.config import train_config
from raylm.tune.sweep import load_sweep, run_sweep, transfer
from raylm.tune.table import TrialTable
from tests.train.sample import config


@pytest.fixture
def sweep_yaml(shards, tmp_path) -> Path:
    base = config(shards, tmp_path / "unused", "base", 1)
    base.update(steps=6, log_every=1, checkpoint={"every": 0, "keep": 1}, tensorboard=False)
    base["model"].update(d_model=64, parametrization="mup", base_width=64)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(base))
    sweep = {
        "name": "tiny", "storage_path": str(tmp_path / "sweeps"), "train_config": "train.yaml",
        "search": {"optim.lr": {"grid": [1e-4, 3e-3]}, "model.output_mult": {"choice": [1.0]}},
        "max_concurrent_trials": 2, "scheduler": "asha", "grace_period": 3, "scope": "last",
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_sweep_writes_results_and_best_and_transfers(ray_session, sweep_yaml, tmp_path, capsys):
    sweep, base = load_sweep(sweep_yaml)
    best = run_sweep(sweep, base, callbacks=[TrialTable(list(sweep.search), sweep.metric, sweep.mode, total=2)])
    table = capsys.readouterr().err.splitlines()  # raylm tune's console: a row per trial as it finishes
    head = table[0].split()
    assert head[0] == "trial" and set(head[1:3]) == {"optim.lr", "model.output_mult"}
    rows = [line.split() for line in table[1:] if line.endswith(" done")]
    assert len(rows) == 2 and sorted(float(r[head.index("optim.lr")]) for r in rows) == [1e-4, 3e-3]
    root = tmp_path / "sweeps" / "tiny"
    rows = list(csv.DictReader(open(root / "results.csv")))
    assert sorted(float(r["optim.lr"]) for r in rows) == [1e-4, 3e-3]
    assert all(not r["error"] for r in rows)
    by_lr = {float(r["optim.lr"]): float(r["final_loss"]) for r in rows}
    assert best["values"]["optim.lr"] == min(by_lr, key=by_lr.get) == 3e-3  # 6 steps at 1e-4 barely move
    assert json.loads((root / "best.json").read_text()) == best
    assert best["model"] == {"d_model": 64, "n_layers": 2, "parametrization": "mup", "base_width": 64}

    big = train_config({**base, "name": "big", "storage_path": str(tmp_path / "runs"),
                        "model": {**base["model"], "d_model": 256, "n_layers": 3}})
    moved = transfer(root / "best.json", big)
    assert moved.optim.lr == 3e-3 and moved.model.base_width == 64 and moved.model.width_mult == 4
    assert moved.model.n_layers == 3 and moved.model.parametrization == "mup"

    # raylm train --from-sweep: the best values over the YAML's and --set's (the run itself: the trials)
    train_yaml = tmp_path / "train.yaml"
    code = main(["train", "-c", str(train_yaml), "--from-sweep", str(root / "best.json"), "--print-config",
                 "--set", "model.d_model=128", "--set", "model.n_layers=3", "--set", "optim.lr=1"])
    assert code == 0
    out, err = capsys.readouterr()
    cfg = yaml.safe_load(out)  # YAML alone on stdout: a file to train with later
    assert "d_model 128 (base 64)" in err
    assert cfg["optim"]["lr"] == 3e-3 and cfg["model"]["base_width"] == 64 and cfg["model"]["d_model"] == 128
    assert cfg["model"]["n_layers"] == 3 and train_config(cfg).model.width_mult == 2


def test_bad_sweep_is_one_clear_error(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"search": {"optim.lr": {"range": [1, 2]}}, "train": {"data": {"path": "x"}}}))
    with pytest.raises(ConfigError, match=r"search.optim.lr: expected one of"):
        load_sweep(path)
