"""The checkpoint format: what a raylm checkpoint folder holds, how to find one, and how to read it.

Below ``raylm.train`` (which writes checkpoints and resumes from them) and ``raylm.infer`` (which
evaluates and generates from them): both read the format through this module only. A checkpoint
is one Ray Train checkpoint folder::

    state.json         rank 0: step, data position, spike-guard state, world size
    config.json        rank 0: the run's whole TrainConfig as a dict (rebuilds the model alone)
    rng-rank<r>.pt     every rank: its torch, numpy and Python RNG states
    model_and_optim/   DDP and FSDP2: ``{"model": ..., "optim": ...}`` state dicts in
                       torch.distributed.checkpoint's format (DCP): one ``__<r>_0.distcp`` per
                       rank with that rank's shards (FSDP2's DTensor shards; DDP's replicated
                       tensors each written once, spread over the ranks) and the ``.metadata``
                       index rank 0 writes; nothing is gathered on one rank
    zero/              DeepSpeed instead of model_and_optim/: the engine's own checkpoint

Older checkpoints hold ``model.pt`` and ``optim.pt`` (full state dicts written by rank 0)
instead of ``model_and_optim/``; they are still read everywhere.

``model_state_dict`` is the one function that gives the full (unsharded) model weights of any
checkpoint in one process: DCP's own offline loading (``_load_state_dict_from_keys``, no
process group) of the ``model`` half of ``model_and_optim/``, ``torch.load`` for ``model.pt``,
DeepSpeed's ``zero_to_fp32`` for ``zero/``. ``raylm eval``, ``raylm generate``,
``raylm export`` and a continual run's ``init_from`` all read weights through it.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Literal

import pyarrow.fs as pafs
import torch

from raylm import storage

STATE, CONFIG = "state.json", "config.json"
SHARDS = "model_and_optim"
MODEL, OPTIM = "model.pt", "optim.pt"  # the full format of older checkpoints
DS_TAG = "zero"
DCP_METADATA = ".metadata"

Kind = Literal["sharded", "full", "deepspeed"]


class CheckpointError(ValueError):
    """A path that is not a raylm checkpoint (or run folder holding one)."""


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.pt"


def missing_shards(fs: pafs.FileSystem, path: str) -> list[str]:
    """The files a sharded checkpoint ``path`` names but does not hold yet: the ``.distcp``
    files its DCP ``.metadata`` indexes and every rank's RNG file (``state.json``'s world size).
    Each rank's files reach storage on their own, so a node lost while a checkpoint uploads
    leaves rank 0's ``state.json`` and ``.metadata`` without the other ranks' shards."""
    try:
        with fs.open_input_stream(f"{path}/{STATE}") as f:
            world = json.loads(f.read()).get("world_size")
        with fs.open_input_stream(f"{path}/{SHARDS}/{DCP_METADATA}") as f:
            index = pickle.loads(f.read())  # DCP's own format (FileSystemReader.read_metadata)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        return [f"{STATE} or {SHARDS}/{DCP_METADATA} unreadable ({exc})"]
    named = {f"{SHARDS}/{info.relative_path}" for info in (getattr(index, "storage_data", None) or {}).values()}
    named |= {rng_file(r) for r in range(world or 0)}
    held = {f"{SHARDS}/{i.base_name}" for i in fs.get_file_info(pafs.FileSelector(f"{path}/{SHARDS}"))}
    held |= {i.base_name for i in fs.get_file_info(pafs.FileSelector(path))}
    return sorted(named - held)


def _kind_in(fs: pafs.FileSystem, path: str) -> Kind | None:
    """The kind of checkpoint ``path`` is; None if it is none, or a sharded one still incomplete."""
    def kind(p: str) -> pafs.FileType:
        return fs.get_file_info(p).type

    if kind(f"{path}/{STATE}") != pafs.FileType.File:
        return None
    if kind(f"{path}/{SHARDS}/{DCP_METADATA}") == pafs.FileType.File:
        return None if missing_shards(fs, path) else "sharded"
    if kind(f"{path}/{MODEL}") == pafs.FileType.File:
        return "full"
    if kind(f"{path}/{DS_TAG}") == pafs.FileType.Directory:
        return "deepspeed"
    return None


def _refuse_incomplete(fs: pafs.FileSystem, path: str, shown: str) -> None:
    """``CheckpointError`` if ``path`` is a sharded checkpoint whose files are not all there."""
    if fs.get_file_info(f"{path}/{SHARDS}/{DCP_METADATA}").type == pafs.FileType.File:
        missing = missing_shards(fs, path)
        if missing:
            raise CheckpointError(f"{shown}: an incomplete checkpoint (its shards did not all reach storage): "
                                  f"missing {', '.join(missing[:4])}")


def checkpoint_kind(folder: str | os.PathLike) -> Kind:
    """The format of the local checkpoint ``folder``: "sharded" (DCP ``model_and_optim/``),
    "full" (``model.pt``) or "deepspeed" (``zero/``)."""
    fs, path = pafs.LocalFileSystem(), os.path.abspath(folder)
    kind = _kind_in(fs, path)
    if kind is None:
        _refuse_incomplete(fs, path, str(folder))
        raise CheckpointError(f"{folder}: not a checkpoint folder (no {STATE} with {SHARDS}/, {MODEL} or {DS_TAG}/)")
    return kind


def find_checkpoint(path: str | os.PathLike, endpoint: str | None = None) -> str:
    """The checkpoint ``path`` names, in the form given (a local path or a URI): ``path`` itself
    if it is a checkpoint folder, else the one inside it with the highest step. Local folders
    and object stores are searched alike, through ``pyarrow.fs``."""
    fs, root = storage.filesystem(str(path), endpoint)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise CheckpointError(f"{path}: no such checkpoint or run folder")
    given = str(path).rstrip("/")
    if _kind_in(fs, root) is not None:
        return given
    _refuse_incomplete(fs, root, str(path))
    found = []
    for info in fs.get_file_info(pafs.FileSelector(root)):
        if info.type == pafs.FileType.Directory and _kind_in(fs, info.path) is not None:
            with fs.open_input_stream(f"{info.path}/{STATE}") as f:
                found.append((json.loads(f.read())["step"], info.base_name))
    if not found:
        raise CheckpointError(f"{path}: not a checkpoint folder (no {STATE} with {SHARDS}/, {MODEL} or "
                              f"{DS_TAG}/) and no checkpoint inside it")
    return f"{given}/{max(found)[1]}"


def resolve_checkpoint(path: str | os.PathLike, endpoint: str | None = None) -> Path:
    """The local folder of ``find_checkpoint(path)``: for a URI, its local copy."""
    return Path(storage.local_copy(find_checkpoint(path, endpoint), endpoint))


def read_state(folder: str | os.PathLike) -> dict[str, Any]:
    """``state.json`` of a local checkpoint folder."""
    return json.loads((Path(folder) / STATE).read_text())


def read_config(folder: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """The run's config dict of a local checkpoint folder and the file it came from (the run
    folder's copy for checkpoints older than ``config.json`` in the checkpoint)."""
    folder = Path(folder)
    for candidate in (folder / CONFIG, folder.parent / CONFIG):
        if candidate.is_file():
            return json.loads(candidate.read_text()), str(candidate)
    raise CheckpointError(f"{folder}: no {CONFIG} in the checkpoint or its run folder")


def _dcp_read(folder: Path, key: str) -> dict[str, Any]:
    """The ``key`` half ("model" or "optim") of a DCP checkpoint folder, whole, into this process."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    with warnings.catch_warnings():  # "no process group: loading into this process", which is the intent
        warnings.simplefilter("ignore", UserWarning)
        return _load_state_dict_from_keys({key}, checkpoint_id=str(folder / SHARDS))[key]


def model_state_dict(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The full (unsharded) model state dict of a local checkpoint folder, on the CPU, whatever
    its format (see the module docstring). Call it outside a process group or on every rank."""
    folder = Path(folder)
    kind = checkpoint_kind(folder)
    if kind == "sharded":
        return _dcp_read(folder, "model")
    if kind == "full":
        return torch.load(folder / MODEL, map_location="cpu", weights_only=True)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    sd = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=DS_TAG)
    return {k.removeprefix("module."): v for k, v in sd.items()}


def optimizer_state_dict(folder: str | os.PathLike) -> dict[str, Any]:
    """The full optimizer state dict (``{"state": {fqn: ...}, "param_groups": [...]}``) of a
    local DDP/FSDP2 checkpoint folder, in one process."""
    folder = Path(folder)
    kind = checkpoint_kind(folder)
    if kind == "full":
        return torch.load(folder / OPTIM, map_location="cpu", weights_only=True)
    if kind == "deepspeed":
        raise CheckpointError(f"{folder}: a DeepSpeed checkpoint's optimizer state is partitioned by ZeRO")
    return _dcp_read(folder, "optim")
