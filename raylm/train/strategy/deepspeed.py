"""DeepSpeed ZeRO stages 1-3 (Rajbhandari et al. 2020) inside a Ray Train worker.

Integrated as Ray documents it (docs.ray.io, "Get Started with DeepSpeed"): the
``TorchTrainer`` sets up the process group, and the worker function calls
``deepspeed.initialize`` on the model and optimizer it built, with the DeepSpeed JSON that
``ds_config`` writes from ``scale.deepspeed`` and the rest of the ``TrainConfig`` (nobody
writes DeepSpeed JSON by hand). The optimizer is raylm's own AdamW with its parameter
groups (so the lr schedule, μP scales and weight-decay rule are the same as with DDP/FSDP2);
ZeRO shards its state. Offload keeps it on the CPU (``zero_force_ds_cpu_optimizer`` off: no
compiled CPUAdam is needed).

On CPU (tests, laptops) DeepSpeed runs with its CPU accelerator (``DS_ACCELERATOR=cpu``,
set here before deepspeed is first imported) over the gloo process group Ray Train made. Its
communication backend would JIT-compile a shared-memory all-reduce kernel (the
``deepspeed_shm_comm`` op: a minute or more of g++ on a small machine, in every fresh
environment) that only DeepSpeed's inference all-reduce calls; training over gloo never does,
so the op is marked unavailable for CPU runs and nothing is compiled.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raylm.checkpoint import DS_TAG
from raylm.optim.optimizers import apply_lr
from raylm.train.config import TrainConfig
from raylm.train.strategy.base import Strategy


def ds_config(cfg: TrainConfig, precision: str) -> dict[str, Any]:
    """The DeepSpeed JSON for ``cfg``: micro-batch and accumulation, clipping, precision and
    ZeRO stage with its offload and bucket sizes."""
    ds = cfg.scale.deepspeed
    zero: dict[str, Any] = {
        "stage": ds.stage,
        "overlap_comm": False,
        "contiguous_gradients": True,
        "reduce_bucket_size": ds.bucket_size,
        "allgather_bucket_size": ds.bucket_size,
    }
    if ds.stage == 3:
        # gathered parameters are released after use unless fewer than bucket_size are live
        # (DeepSpeed's default, 1e9, keeps the whole model gathered after the forward pass)
        zero.update({"stage3_prefetch_bucket_size": ds.bucket_size, "stage3_param_persistence_threshold": 0,
                     "stage3_max_live_parameters": ds.bucket_size, "stage3_max_reuse_distance": ds.bucket_size})
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.scale.use_gpu}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cfg.scale.use_gpu}
    out: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_at(cfg.scale.max_workers),
        "gradient_clipping": cfg.clip_grad_norm or 0.0,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # raylm's AdamW with its parameter groups
        "zero_force_ds_cpu_optimizer": False,  # offload steps torch's AdamW on the CPU
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if precision == "bf16":
        out["bf16"] = {"enabled": True}
    elif precision == "fp16":
        out["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return out


def initialize(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig, precision: str,
               device: torch.device) -> nn.Module:
    """The ``DeepSpeedEngine`` around ``model`` (its ``.module``) and ``optimizer``."""
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
    except ImportError:
        raise RuntimeError("scale.strategy deepspeed needs DeepSpeed: pip install 'raylm[deepspeed]'") from None
    deepspeed.utils.logger.setLevel(logging.WARNING)
    if device.type == "cpu":
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # see the module docstring
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config(cfg, precision),
                                           dist_init_required=False)
    return engine


class DeepSpeed(Strategy):
    """The engine steps, clips and reduces; the spike guard is off (``TrainConfig.validate``),
    so every step is applied. Checkpoints are the engine's own (``zero/``), each rank writing
    its ZeRO partition, restored at the same world size; before ``setup`` (a continual run's
    ``init_from``) the weights of any checkpoint are set into the plain model, which
    ``deepspeed.initialize`` then partitions."""

    name = "deepspeed"

    def setup(self, optimizer: torch.optim.Optimizer) -> None:
        super().setup(optimizer)
        self.model = initialize(self.model, optimizer, self.cfg, self.precision, self.device)

    def metadata(self, world: int) -> dict[str, Any]:
        return {**super().metadata(world), "deepspeed": ds_config(self.cfg, self.precision)}

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        self.model.backward(loss, scale_wrt_gas=False)
        if not last:
            self.model.step()  # not a boundary: DeepSpeed only counts the micro-batch

    def grad_norm(self, lr_multiplier: float) -> float:
        apply_lr(self.optimizer, self.cfg.optim.lr, lr_multiplier)
        self.model.step()  # the boundary: reduce, clip and update
        norm = self.model.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def step(self, apply: bool, lr_multiplier: float) -> None:
        pass  # done in ``grad_norm``

    def save(self, folder: str, async_save: bool = False) -> None:
        self.model.save_checkpoint(folder, tag=DS_TAG, save_latest=False)  # async_save: ddp/fsdp2 only

    def load(self, folder: str, optimizer: bool = True) -> None:
        if not _is_engine(self.model):  # before ``setup``: weights into the plain model
            super().load(folder, optimizer=False)
            return
        self.model.load_checkpoint(str(Path(folder)), tag=DS_TAG, load_lr_scheduler_states=False,
                                   load_optimizer_states=optimizer)


def _is_engine(model: nn.Module) -> bool:
    return type(model).__name__ == "DeepSpeedEngine"
