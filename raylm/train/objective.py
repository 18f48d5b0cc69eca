"""Training objectives: what a batch of packed sequences is trained (and evaluated) to predict.

* ``causal`` (the default): the next token of the same document, the labels the loader makes
  (``raylm.data.loader.make_batch``).
* ``mlm``: masked-LM on an encoder (Devlin et al. 2019, BERT; with ``mlm.span``: Joshi et al.
  2020, SpanBERT). ``mlm_batch`` masks every sequence with ``raylm.data.transforms.mlm_mask``;
  the labels are the original tokens at the selected positions, not shifted, -100 elsewhere,
  so the loss (``Transformer.loss_sum``, unchanged) is on the masked tokens only. Each
  sequence's generator is seeded from ``(mlm.seed, key, seq_id)``: in training ``key`` is the
  optimizer step, so a sequence seen again gets a new mask (RoBERTa's dynamic masking, Liu et
  al. 2019) and a resumed run masks exactly as the uninterrupted one; evaluation uses
  ``EVAL_KEY``, the same mask at every evaluation.
* ``fim``: next-token prediction on shards that ``raylm prepare`` FIM-transformed (Bavarian
  et al. 2022, "Efficient Training of Language Models to Fill in the Middle");
  ``check_objective`` fails before the run when a training folder's manifest records no FIM.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from raylm.config import ConfigError
from raylm.data.transforms import FIMConfig, MLMConfig, mlm_mask
from raylm.train.config import TrainConfig
from raylm.train.run import Manifests, training_folders

EVAL_KEY = 0
"""The masking key of evaluation; training steps count from 1, so no training mask repeats it."""


def mlm_batch(batch: dict[str, Any], cfg: MLMConfig, key: int) -> dict[str, Any]:
    """``batch`` with masked ``input_ids`` and unshifted ``labels`` (see the module docstring)."""
    import torch

    tokens = batch["input_ids"].numpy()
    inputs, labels = np.empty_like(tokens), np.empty(tokens.shape, np.int64)
    for i, seq_id in enumerate(batch["seq_id"].tolist()):  # one generator per sequence
        inputs[i], labels[i] = mlm_mask(tokens[i], np.random.default_rng([cfg.seed, key, seq_id]), cfg)
    return {**batch, "input_ids": torch.from_numpy(inputs), "labels": torch.from_numpy(labels)}


def batch_transform(cfg: TrainConfig) -> Callable[[dict[str, Any], int], dict[str, Any]] | None:
    """``f(batch, key)`` that turns the loader's batch into the objective's, or None (causal, fim)."""
    if cfg.objective != "mlm":
        return None
    mlm = cfg.mlm_config()
    return lambda batch, key: mlm_batch(batch, mlm, key)


def manifest_fim(manifest: dict[str, Any]) -> FIMConfig | None:
    """The FIM config a token-shard folder was prepared with, from its manifest (None: none, or
    rate 0)."""
    from raylm.config import from_dict

    fim = (manifest.get("config") or {}).get("fim")
    if not fim or not fim.get("rate"):
        return None
    return from_dict(FIMConfig, fim)


def check_objective(cfg: TrainConfig, manifests: Manifests) -> None:
    """Driver-side check of the data against the objective: ``fim`` needs FIM'd shards."""
    if cfg.objective != "fim":
        return
    from raylm.storage import InputError

    for key, path in training_folders(cfg).items():
        try:
            fim = manifest_fim(manifests.read(path))
        except InputError as exc:
            raise ConfigError(f"objective: fim: {key}: {exc} (FIM shards come from raylm prepare with fim:)") from None
        if fim is None:
            raise ConfigError(f"objective: fim: {key}: {path} was prepared without FIM (its manifest's "
                              "config has no fim, or rate 0); prepare it with fim: {rate: 0.5}")
