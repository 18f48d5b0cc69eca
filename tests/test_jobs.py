"""The job configs shipped for ``ray job submit`` load and validate, the entrypoints report bad
input, and a job submitted to a real local head node with token authentication runs."""

import gzip
import json
import subprocess
from pathlib import Path

import pytest

from raylm.config import load
from raylm.curate.pipeline import CurateConfig
from tests.local_head import RAY, start_head

ALL = sorted((Path(__file__).resolve().parent.parent / "jobs" / "configs").glob("*.yaml"))
CONFIGS = [p for p in ALL if p.name in ("curate.yaml", "dedup.yaml")]
TRAIN_CONFIGS = [p for p in ALL if p.name.startswith(("train", "pretrain", "continual"))]
PLAN_CONFIGS = [p for p in ALL if p.name.startswith("plan")]
RECIPE_CONFIGS = [p for p in ALL if p.name.startswith("recipe")]


def test_every_job_config_is_checked():
    assert set(ALL) == {*CONFIGS, *TRAIN_CONFIGS, *PLAN_CONFIGS, *RECIPE_CONFIGS,
                        *(p for p in ALL if p.name in ("prepare.yaml", "sweep.yaml"))}


@pytest.mark.parametrize("path", RECIPE_CONFIGS, ids=[p.name for p in RECIPE_CONFIGS])
def test_recipe_config_loads(path):
    from raylm.recipe import RecipeConfig

    cfg = load(RecipeConfig, path)  # every stage's config is validated with its paths filled in
    assert cfg.inputs and cfg.train_config("tokens", "runs", 2000).steps >= 1


@pytest.mark.parametrize("path", PLAN_CONFIGS, ids=[p.name for p in PLAN_CONFIGS])
def test_plan_config_loads_and_plans(path):
    from raylm.config import load_yaml
    from raylm.plan import plan, plan_config

    report = plan(plan_config(load_yaml(path), str(path)))
    assert report["gpu_hours"] > 0


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


@pytest.mark.parametrize("module", ["curate", "prepare", "pretrain", "sweep", "recipe"])
def test_job_entrypoints_report_bad_input(module, capsys, tmp_path):
    """``python -m jobs.NAME`` with a missing config prints one line and exits 2."""
    import runpy
    import sys

    argv = ["-c", str(tmp_path / "missing.yaml")] + {"curate": ["x", "-o", "y"], "prepare": ["-o", "y"],
                                                      "recipe": ["-o", "y"]}.get(module, [])
    old, sys.argv = sys.argv, [module, *argv]
    try:
        with pytest.raises(SystemExit) as exit_:
            runpy.run_module(f"jobs.{module}", run_name="__main__")
    finally:
        sys.argv = old
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "missing.yaml" in err and "Traceback" not in err


# --- a real local cluster: ray start --head with token authentication, then ray job submit ---

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def head():
    """A local Ray head on free ports with ``RAY_AUTH_MODE=token``; yields (address, env)."""
    with start_head(["--num-cpus=3", '--resources={"data_cpu": 3}']) as h:
        yield h.address, h.env


def test_ray_job_submit_to_a_token_authenticated_head(head, tmp_path):
    """The job API refuses a wrong token; a submitted training job runs on the cluster."""
    from tests.train.sample import SAMPLE

    address, env = head
    wrong = subprocess.run([str(RAY), "job", "list", "--address", address], capture_output=True, text=True,
                           env={**env, "RAY_AUTH_TOKEN": "not-the-token"})
    assert wrong.returncode != 0

    docs = tmp_path / "docs.jsonl"
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        docs.write_text("".join(next(f) for _ in range(12)))
    out = tmp_path / "curated"
    submit = subprocess.run(
        [str(RAY), "job", "submit", "--address", address, "--working-dir", ".", "--",
         "python", "-m", "jobs.curate", "-c", "jobs/configs/curate.yaml", str(docs), "-o", str(out),
         "--set", "steps=[normalize, exact_dedup]", "--set", "report=false"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    logs = submit.stdout + submit.stderr
    assert submit.returncode == 0, logs[-4000:]
    assert "succeeded" in logs and "wrote " in logs  # the job's own output, followed by the CLI
    stats = json.loads((out / "stats.json").read_text())
    assert stats["documents_in"] == 12 and stats["conservation_ok"]
    assert stats["config"]["ray"]["resources"] == {"data_cpu": 1}
