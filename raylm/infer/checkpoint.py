"""Rebuild a trained model from a Ray Train checkpoint folder, on one device, for eval and generation.

A checkpoint written by ``raylm train`` holds ``config.json`` (the run's ``TrainConfig``) and
``model.pt`` (the full state dict), or a DeepSpeed ``zero/`` folder, which DeepSpeed's own
``zero_to_fp32`` consolidates. Given a run folder instead, the checkpoint with the highest step
in it is used, so ``raylm eval runs/NAME`` means "the latest checkpoint of that run". A URI
(``s3://bucket/runs/NAME``) is resolved the same way in the bucket and the checkpoint chosen is
downloaded once (``raylm.storage.local_copy``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.fs as pafs
import torch

from raylm import storage
from raylm.model import Transformer
from raylm.train.checkpoint import CONFIG, DS_TAG, MODEL, STATE
from raylm.train.config import TrainConfig, train_config


class CheckpointError(ValueError):
    """A path that is not a raylm checkpoint (or run folder holding one)."""


def find_checkpoint(path: str | os.PathLike, endpoint: str | None = None) -> str:
    """The checkpoint ``path`` names, in the form given (a local path or a URI): ``path`` itself
    if it is a checkpoint folder, else the one inside it with the highest step. Local folders
    and object stores are searched alike, through ``pyarrow.fs``."""
    fs, root = storage.filesystem(str(path), endpoint)

    def kind(p: str) -> pafs.FileType:
        return fs.get_file_info(p).type

    def is_checkpoint(p: str) -> bool:
        return kind(f"{p}/{STATE}") == pafs.FileType.File and (
            kind(f"{p}/{MODEL}") == pafs.FileType.File or kind(f"{p}/{DS_TAG}") == pafs.FileType.Directory)

    if kind(root) != pafs.FileType.Directory:
        raise CheckpointError(f"{path}: no such checkpoint or run folder")
    given = str(path).rstrip("/")
    if is_checkpoint(root):
        return given
    found = []
    for info in fs.get_file_info(pafs.FileSelector(root)):
        if info.type == pafs.FileType.Directory and is_checkpoint(info.path):
            with fs.open_input_stream(f"{info.path}/{STATE}") as f:
                found.append((json.loads(f.read())["step"], info.base_name))
    if not found:
        raise CheckpointError(f"{path}: not a checkpoint folder (no {STATE} with {MODEL} or {DS_TAG}/) "
                              "and no checkpoint inside it")
    return f"{given}/{max(found)[1]}"


def resolve_checkpoint(path: str | os.PathLike, endpoint: str | None = None) -> Path:
    """The local folder of ``find_checkpoint(path)``: for a URI, its local copy."""
    return Path(storage.local_copy(find_checkpoint(path, endpoint), endpoint))


def read_config(folder: Path) -> TrainConfig:
    for candidate in (folder / CONFIG, folder.parent / CONFIG):  # the run folder's copy for older checkpoints
        if candidate.is_file():
            return train_config(json.loads(candidate.read_text()), str(candidate))
    raise CheckpointError(f"{folder}: no {CONFIG} in the checkpoint or its run folder")


def model_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """The full (unsharded) model state dict of a checkpoint folder, on the CPU."""
    if (folder / MODEL).is_file():
        return torch.load(folder / MODEL, map_location="cpu", weights_only=True)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    sd = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=DS_TAG)
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[Transformer, TrainConfig, dict]:
    """The model of checkpoint (or run folder) ``path`` in eval mode, its ``TrainConfig`` and
    its ``state.json`` (``step``, data position)."""
    folder = resolve_checkpoint(path)
    cfg = read_config(folder)
    with torch.device("meta"):
        model = Transformer(cfg.model)
    model.load_state_dict(model_state_dict(folder), assign=True)
    model.reset_rope()  # the buffers are still on the meta device
    model.to(device=device, dtype=dtype)
    model.reset_rope(device)  # float32 rotary tables whatever ``dtype``, as in training
    model.eval()
    state = json.loads((folder / STATE).read_text())
    return model, cfg, state
