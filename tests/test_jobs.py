"""The job configs shipped for ``ray job submit`` load and validate."""

from pathlib import Path

import pytest

from raylm.config import load
from raylm.data.pipeline import CurateConfig

ALL = sorted((Path(__file__).resolve().parent.parent / "jobs" / "configs").glob("*.yaml"))
CONFIGS = [p for p in ALL if p.name in ("curate.yaml", "dedup.yaml")]
TRAIN_CONFIGS = [p for p in ALL if p.name.startswith(("train", "pretrain"))]


def test_every_job_config_is_checked():
    assert set(ALL) == {*CONFIGS, *TRAIN_CONFIGS, *(p for p in ALL if p.name in ("prepare.yaml", "sweep.yaml"))}


def test_prepare_and_sweep_configs_load():
    from raylm.data.prepare import PrepareConfig
    from raylm.tune.sweep import load_sweep

    root = ALL[0].parent
    assert load(PrepareConfig, root / "prepare.yaml").sources
    sweep, base = load_sweep(root / "sweep.yaml")
    assert sweep.search and base["scale"]["use_gpu"] is True


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


@pytest.mark.parametrize("module", ["curate", "prepare", "pretrain", "sweep"])
def test_job_entrypoints_report_bad_input(module, capsys, tmp_path):
    """``python -m jobs.NAME`` with a missing config prints one line and exits 2."""
    import runpy
    import sys

    argv = ["-c", str(tmp_path / "missing.yaml")] + {"curate": ["x", "-o", "y"], "prepare": ["-o", "y"]}.get(module, [])
    old, sys.argv = sys.argv, [module, *argv]
    try:
        with pytest.raises(SystemExit) as exit_:
            runpy.run_module(f"jobs.{module}", run_name="__main__")
    finally:
        sys.argv = old
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "missing.yaml" in err and "Traceback" not in err
