"""``raylm recipe``: one YAML, the whole way from raw text to an evaluated model.

A recipe names its raw inputs and the config of every stage, and runs them in order, each
stage reading what the one before wrote under ``OUT/``:

1. ``curate`` (``raylm curate``) the inputs -> ``OUT/curated``;
2. for every ``baseline_tokenizers`` entry, curate its inputs and train its tokenizer ->
   ``OUT/baselines/<name>/`` (e.g. an English-only tokenizer for a Korean corpus);
3. ``tokenizer`` (``raylm tokenizer train``) on the curated text -> ``OUT/tokenizer/sp.model``,
   with its fertility and every baseline's measured on the same held-out documents;
4. ``prepare`` (``raylm prepare``) -> ``OUT/tokens/<source>`` with its ``val/`` split;
5. ``train`` (``raylm train``) a model on the training split -> ``OUT/train/<name>``;
6. ``eval`` (``raylm eval``) the last checkpoint on the held-out split.

``OUT/recipe.json`` gathers the figures a person asks for first: documents kept, fertility
against the baselines, tokens, the loss curve's ends, held-out loss per language and bits per
character (comparable across tokenizers, unlike per-token loss). The stage configs are the
stages' own (``CurateConfig``, ``TokenizerConfig``, ``PrepareConfig``, ``TrainConfig``); the
recipe fills in the paths that chain them, so a recipe never names ``OUT``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

from raylm import storage
from raylm.cluster import RayConfig
from raylm.config import ConfigError, from_dict, to_dict
from raylm.curate.pipeline import CurateConfig

SOURCE = "corpus"
"""The name of the recipe's one token-shard source."""


@dataclasses.dataclass(kw_only=True)
class BaselineTokenizer:
    name: str
    """Names the baseline in the report (``baseline_fertility.<name>``)."""
    inputs: list[str]
    """Raw text it is trained on (curated first with ``curate``)."""
    curate: CurateConfig = dataclasses.field(default_factory=CurateConfig)
    tokenizer: dict[str, Any] = dataclasses.field(default_factory=dict)
    """``TokenizerConfig`` fields; unset ones are the recipe tokenizer's, so the comparison
    differs only in the text (same vocabulary size and algorithm)."""


@dataclasses.dataclass(kw_only=True)
class RecipeConfig:
    inputs: list[str]
    """Raw text: JSONL/Parquet/text files or folders, as ``raylm curate`` takes them."""
    curate: CurateConfig = dataclasses.field(default_factory=CurateConfig)
    """Stage 1: ``raylm curate``'s config (steps and their options)."""
    tokenizer: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Stage 3: ``TokenizerConfig`` fields."""
    baseline_tokenizers: list[BaselineTokenizer] = dataclasses.field(default_factory=list)
    """Stage 2: tokenizers trained on other text whose fertility on this corpus is reported."""
    prepare: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Stage 4: ``PrepareConfig`` fields but ``tokenizer`` and ``sources`` (set by the recipe);
    give it ``val: {fraction: ...}`` for the held-out split that stage 6 evaluates."""
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Stage 5: ``TrainConfig`` fields (``model.flavor`` allowed); the recipe sets
    ``data.path``, ``storage_path`` and ``model.vocab_size``."""
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    """The Ray every stage joins or starts (a stage's own ``ray`` section is not used)."""

    def validate(self) -> None:
        if not self.inputs:
            raise ConfigError("inputs: at least one input path is required")
        for i, b in enumerate(self.baseline_tokenizers):
            if not b.inputs:
                raise ConfigError(f"baseline_tokenizers[{i}].inputs: at least one input path is required")
        names = [b.name for b in self.baseline_tokenizers]
        if len(set(names)) != len(names):
            raise ConfigError(f"baseline_tokenizers: names must differ, got {names}")
        if "tokenizer" in self.prepare or "sources" in self.prepare:
            raise ConfigError("prepare: tokenizer and sources are set by the recipe; leave them out")
        self.tokenizer_config()
        self.prepare_config("tokenizer.model")
        self.train_config("tokens", "train", 1000)

    def tokenizer_config(self, overrides: dict[str, Any] | None = None):
        from raylm.data.tokenizer import TokenizerConfig

        return from_dict(TokenizerConfig, {**self.tokenizer, **(overrides or {})}, "tokenizer")

    def prepare_config(self, tokenizer: str, curated: str = "curated"):
        from raylm.data.prepare import PrepareConfig

        return from_dict(PrepareConfig, {**self.prepare, "tokenizer": tokenizer, "sources": {SOURCE: [curated]},
                                         "ray": to_dict(self.ray)}, "prepare")

    def train_config(self, tokens: str, storage: str, vocab_size: int):
        from raylm.config import merge
        from raylm.train.config import train_config

        fill = {"data": {"path": tokens}, "storage_path": storage, "model": {"vocab_size": vocab_size}}
        return train_config(merge(self.train, fill), "train")


def _stage(name: str, quiet: bool) -> float:
    if not quiet:
        print(f"\n== {name}", flush=True)
    return time.perf_counter()


def run_recipe(cfg: RecipeConfig, out: str, quiet: bool = False) -> dict[str, Any]:
    """Run every stage of ``cfg`` into ``out`` (an existing stage output is replaced, except
    that an unfinished curate run resumes); returns the report written to ``out/recipe.json``."""
    from raylm.cluster import ensure_ray
    from raylm.curate.pipeline import run as curate
    from raylm.data.prepare import prepare
    from raylm.data.tokenizer import train_tokenizer
    from raylm.infer.evaluate import evaluate_checkpoint
    from raylm.train.report import run_report
    from raylm.train.runlog import read_metrics
    from raylm.train.trainer import fit, run_dir

    cfg.validate()
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    ensure_ray(cfg.ray, storage.use_endpoint(cfg.curate.storage_endpoint))  # before Ray starts: its workers inherit it
    report: dict[str, Any] = {"config": to_dict(cfg), "seconds": {}}

    t = _stage("curate", quiet)
    stats = curate(dataclasses.replace(cfg.curate, ray=cfg.ray), cfg.inputs, str(root / "curated"),
                   overwrite=_finished(root / "curated"), quiet=quiet)
    report["curate"] = {k: stats[k] for k in ("documents_in", "kept", "kept_bytes", "kept_languages")}
    report["seconds"]["curate"] = round(time.perf_counter() - t, 3)

    t = _stage("baseline tokenizers", quiet)
    baselines = {}
    for b in cfg.baseline_tokenizers:
        folder = root / "baselines" / b.name
        curate(dataclasses.replace(b.curate, ray=cfg.ray), b.inputs, str(folder / "curated"),
               overwrite=_finished(folder / "curated"), quiet=True)
        tok = train_tokenizer([str(folder / "curated")], str(folder / "sp"), cfg.tokenizer_config(b.tokenizer))
        baselines[b.name] = tok["model"]
    report["seconds"]["baseline_tokenizers"] = round(time.perf_counter() - t, 3)

    t = _stage("tokenizer", quiet)
    tok = train_tokenizer([str(root / "curated")], str(root / "tokenizer" / "sp"), cfg.tokenizer_config(),
                          baselines=baselines)
    report["tokenizer"] = {"vocab_size": tok["vocab_size"], "heldout_docs": tok["heldout_docs_evaluated"],
                           "fertility": tok["fertility"], "baseline_fertility": tok["baseline_fertility"],
                           "tokens_per_char_vs_baselines": _ratios(tok)}
    report["seconds"]["tokenizer"] = round(time.perf_counter() - t, 3)

    t = _stage("prepare", quiet)
    summary = prepare(cfg.prepare_config(tok["model"], str(root / "curated")), str(root / "tokens"), overwrite=True)
    report["prepare"] = summary["sources"][SOURCE]
    report["seconds"]["prepare"] = round(time.perf_counter() - t, 3)

    t = _stage("train", quiet)
    tokens = str(root / "tokens" / SOURCE)
    train_cfg = cfg.train_config(tokens, str(root / "train"), tok["vocab_size"])
    if quiet:
        result = fit(train_cfg)
    else:
        from raylm.train.progress import TrainProgress

        with TrainProgress(train_cfg) as progress:
            result = fit(train_cfg, callbacks=progress.callbacks)
    if result.error is not None:
        raise RuntimeError(f"recipe: training failed: {result.error}")
    run_report(train_cfg)
    rows = [r for r in read_metrics(run_dir(train_cfg)) if "loss" in r]
    report["train"] = {"name": train_cfg.name, "steps": train_cfg.steps, "params": train_cfg.model.num_params(),
                       "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"],
                       "run": run_dir(train_cfg), "report": f"{run_dir(train_cfg)}/report.html"}
    report["seconds"]["train"] = round(time.perf_counter() - t, 3)

    t = _stage("eval", quiet)
    val = Path(tokens) / "val"
    if val.is_dir():
        ev = evaluate_checkpoint(run_dir(train_cfg), [f"{SOURCE}={val}"], max_sequences=0)
        report["eval"] = {"step": ev["step"], "metrics": ev["metrics"],
                          "bits_per_char": _bits_per_char(ev["metrics"], val, tok["model"])}
    report["seconds"]["eval"] = round(time.perf_counter() - t, 3)
    (root / "recipe.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return report


def _finished(curated: Path) -> bool:
    """A finished curate output is replaced; an unfinished one (no stats.json) resumes."""
    return (curated / "stats.json").is_file()


def _ratios(tok: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per baseline and language: its tokens per character over ours (> 1: ours is leaner)."""
    out: dict[str, dict[str, float]] = {}
    for name, fert in tok["baseline_fertility"].items():
        out[name] = {lang: round(f["tokens_per_char"] / tok["fertility"][lang]["tokens_per_char"], 4)
                     for lang, f in fert.items() if f["tokens_per_char"] and tok["fertility"][lang]["tokens_per_char"]}
    return out


def _bits_per_char(metrics: dict[str, float], val: Path, tokenizer: str) -> float | None:
    """Held-out bits per character: the summed loss (nats) over ln 2 and over the characters of
    the held-out text, which the lossless tokenizer gives back by decoding the shards."""
    from raylm.data.tokenizer import load_tokenizer
    from raylm.train.heldout import load_set

    loss, n = metrics.get(f"val/{SOURCE}/loss"), metrics.get(f"val/{SOURCE}/tokens")
    if loss is None:
        return None
    sp, s = load_tokenizer(tokenizer), load_set(SOURCE, str(val))
    chars = sum(len(sp.decode(row[row != s.pad_id].tolist())) for row in s.tokens)
    return round(loss * n / math.log(2) / chars, 4) if chars else None
