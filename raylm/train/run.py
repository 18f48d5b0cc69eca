"""A training run resolved once, on the driver: what the workers get (``ResolvedRun``).

``raylm.train.resolve.resolve_run(cfg)`` turns the config a user wrote into the run it means,
reads every manifest it needs once (``Manifests``), and checks the run against its data; the
workers get the result through ``train_loop_config`` and work none of it out again. In order:

1. Local paths become absolute (``data.path``, ``data.sources``, ``eval.sets``,
   ``storage_path``): a Ray worker does not run in the driver's working directory, and on a
   cluster (``RAY_ADDRESS``) every node must see them (``raylm.train.cluster``).
2. A continual run (``continual.init_from``) becomes the run it means
   (``raylm.train.continual.resolve``: its checkpoint, replay sources, a WSD branch's steps and
   schedule, the old run's held-out splits as eval sets, the forgetting sets).
3. The lr schedule's ``total_steps`` is set (default: ``steps``), so the run's ``config.json``
   says what ran.
4. Every manifest is read once (``Manifests``): of the training folders, their held-out splits,
   the eval sets and, for a continual run, the checkpoint run's training folders.
5. The checks, each a function of what was resolved: the objective's demands on the shards
   (``fim`` needs FIM'd shards), the eval sets are token-shard folders, the training data (and
   a continual run's old data) share one tokenizer, the stored sequences fit
   ``model.max_seq_len``, generation samples have a tokenizer.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from raylm import storage
from raylm.config import ConfigError, from_dict, to_dict
from raylm.storage import InputError
from raylm.train.config import TrainConfig


def norm_path(folder: str) -> str:
    """A folder as one key: absolute when local, without a trailing slash when a URI."""
    if storage.is_remote(folder):
        return folder.rstrip("/")
    return os.path.abspath(folder.removeprefix("file://"))


class Manifests:
    """Token-shard manifests (``raylm.data.shards.read_manifest``) by folder, each read once;
    a folder without one is remembered with its ``InputError``."""

    def __init__(self) -> None:
        self._read: dict[str, dict[str, Any] | InputError] = {}

    def read(self, folder: str) -> dict[str, Any]:
        """The manifest of ``folder``; ``InputError`` (the same each time) when it has none."""
        from raylm.data.shards import read_manifest

        key = norm_path(folder)
        if key not in self._read:
            try:
                self._read[key] = read_manifest(folder)
            except InputError as exc:
                self._read[key] = exc
        found = self._read[key]
        if isinstance(found, InputError):
            raise found
        return found

    def get(self, folder: str) -> dict[str, Any] | None:
        """The manifest of ``folder``, or None when it has none."""
        try:
            return self.read(folder)
        except InputError:
            return None

    def found(self) -> dict[str, dict[str, Any]]:
        """Every manifest read, by folder."""
        return {k: v for k, v in self._read.items() if not isinstance(v, InputError)}


@dataclasses.dataclass(kw_only=True)
class ResolvedRun:
    """What the workers of a run get: the resolved config and what its folders' manifests say."""

    cfg: TrainConfig
    """The run's config, resolved (see the module docstring); the run's ``config.json``."""
    eval_sets: dict[str, str] = dataclasses.field(default_factory=dict)
    """Name -> token-shard folder of every set evaluated during training."""
    tokenizer: str | None = None
    """The training data's SentencePiece model, as its manifest names it (generation samples)."""
    add_bos: bool = False
    """Whether the training data's documents start with ``<bos>`` (prompts then do too)."""
    tokenizer_hash: str | None = None
    """The training data's tokenizer hash (one for all its folders)."""
    seq_len: int | None = None
    """The stored sequence length of the training data, when its manifests record it."""

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def paths(self) -> dict[str, str]:
        """Every folder or file the workers read or write, by what names it in the config."""
        cfg = self.cfg
        out = {**training_folders(cfg), **{f"eval set {n}": f for n, f in self.eval_sets.items()},
               "storage_path": cfg.storage_path}
        if cfg.continual.init_from:
            out["continual.init_from"] = cfg.continual.init_from
        if (cfg.eval.samples.prompts or cfg.eval.samples.infill) and (cfg.eval.samples.tokenizer or self.tokenizer):
            out["eval.samples.tokenizer"] = cfg.eval.samples.tokenizer or self.tokenizer
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResolvedRun:
        return from_dict(cls, data, "run")


def training_folders(cfg: TrainConfig) -> dict[str, str]:
    """The run's token-shard folders by config key (``data.path`` or ``data.sources.<name>``)."""
    if cfg.data.path:
        return {"data.path": cfg.data.path}
    return {f"data.sources.{name}": path for name, path in cfg.data.sources.items()}


def absolute(p: str | None) -> str | None:
    """A local path made absolute on the driver (workers on other nodes have other working
    folders); a URI or nothing as it is."""
    return p if not p or storage.is_remote(p) else os.path.abspath(p.removeprefix("file://"))


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its local folders and files absolute (URIs as they are)."""
    d, ev = cfg.data, cfg.eval
    data = dataclasses.replace(d, path=absolute(d.path), sources={k: absolute(v) for k, v in d.sources.items()})
    ev = dataclasses.replace(ev, sets={k: absolute(v) for k, v in ev.sets.items()},
                             samples=dataclasses.replace(ev.samples, tokenizer=absolute(ev.samples.tokenizer)))
    return dataclasses.replace(cfg, data=data, eval=ev, storage_path=absolute(cfg.storage_path))


def with_total_steps(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its schedule's ``total_steps`` set when not given: ``steps``, or
    ``warmup_steps`` for a run that ends inside its warmup (the lr of every step it runs is
    the same, and the schedule stays valid)."""
    sched = cfg.optim.schedule
    if sched.total_steps is not None:
        return cfg
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, schedule=dataclasses.replace(
        sched, total_steps=max(cfg.steps, sched.warmup_steps))))


def check_tokenizers(folders: list[str], manifests: Manifests, what: str) -> str | None:
    """The one tokenizer hash the manifests of ``folders`` record (None: none records one);
    ConfigError naming ``what`` when they record different ones."""
    hashes = {f: h for f in folders if (h := (manifests.get(f) or {}).get("tokenizer_hash"))}
    if len(set(hashes.values())) > 1:
        raise ConfigError(f"{what} were tokenised with different tokenizers: "
                          + ", ".join(f"{f} ({h})" for f, h in hashes.items()))
    return next(iter(hashes.values()), None)
