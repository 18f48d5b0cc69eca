"""Continual pretraining: a new run that starts from another run's checkpoint (``continual:``).

The recipe of Ibrahim et al. 2024 ("Simple and Scalable Strategies to Continually Pre-train
Large Language Models"): load the old weights, re-warm and re-decay the learning rate on the
new data, and replay a small share of the old data against forgetting. Or, from a
stable-phase checkpoint of a warmup-stable-decay run, branch off only the decay (Hägele et
al. 2024: any stable checkpoint can be cooled down into a finished model), possibly on a new
mix. Every continual run evaluates the old run's held-out splits at its start and at every
evaluation, and reports forgetting (``ContinualConfig.forgetting_sets``).

Two halves:

* ``resolve`` (the driver, in ``raylm.train.resolve.resolve_run``): finds the checkpoint,
  checks the architecture against it, and rewrites the config into the run it means (replay as
  ``old_<name>`` sources of ``data.mix``, a branch's ``steps`` and schedule, the old held-out
  splits as eval sets, ``eval.at_start``, the forgetting sets), each change a
  ``dataclasses.replace`` of the typed config. The run's ``config.json`` is this resolved
  config; resolving it again changes nothing.
* ``load_init`` (every worker, in ``raylm.train.loop``): only when Ray Train has no checkpoint
  of this run to restore, so a preempted continual run resumes from its own latest
  checkpoint, never from ``init_from`` again. The state is loaded as a resume loads it
  (``raylm.train.strategy.state.load_state``: re-sharded for the model as it is parallelised
  now, DDP, FSDP2, tensor parallel, from any world size); under DeepSpeed the weights are set
  before ``deepspeed.initialize``, which partitions them.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raylm import storage
from raylm.checkpoint import DS_TAG, CheckpointError, find_checkpoint, read_config, read_state
from raylm.config import ConfigError, to_dict
from raylm.data.mixing import MixConfig
from raylm.model import ModelConfig
from raylm.train.config import TrainConfig, train_config
from raylm.train.evaluate import eval_sets, val_split
from raylm.train.run import Manifests, absolute_paths, check_tokenizers, norm_path

# Model fields a continual run may change: kernels, training-only terms, the init (overwritten)
# and the context length (the rotary tables are not weights).
FREE_MODEL_KEYS = ("attention", "z_loss", "label_smoothing", "init_std", "max_seq_len")


@dataclasses.dataclass(frozen=True)
class Start:
    """Where a run that starts from ``init_from`` begins."""

    step: int
    position: Any = None
    """The data position to go on from (a WSD branch on the same data), else None."""
    spike_guard: dict[str, Any] | None = None


def architecture(model: ModelConfig) -> dict[str, Any]:
    """The fields of ``model`` that the weights depend on, defaults resolved."""
    d = {k: v for k, v in to_dict(model).items() if k not in FREE_MODEL_KEYS}
    d["n_kv_heads"], d["ffn_hidden"] = model.kv_heads, model.ffn_dim
    d.pop("multiple_of")  # only through ffn_hidden
    if d["parametrization"] == "mup" and d["base_width"] is None:
        d["base_width"] = model.d_model
    return d


def check_architecture(model: ModelConfig, old: ModelConfig, where: str) -> None:
    """ConfigError naming every ``model.*`` key that differs from the checkpoint's."""
    new, was = architecture(model), architecture(old)
    diff = [f"model.{k} {new.get(k)!r} (checkpoint: {was.get(k)!r})" for k in sorted(set(new) | set(was))
            if new.get(k) != was.get(k)]
    if diff:
        raise ConfigError(f"continual.init_from: {where} is another architecture: " + ", ".join(diff))


def _data_folders(cfg: TrainConfig, manifests: Manifests) -> dict[str, str]:
    """Name -> folder of a run's training data (``data.path`` named by its manifest's source)."""
    if cfg.data.sources:
        return dict(cfg.data.sources)
    sources = list((manifests.get(cfg.data.path) or {}).get("sources", {}))
    return {sources[0] if len(sources) == 1 else cfg.data.path.rstrip("/").rsplit("/", 1)[-1]: cfg.data.path}


def trained_shares(old: TrainConfig, state: Mapping[str, Any], manifests: Manifests) -> dict[str, float]:
    """Share of the old run's training sequences that came from each of its sources: the
    mixer's realised counts in its checkpoint (so a curriculum counts as it was trained)."""
    pos = state.get("data") or {}
    if pos.get("kind") != "mix":
        return dict.fromkeys(_data_folders(old, manifests), 1.0)
    m, sizes = pos["mixer"], pos["sizes"]
    counts = {n: m["epoch"][n] * sizes[n] + m["position"][n] for n in m["position"]}
    total = sum(counts.values())
    return {n: c / total for n, c in counts.items() if c > 0}


def same_data(cfg: TrainConfig, old: TrainConfig) -> bool:
    """Does the run read the checkpoint run's data, in its order (a branch then goes on from
    the checkpoint's data position)?"""
    return to_dict(cfg.data) == to_dict(absolute_paths(old).data)


def _with_replay(cfg: TrainConfig, old: TrainConfig, state: Mapping[str, Any], manifests: Manifests) -> TrainConfig:
    share = cfg.continual.replay
    folders = _data_folders(old, manifests)
    replay = {f"old_{n}": w for n, w in trained_shares(old, state, manifests).items()}
    new = _data_folders(cfg, manifests)
    clash = sorted(set(replay) & set(new))
    if clash:
        raise ConfigError(f"continual.replay: data.sources already names {clash}, the names of the replayed "
                          "sources; rename them")
    for name in replay:
        folder = folders[name.removeprefix("old_")]
        if "://" not in folder and not os.path.exists(folder):
            raise ConfigError(f"continual.replay: the checkpoint run's data {folder} ({name}) is not there")
    mix = cfg.data.mix or MixConfig(weights=dict.fromkeys(new, 1.0))

    def scaled(weights: Mapping[str, float]) -> dict[str, float]:
        total = sum(weights.values())
        return {**{k: (1 - share) * v / total for k, v in weights.items()}, **{k: share * w for k, w in replay.items()}}

    mix = dataclasses.replace(mix, weights=scaled(mix.weights), schedule=[(step, scaled(w)) for step, w in mix.schedule])
    data = dataclasses.replace(cfg.data, path="", mix=mix,
                               sources={**new, **{n: folders[n.removeprefix("old_")] for n in replay}})
    # replay is now part of data.mix: resolving again adds nothing
    return dataclasses.replace(cfg, data=data, continual=dataclasses.replace(cfg.continual, replay=0.0))


def _branch(cfg: TrainConfig, old: TrainConfig, step: int, where: str) -> TrainConfig:
    """A WSD branch: ``steps`` and the schedule of a decay of ``decay_steps`` from ``step``."""
    sched = dataclasses.replace(old.optim.schedule, total_steps=old.optim.schedule.total_steps or old.steps)
    if sched.name != "wsd":
        raise ConfigError(f"continual.decay_steps: a WSD branch needs a checkpoint of a wsd run; {where} is "
                          f"of a {sched.name} run")
    if not sched.warmup_steps <= step <= sched.decay_start:
        raise ConfigError(f"continual.decay_steps: {where} is at step {step}, outside the stable phase of its "
                          f"run (steps {sched.warmup_steps}..{sched.decay_start})")
    if cfg.optim.schedule.name != "wsd":
        raise ConfigError(f"optim.schedule.name: a WSD branch decays a wsd schedule, not {cfg.optim.schedule.name}; "
                          "its decay_shape and min_lr_ratio shape the branch's decay")
    if cfg.optim.lr != old.optim.lr:
        raise ConfigError(f"optim.lr: {cfg.optim.lr:g} is not the stable lr {old.optim.lr:g} of {where}'s run, "
                          "which a WSD branch decays from")
    n = cfg.continual.decay_steps
    schedule = dataclasses.replace(cfg.optim.schedule, warmup_steps=sched.warmup_steps, total_steps=step + n,
                                   decay_fraction=n / (step + n))
    out = dataclasses.replace(cfg, steps=step + n, optim=dataclasses.replace(cfg.optim, schedule=schedule))
    if same_data(out, old) and cfg.global_batch_size != old.global_batch_size:  # after replay, as the workers see it
        raise ConfigError(f"continual.decay_steps: a branch on its run's own data goes on from its data position, "
                          f"which needs the global batch ({old.global_batch_size} sequences per step) of {where}'s "
                          "run (set global_batch to it)")
    return out


def _source(cfg: TrainConfig) -> tuple[str, Path, TrainConfig]:
    """``continual.init_from`` resolved: the checkpoint (for the workers: a URI stays one), its
    local folder here, and its run's config."""
    try:
        where = find_checkpoint(cfg.continual.init_from, cfg.storage_endpoint)
        folder = Path(storage.local_copy(where, cfg.storage_endpoint))
        old = train_config(*read_config(folder))
    except CheckpointError as exc:
        raise ConfigError(f"continual.init_from: {exc}") from None
    return where if storage.is_remote(where) else os.path.abspath(where), folder, old


def resolve(cfg: TrainConfig, manifests: Manifests | None = None) -> TrainConfig:
    """The run ``cfg.continual`` describes, as a plain config (see the module docstring);
    ``cfg`` itself when it has no ``init_from``. ``manifests``: those read so far (each folder's
    is read once)."""
    c = cfg.continual
    if not c.init_from:
        return cfg
    manifests = manifests if manifests is not None else Manifests()
    cfg = absolute_paths(cfg)
    where, folder, old = _source(cfg)
    state = read_state(folder)
    check_architecture(cfg.model, old.model, str(folder))
    init_optimizer = c.decay_steps > 0 if c.init_optimizer is None else c.init_optimizer
    if init_optimizer and (folder / DS_TAG).is_dir():
        raise ConfigError(f"continual.init_optimizer: {folder} is a DeepSpeed checkpoint, whose optimizer state "
                          "is partitioned by ZeRO; only its weights can be loaded")
    if init_optimizer and cfg.optim.name != old.optim.name:
        raise ConfigError(f"continual.init_optimizer: the checkpoint's optimizer is {old.optim.name}, this run's "
                          f"{cfg.optim.name}")
    cfg = dataclasses.replace(cfg, continual=dataclasses.replace(c, init_from=where, init_optimizer=init_optimizer))
    if c.replay:
        cfg = _with_replay(cfg, old, state, manifests)
    if c.decay_steps:
        cfg = _branch(cfg, old, int(state["step"]), str(folder))
    old_folders = _data_folders(old, manifests)
    evaluated = {norm_path(f) for f in eval_sets(cfg, manifests).values()}
    sets = dict(cfg.eval.sets)
    for name, data in old_folders.items():
        val = val_split(data, manifests)
        if val is not None and norm_path(val) not in evaluated:
            if f"old_{name}" in sets:
                raise ConfigError(f"eval.sets.old_{name}: the name of the checkpoint run's held-out split of {data}")
            sets[f"old_{name}"] = val
    # the start's evaluation is the baseline of forgetting
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, at_start=True, sets=sets))
    sets = eval_sets(cfg, manifests)
    if c.forgetting_sets is None:
        old_norms = {norm_path(f) for f in old_folders.values()}
        new_only = {norm_path(v) for f in _data_folders(cfg, manifests).values() if norm_path(f) not in old_norms
                    for v in [val_split(f, manifests)] if v is not None}
        forget = [n for n, f in sets.items() if norm_path(f) not in new_only]
        cfg = dataclasses.replace(cfg, continual=dataclasses.replace(cfg.continual, forgetting_sets=forget))
    elif unknown := sorted(set(c.forgetting_sets) - set(sets)):
        raise ConfigError(f"continual.forgetting_sets: {unknown} are not evaluated (eval sets: {sorted(sets)})")
    check_tokenizers([*_data_folders(cfg, manifests).values(), *old_folders.values()], manifests,
                     "continual: the old and the new data")
    return train_config(to_dict(absolute_paths(cfg)), "continual")  # validated as a whole


def load_init(cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, rank: int) -> Start:
    """Set the weights of the resolved ``cfg.continual.init_from`` into ``model`` (and the
    optimizer state with ``init_optimizer``; in a WSD branch also this rank's RNG); returns
    where the run begins. Every rank calls it (a collective under FSDP2)."""
    from raylm.data.position import position_from_dict
    from raylm.train.checkpoint import load_rng
    from raylm.train.strategy.state import load_state

    c = cfg.continual
    folder = Path(storage.local_copy(c.init_from, cfg.storage_endpoint))  # downloaded once per machine
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    load_state(folder, model, optimizer if c.init_optimizer else None)
    for group, h in zip(optimizer.param_groups, hyper):  # the moments are the old run's, the settings ours
        group.update(h)
    if not c.decay_steps:
        return Start(step=0)
    state = read_state(folder)
    load_rng(folder, rank)
    position = position_from_dict(state["data"]) if same_data(cfg, train_config(*read_config(folder))) else None
    return Start(step=int(state["step"]), position=position, spike_guard=state["spike_guard"])


def baseline(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The losses of the start evaluation that forgetting is measured from."""
    return {k: float(v) for k, v in metrics.items() if k.startswith("val/") and k.endswith("/loss")}


def forgetting(start: Mapping[str, float], now: Mapping[str, Any], sets: Sequence[str]) -> dict[str, float]:
    """``forgetting/<set>/loss`` (now minus start: > 0 is forgotten) and ``/ppl_ratio``
    (perplexity now over at the start, ``exp`` of the former) for every set of ``sets``."""
    out: dict[str, float] = {}
    for name in sets:
        key = f"val/{name}/loss"
        if key in start and key in now:
            diff = float(now[key]) - start[key]
            out[f"forgetting/{name}/loss"] = diff
            out[f"forgetting/{name}/ppl_ratio"] = math.exp(min(diff, 50.0))
    return out
