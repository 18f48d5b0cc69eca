"""The tokenizer a checkpoint's data was prepared with (for ``raylm generate``; the prompts and
their continuations are ``raylm.model.text``).

The tokenizer is found from the checkpoint's config: ``data.path`` (or each of
``data.sources``) is a ``raylm prepare`` shard folder whose ``manifest.json`` records the
prepare config, tokenizer path and ``add_bos`` included; a plain prompt then starts with
``<bos>`` exactly when the training documents did.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from raylm.data.tokenizer import load_tokenizer
from raylm.storage import InputError
from raylm.train.config import TrainConfig


def _data_folders(cfg: TrainConfig) -> list[tuple[str, str]]:
    if cfg.data.path:
        return [("data.path", cfg.data.path)]
    return [(f"data.sources.{name}", path) for name, path in cfg.data.sources.items()]


def data_tokenizer(cfg: TrainConfig) -> tuple[str, bool]:
    """``(tokenizer path, add_bos)`` of the data the run trained on, from the shard manifest;
    ``InputError`` naming what was looked at when there is none (pass ``--tokenizer``)."""
    from raylm.data.shards import read_manifest

    tried = []
    for key, folder in _data_folders(cfg):
        try:
            prepared: dict[str, Any] = read_manifest(folder).get("config") or {}
        except (InputError, OSError):
            tried.append(f"{key}: {folder} has no token-shard manifest")
            continue
        path = prepared.get("tokenizer")
        if not path:
            tried.append(f"{key}: the manifest of {folder} names no tokenizer")
        elif not Path(path).is_file():
            tried.append(f"{key}: the tokenizer {path} named by the manifest of {folder} is not a file here")
        else:
            return path, bool(prepared.get("add_bos", False))
    raise InputError(f"cannot find the training data's tokenizer ({'; '.join(tried) or 'no data in the config'}); "
                     "pass --tokenizer PATH.model")


def resolve_tokenizer(cfg: TrainConfig, path: str | os.PathLike | None = None) -> tuple[Any, bool]:
    """The SentencePiece processor (``path``, else the training data's) and whether prompts
    start with ``<bos>``."""
    if path is None:
        path, add_bos = data_tokenizer(cfg)
    else:
        try:
            add_bos = data_tokenizer(cfg)[1]
        except InputError:
            add_bos = False
    try:
        return load_tokenizer(path), add_bos
    except FileNotFoundError as exc:
        raise InputError(f"--tokenizer: {exc}") from None
