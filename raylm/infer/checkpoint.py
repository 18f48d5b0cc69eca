"""Rebuild a trained model from a checkpoint, on one device, for eval and generation.

The format (what a checkpoint folder holds, finding the latest one of a run, reading the
weights of any kind of checkpoint: ``model_state_dict``) is ``raylm.checkpoint``'s, whose
names this module passes on; here the weights meet the ``TrainConfig`` they were trained with. Given a run folder instead of a checkpoint, the
checkpoint with the highest step in it is used, so ``raylm eval runs/NAME`` means "the latest
checkpoint of that run". A URI (``s3://bucket/runs/NAME``) is resolved the same way in the
bucket and the checkpoint chosen is downloaded once (``raylm.storage.local_copy``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from raylm import checkpoint
from raylm.checkpoint import (
    CheckpointError,
    find_checkpoint,
    model_state_dict,
    read_state,
    resolve_checkpoint,
)
from raylm.model import Transformer
from raylm.train.config import TrainConfig, train_config

__all__ = ["CheckpointError", "find_checkpoint", "load_model", "model_state_dict", "read_config",
           "resolve_checkpoint"]


def read_config(folder: str | os.PathLike) -> TrainConfig:
    """The ``TrainConfig`` a local checkpoint folder was written with."""
    return train_config(*checkpoint.read_config(folder))


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[Transformer, TrainConfig, dict]:
    """The model of checkpoint (or run folder) ``path`` in eval mode, its ``TrainConfig`` and
    its ``state.json`` (``step``, data position)."""
    folder = resolve_checkpoint(path)
    cfg = read_config(folder)
    with torch.device("meta"):
        model = Transformer(cfg.model)
    model.load_state_dict(model_state_dict(Path(folder)), assign=True)
    model.reset_rope()  # the buffers are still on the meta device
    model.to(device=device, dtype=dtype)
    model.reset_rope(device)  # float32 rotary tables whatever ``dtype``, as in training
    model.eval()
    return model, cfg, read_state(folder)
