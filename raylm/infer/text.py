"""Text in, text out: the tokenizer a checkpoint's data was prepared with, prompts (plain and
fill-in-the-middle) and their continuations decoded back to text.

The tokenizer is found from the checkpoint's config: ``data.path`` (or each of
``data.sources``) is a ``raylm prepare`` shard folder whose ``manifest.json`` records the
prepare config, tokenizer path and ``add_bos`` included; a plain prompt then starts with
``<bos>`` exactly when the training documents did.

Fill in the middle builds the PSM prompt of training's FIM transform (Bavarian et al. 2022;
``raylm.data.transforms.fim_transform``): ``<fim_prefix> prefix <fim_suffix> suffix
<fim_middle>``, after which the model writes the middle and ends it with ``<eos>``, as every
transformed training document ends.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raylm.data.tokenizer import load_tokenizer, special_ids
from raylm.infer.generate import Generation, SamplingConfig, budget, generate
from raylm.infer.speculative import speculative_greedy
from raylm.model import Transformer
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


def _continuation(sp: Any, context: Sequence[int], new: Sequence[int]) -> str:
    """The text of ``new`` as it reads after ``context`` (a leading space or a character whose
    bytes straddle the two stays whole)."""
    before, whole = sp.decode(list(context)), sp.decode(list(context) + list(new))
    return whole[len(before):] if whole.startswith(before) else sp.decode(list(new))


def _run(model: Transformer, prompt: list[int], cfg: SamplingConfig, speculative: bool) -> Generation:
    try:
        budget(model, prompt, cfg.max_new_tokens)
    except ValueError as exc:
        raise InputError(f"prompt: {exc}") from None
    if speculative:
        if cfg.temperature != 0:
            raise InputError("--speculative decodes greedily: use it with --temperature 0")
        if not model.cfg.mtp_heads:
            raise InputError("--speculative: the checkpoint's model has no multi-token-prediction heads to draft "
                             "with (model.mtp_heads: 0)")
        return speculative_greedy(model, prompt, max_new_tokens=cfg.max_new_tokens, eos_id=cfg.eos_id)
    return generate(model, prompt, cfg)


def complete(model: Transformer, sp: Any, prompt: str, cfg: SamplingConfig, *, add_bos: bool = False,
             speculative: bool = False) -> tuple[str, Generation]:
    """``(the prompt and its continuation, the generation)``."""
    ids = ([special_ids(sp)["<bos>"]] if add_bos else []) + sp.encode(prompt)
    gen = _run(model, ids, cfg, speculative)
    return prompt + _continuation(sp, ids, gen.tokens), gen


def fim_prompt(prefix: Sequence[int], suffix: Sequence[int], ids: dict[str, int]) -> list[int]:
    """PSM: ``<fim_prefix> prefix <fim_suffix> suffix <fim_middle>`` (``ids``: ``special_ids``)."""
    return [ids["<fim_prefix>"], *prefix, ids["<fim_suffix>"], *suffix, ids["<fim_middle>"]]


def infill(model: Transformer, sp: Any, prefix: str, suffix: str, cfg: SamplingConfig, *,
           speculative: bool = False) -> tuple[str, Generation]:
    """``(the middle between prefix and suffix, the generation)``."""
    prefix_ids = sp.encode(prefix)
    gen = _run(model, fim_prompt(prefix_ids, sp.encode(suffix), special_ids(sp)), cfg, speculative)
    return _continuation(sp, prefix_ids, gen.tokens), gen
