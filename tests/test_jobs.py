"""The job configs shipped for ``ray job submit`` load and validate."""

from pathlib import Path

import pytest

from raylm.config import load
from raylm.data.pipeline import CurateConfig

ALL = sorted((Path(__file__).resolve().parent.parent / "jobs" / "configs").glob("*.yaml"))
CONFIGS = [p for p in ALL if not p.name.startswith("train")]
TRAIN_CONFIGS = [p for p in ALL if p.name.startswith("train")]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_job_config_loads(path):
    cfg = load(CurateConfig, path)
    names = [name for name, _ in cfg.parsed_steps()]
    assert names and "minhash_dedup" in names


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=[p.name for p in TRAIN_CONFIGS])
def test_train_config_loads(path):
    from raylm.train.config import load_train_config

    cfg = load_train_config(path)
    assert cfg.model.n_layers >= 1 and cfg.global_batch_size >= 1 and (cfg.data.path or cfg.data.sources)


def test_job_entrypoint_reports_bad_input(capsys, tmp_path):
    from jobs.curate import main

    assert main(["curate", str(tmp_path / "missing"), "-o", str(tmp_path / "o")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
