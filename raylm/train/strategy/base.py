"""The strategy interface: how the workers of a run share one model.

A strategy wraps the model (``wrap``: the common preparation of ``raylm.train.parallel``, then
its own data-parallel wrapper), takes the optimizer (``setup``), and then does, inside every
optimizer step of ``raylm.train.module.TrainModule``: the gradient synchronisation of the
micro-batches (``no_sync``, ``autocast``, ``backward``), the gradient norm and clipping
(``grad_norm``) and the update (``step``); and it writes and reads the model and optimizer
state of a checkpoint (``save``, ``load``).

``Strategy`` itself is the whole of DDP's and FSDP2's shared behaviour: torch's optimizer with
a ``GradScaler`` (fp16 only), ``clip_grad_norm`` over plain tensors and DTensors, and checkpoints
through ``raylm.train.strategy.state``, the same calls for DDP, FSDP2 and one process. ``DDP``, ``FSDP2`` and ``DeepSpeed`` (``ddp.py``, ``fsdp.py``, ``deepspeed.py``)
override what differs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn

from raylm.optim.optimizers import apply_lr
from raylm.train.config import TrainConfig
from raylm.train.parallel import checkpointed_modules, clip_grad_norm, prepare, unwrap
from raylm.train.strategy.state import load_state, save_state


class Strategy:
    """DDP's and FSDP2's common part (see the module docstring); a subclass names itself and
    wraps the prepared model in ``_wrap``."""

    name: ClassVar[str] = ""

    def __init__(self, cfg: TrainConfig, precision: str, device: torch.device) -> None:
        self.cfg, self.scale, self.precision, self.device = cfg, cfg.scale, precision, device
        self.model: nn.Module | None = None
        """The model as the strategy runs it (wrapped): what the forward pass calls."""
        self.optimizer: torch.optim.Optimizer | None = None
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self._async_group: dist.ProcessGroup | None = None

    # -- building -------------------------------------------------------------------------------

    def wrap(self, model: nn.Module) -> nn.Module:
        """Prepare ``model`` (fp8, tensor parallel, activation checkpointing, compile) and wrap it."""
        mesh = prepare(model, self.scale, self.device)
        self.model = self._wrap(model, mesh) if dist.is_initialized() else model
        return self.model

    def _wrap(self, model: nn.Module, mesh: Any) -> nn.Module:
        return model

    def setup(self, optimizer: torch.optim.Optimizer) -> None:
        """Take the optimizer built over the wrapped model's parameters."""
        self.optimizer = optimizer

    @property
    def module(self) -> nn.Module:
        """The Transformer itself (inside a DDP or DeepSpeed wrapper)."""
        return unwrap(self.model)

    def metadata(self, world: int) -> dict[str, Any]:
        """What the run's parallelism is, for ``meta.json`` next to its metrics: strategy,
        tensor-parallel degree, precision, fp8, compile, the activation checkpointing mode with
        the modules it recomputes, and the worker's torch CPU threads."""
        sc, cfg = self.scale, self.cfg
        return {
            "strategy": sc.strategy, "world_size": world, "data_parallel": world // sc.tensor_parallel,
            "tensor_parallel": sc.tensor_parallel, "precision": self.precision, "fp8": sc.fp8, "compile": sc.compile,
            "activation_checkpointing": sc.checkpoint_mode,
            "checkpointed_modules": checkpointed_modules(self.module, sc.checkpoint_mode, sc.checkpoint_every),
            "num_params": cfg.model.num_params(), "global_batch_size": cfg.global_batch_size,
            "grad_accum": cfg.grad_accum_at(world),
            "torch_threads": torch.get_num_threads(),  # Ray sets OMP_NUM_THREADS to the worker's CPUs
        }

    # -- one optimizer step -----------------------------------------------------------------------

    def no_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Around a micro-batch: skip the gradient reduction unless it is the ``last`` of the step."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Mixed precision of the forward pass (FSDP2 casts through its policy instead)."""
        yield

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        self.scaler.scale(loss).backward()

    def grad_norm(self, lr_multiplier: float) -> float:
        """The global gradient norm before clipping, after clipping it to ``clip_grad_norm``."""
        self.scaler.unscale_(self.optimizer)
        return clip_grad_norm(self.model, self.cfg.clip_grad_norm)

    def step(self, apply: bool, lr_multiplier: float) -> None:
        """The optimizer update at the schedule's ``lr_multiplier`` (none when not ``apply``: a
        skipped spike), then the gradients are cleared."""
        if apply:
            apply_lr(self.optimizer, self.cfg.optim.lr, lr_multiplier)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.scaler.is_enabled():  # fp16: grad_norm unscaled; the scaler must still move on
            self.scaler.update()  # (an overflow lowers the loss scale, as a skipped scaler.step would)
        self.optimizer.zero_grad(set_to_none=True)

    # -- checkpoints ------------------------------------------------------------------------------

    def save(self, folder: str, async_save: bool = False) -> Future | None:
        """Write this rank's shards of the model and optimizer state into ``folder`` (a
        collective: every rank calls it). ``async_save``: in a background thread, over a gloo
        group of the strategy's own (made at the first such save); the future ends when the
        files are written."""
        if async_save and self._async_group is None:
            self._async_group = dist.new_group(backend="gloo") if dist.is_initialized() else None
        return save_state(folder, self.model, self.optimizer, async_save=async_save, group=self._async_group)

    def load(self, folder: str, optimizer: bool = True) -> None:
        """Set the model (and the optimizer) state of checkpoint ``folder``, re-sharded for the
        model as it is parallelised now, whatever world size saved it."""
        load_state(folder, self.model, self.optimizer if optimizer else None)
