"""``resolve_run``: the driver's one pass from a config to the run it means (``raylm.train.run``).

Every check of the run against its data happens here, before any worker starts, each as a
function of what was resolved, with the manifests read once.
"""

from __future__ import annotations

from pathlib import Path

from raylm import storage
from raylm.config import ConfigError
from raylm.train import continual
from raylm.train.config import TrainConfig
from raylm.train.evaluate import check_eval_sets, eval_sets
from raylm.train.objective import check_objective
from raylm.train.run import (
    Manifests,
    ResolvedRun,
    absolute,
    absolute_paths,
    check_tokenizers,
    training_folders,
    with_total_steps,
)


def resolve_run(cfg: TrainConfig) -> ResolvedRun:
    """The run ``cfg`` means, checked against its data (see the module docstring)."""
    manifests = Manifests()
    cfg = with_total_steps(continual.resolve(absolute_paths(cfg), manifests))
    check_objective(cfg, manifests)
    sets = eval_sets(cfg, manifests) if cfg.eval.enabled else {}
    check_eval_sets(cfg, manifests)
    run = ResolvedRun(cfg=cfg, eval_sets=sets)
    _data_facts(run, manifests)
    _check_samples(run)
    return run


def _check_samples(run: ResolvedRun) -> None:
    """Generation samples need a tokenizer: ``eval.samples.tokenizer`` or the training data's."""
    s = run.cfg.eval.samples
    if not s.prompts and not s.infill:
        return
    path = s.tokenizer or run.tokenizer
    if path is None:
        raise ConfigError("eval.samples: cannot find the training data's tokenizer (no manifest of "
                          f"{', '.join(training_folders(run.cfg).values())} names one); set eval.samples.tokenizer")
    if not storage.is_remote(path) and not Path(path).is_file():
        key = "eval.samples.tokenizer" if s.tokenizer else "the tokenizer named by the training data's manifest"
        raise ConfigError(f"eval.samples: {key} {path} is not a file")


def _data_facts(run: ResolvedRun, manifests: Manifests) -> None:
    """Fill the tokenizer and sequence length of ``run`` from its training folders' manifests,
    checking that they agree with each other (``continual.resolve`` checked the old data's)
    and with ``model.max_seq_len``."""
    cfg = run.cfg
    folders = list(training_folders(cfg).items())
    run.tokenizer_hash = check_tokenizers([f for _, f in folders], manifests, "data: the training folders")
    for key, folder in folders:
        m = manifests.get(folder)
        if m is None:
            continue
        prepared = m.get("config") or {}
        if run.tokenizer is None and prepared.get("tokenizer"):
            # as given to prepare, which may be relative: to the driver's working folder, as checked
            run.tokenizer, run.add_bos = absolute(prepared["tokenizer"]), bool(prepared.get("add_bos", False))
        seq_len = m.get("seq_len")
        if seq_len is not None and int(seq_len) > cfg.model.max_seq_len:
            raise ConfigError(f"model.max_seq_len: {cfg.model.max_seq_len} is shorter than the sequences of {key} "
                              f"{folder} ({seq_len} tokens, its manifest's seq_len)")
        if seq_len is not None:
            run.seq_len = int(seq_len) if run.seq_len is None else max(run.seq_len, int(seq_len))
