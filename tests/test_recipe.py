"""The Korean recipe (jobs/configs/recipe_ko.yaml) end to end, shortened: curate -> tokenizer
against an English-only one -> prepare with a held-out split -> train -> eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raylm.cli import main
from raylm.config import ConfigError, load
from raylm.recipe import RecipeConfig, run_recipe

RECIPE = Path(__file__).parents[1] / "jobs/configs/recipe_ko.yaml"
SHORT = ["train.steps=6", "train.eval.every=0", "train.scale.num_workers=1", "train.model.n_layers=2",
         "train.log_every=2", f"inputs=[{RECIPE.parents[2] / 'data/sample'}]",
         f"baseline_tokenizers=[{{name: english_only, inputs: [{RECIPE.parents[2] / 'data/sample'}], "
         "curate: {steps: [normalize, {langid: {keep: [en]}}]}}]"]


def test_korean_recipe_end_to_end(ray_session, tmp_path):
    report = run_recipe(load(RecipeConfig, RECIPE, SHORT), str(tmp_path / "out"), quiet=True)
    assert set(report["curate"]["kept_languages"]) == {"ko"} and report["curate"]["kept"] >= 15
    fert = report["tokenizer"]["fertility"]["ko"]
    english = report["tokenizer"]["baseline_fertility"]["english_only"]["ko"]
    assert english["docs"] == fert["docs"] > 0 and english["chars"] == fert["chars"]  # the same documents
    # Hangul the English tokenizer never saw falls back to UTF-8 bytes: ~3 tokens a syllable
    assert fert["tokens_per_char"] < 1.0 < 2.0 < english["tokens_per_char"]
    assert report["tokenizer"]["tokens_per_char_vs_baselines"]["english_only"]["ko"] > 3
    assert report["prepare"]["val"]["documents"] >= 1 and report["prepare"]["documents"] >= 10
    train = report["train"]
    assert train["steps"] == 6 and train["last_loss"] < train["first_loss"]
    page = open(train["report"], encoding="utf-8").read()  # the run's report.html, per-language plot in it
    assert "6 of 6" in page and 'alt="held_out_languages"' in page
    ev = report["eval"]
    assert ev["step"] == 6 and ev["metrics"]["val/lang/ko/tokens"] == ev["metrics"]["val/corpus/tokens"] > 0
    assert 0 < ev["bits_per_char"] < 20
    assert json.loads((tmp_path / "out" / "recipe.json").read_text())["eval"] == ev


def test_recipe_config_errors_name_the_stage(tmp_path, capsys):
    with pytest.raises(ConfigError, match="prepare: tokenizer and sources are set by the recipe"):
        load(RecipeConfig, RECIPE, ["prepare.tokenizer=x.model"])
    with pytest.raises(ConfigError, match=r"train.*optim.*lrr"):
        load(RecipeConfig, RECIPE, ["train.optim.lrr=1"])
    assert main(["recipe", "-c", str(RECIPE), "-o", str(tmp_path), "--set", "tokenizer.vocab_size=10"]) == 2
    assert "vocab_size: 10 is too small" in capsys.readouterr().err
