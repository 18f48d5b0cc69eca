"""The Ray Train worker function: build, parallelise, restore, then step until ``steps``.

One optimizer step = ``grad_accum`` micro-batches of ``micro_batch_size`` packed sequences per
worker. The loss is the mean over every predicted token of the *global* batch: each rank sums
its token losses, the number of target tokens is all-reduced first, and each rank backpropagates
``sum * world / n_tokens`` (DDP and FSDP2 average gradients over ranks), so a 2-worker run
follows the 1-worker run with the same global batch, whatever the tokens per rank.

The objective (``raylm.train.objective``) may rewrite each batch (MLM masking) before the
forward; held-out evaluation (``raylm.train.evaluate``) runs at its steps on every rank and
its ``val/...`` metrics join that step's report.

After the backward pass the spike guard (``raylm.train.stability``) sees the loss and the
gradient norm: a spike skips the optimizer step (the data still advance, so the batch is not
seen again), and too many spikes roll the weights and optimizer back to the last checkpoint
while the data continue after the offending batches (PaLM, Chowdhery et al. 2022, sec. 5.1).

A continual run (``raylm.train.continual``) starts from another run's weights when Ray Train
has no checkpoint of its own to restore, and reports forgetting against its first evaluation.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from raylm.data.loader import IGNORE_INDEX, TrainBatches, split_rows
from raylm.data.mixed_loader import MixedBatches
from raylm.data.mixing import LengthSchedule
from raylm.data.position import position_from_dict
from raylm.model import Transformer
from raylm.model.mup import mup_lr_scale
from raylm.optim.optimizers import apply_lr, build_optimizer
from raylm.optim.schedules import lr_multiplier
from raylm.train import checkpoint, continual
from raylm.train.config import TrainConfig, train_config
from raylm.train.evaluate import Evaluator
from raylm.train.metrics import TensorBoard, mfu, peak_memory_gb, peak_tflops
from raylm.train.mtp import MTPObjective
from raylm.train.objective import batch_transform
from raylm.train.parallel import (
    autocast,
    clip_grad_norm,
    parallelize,
    resolve_precision,
    run_metadata,
    unwrap,
)
from raylm.train.preemption import PreemptionNotice
from raylm.train.samples import sample_hook
from raylm.train.stability import SpikeGuard


def _all_sum(x: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(x)
    return x


def _no_sync(model: torch.nn.Module, strategy: str, last: bool):
    """Skip the gradient reduction on all but the last micro-batch of a step."""
    if last or not dist.is_initialized():
        return contextlib.nullcontext()
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.no_sync()
    if strategy == "fsdp2":
        model.set_requires_gradient_sync(False)

        @contextlib.contextmanager
        def resync():
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)
        return resync()
    return contextlib.nullcontext()


class _LocalCheckpoints:
    """This rank's latest checkpoint folder stays on local disk (for rollbacks); older go."""

    def __init__(self, name: str, rank: int) -> None:
        self.root = os.path.join(tempfile.gettempdir(), "raylm-ckpt", f"{name}-{os.getpid()}", f"rank{rank}")
        self.latest: str | None = None

    def new(self, step: int) -> str:
        return os.path.join(self.root, f"step-{step:08d}")

    def keep(self, folder: str) -> None:
        if self.latest and self.latest != folder:
            shutil.rmtree(self.latest, ignore_errors=True)
        self.latest = folder


def _maybe_fail(cfg: TrainConfig, step: int, rank: int, world: int, run_dir: str | None) -> None:
    """Testing aid: kill this worker process once per run directory at ``fail_at_step``."""
    if cfg.fail_at_step != step or rank != (1 if world > 1 else 0) or run_dir is None:
        return
    marker = os.path.join(run_dir, f".failed-at-{step}")
    if os.path.exists(marker):
        return
    with open(marker, "w") as f:
        f.write(str(time.time()))
    os._exit(1)  # a hard kill, as a preempted node gives


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False  # one bar per shuffle window is noise
    DataContext.get_current().print_on_execution_start = False
    cfg = train_config(config["train"], "train_loop_config")
    run_dir: str | None = config.get("run_dir")  # local storage only: metrics.jsonl, tensorboard/
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.scale.device == "auto" else torch.device("cpu")
    precision = resolve_precision(cfg.scale.precision, device)
    if precision == "fp16" and cfg.scale.strategy == "fsdp2":
        raise ValueError("scale.precision fp16 needs loss scaling, which raylm supports with ddp only; use bf16")

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    with torch.device("meta"):
        model = Transformer(cfg.model)
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights()
    random.seed(cfg.seed * 1000 + rank)
    np.random.seed(cfg.seed * 1000 + rank)
    torch.manual_seed(cfg.seed * 1000 + rank)  # per-rank streams from here on
    sc = cfg.scale
    model = parallelize(model, sc.strategy, precision, device, sc.checkpoint_mode, sc.compile,
                        checkpoint_every=sc.checkpoint_every, tensor_parallel=sc.tensor_parallel, fp8=sc.fp8)
    optimizer = build_optimizer(model, cfg.optim, mup_lr_scale(cfg.model))
    restored = ray.train.get_checkpoint()  # this run's own: a resume, never from continual.init_from again
    start = None
    if restored is None and cfg.continual.init_from:  # before DeepSpeed, whose ZeRO partitions the loaded weights
        start = continual.load_init(cfg, model, optimizer, rank)
    engine = None  # DeepSpeed's engine: it steps, clips and reduces in place of the code below
    if sc.strategy == "deepspeed":
        from raylm.train import deepspeed

        model = engine = deepspeed.initialize(model, optimizer, cfg, precision, device)
    if run_dir and rank == 0:
        with open(os.path.join(run_dir, "meta.json"), "w") as f:
            json.dump(run_metadata(cfg, unwrap(model), precision, world), f, indent=2)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    guard = SpikeGuard(cfg.spike_guard)
    schedule = cfg.optim.schedule
    if schedule.total_steps is None:
        schedule.total_steps = cfg.steps

    step, position, eval_start = 0, None, None  # eval_start: the start's losses, forgetting's baseline
    if restored is not None:
        with restored.as_directory() as folder:
            state = checkpoint.load(folder, model, optimizer, rank)
        step, position = state["step"], position_from_dict(state["data"])
        guard.load_state_dict(state["spike_guard"])
        eval_start = state.get("eval_start")
    elif start is not None:
        step, position = start.step, start.position
        if start.spike_guard is not None:
            guard.load_state_dict(start.spike_guard)

    local = _LocalCheckpoints(cfg.name, rank)
    tb = TensorBoard(os.path.join(run_dir, "tensorboard") if run_dir and rank == 0 else None)
    log_path = os.path.join(run_dir, "metrics.jsonl") if run_dir and rank == 0 else None
    peak = peak_tflops(device, cfg.peak_tflops)
    flops_per_token = cfg.model.flops_per_token(cfg.model.max_seq_len)
    tokens_window, t_window, wait_window = 0, time.perf_counter(), 0.0
    rollbacks = 0
    notice = PreemptionNotice(cfg.checkpoint.preemption_check_every, rank)

    def log(metrics: dict[str, Any]) -> None:  # rank 0: TensorBoard and metrics.jsonl
        if rank == 0:
            tb.log(metrics["step"], {k: v for k, v in metrics.items() if k != "step"})
            if log_path:
                with open(log_path, "a") as f:
                    f.write(json.dumps(metrics) + "\n")

    def save_and_report(metrics: dict[str, Any], with_checkpoint: bool) -> None:
        if not with_checkpoint:
            ray.train.report(metrics)
            return
        folder = local.new(step)
        state = {"step": step, "data": loader.position.state_dict(), "spike_guard": guard.state_dict()}
        if eval_start is not None:
            state["eval_start"] = eval_start
        checkpoint.save(folder, model, optimizer, state, rank, config=config["train"])
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        local.keep(folder)

    transform = batch_transform(cfg)
    hooks = [h for h in (sample_hook(cfg),) if h is not None]
    evaluator = Evaluator(cfg, rank, world, device, precision, hooks)  # loads its sets: before the loader's thread
    # the ranks of one tensor-parallel group read the same batches
    loader = _loader(cfg, rank // sc.tensor_parallel, sc.data_parallel, position)
    seq_log = open(os.path.join(run_dir, f"seq_ids-rank{rank}.jsonl"), "a") if cfg.log_seq_ids and run_dir else None
    lengths = LengthSchedule([tuple(p) for p in cfg.data.seq_len_schedule]) if cfg.data.seq_len_schedule else None
    mix_window = dict.fromkeys(getattr(loader, "counts", {}), 0)
    seq_len: int | None = None
    try:
        if restored is None and evaluator.due(0):  # step 0, or a WSD branch's first step
            first = {"step": step, **evaluator(model, step)}
            if cfg.continual.forgetting_sets:
                eval_start = continual.baseline(first)
            log(first)
            ray.train.report(first)
            t_window = time.perf_counter()
        while step < cfg.steps:
            micro = [next(loader) for _ in range(cfg.grad_accum)]
            if seq_log is not None:
                seq_log.write(json.dumps({"step": step + 1, "pid": os.getpid(),
                                          "seq_ids": [int(i) for b in micro for i in b["seq_id"]]}) + "\n")
                seq_log.flush()
            seq_len = micro[0]["input_ids"].shape[1]  # stored length: tokens per step are B * it
            if transform is not None:  # keyed by the step being trained: resumes mask alike
                micro = [transform(b, step + 1) for b in micro]
            if lengths is not None:
                micro = [split_rows(b, lengths.seq_len_at(step)) for b in micro]
            n_tokens = _all_sum(torch.tensor(float(sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in micro)),
                                             device=device))
            loss_sum = torch.zeros((), device=device)
            mtp = MTPObjective(cfg.model, micro, device, _all_sum) if cfg.model.mtp_heads else None
            for i, b in enumerate(micro):
                with _no_sync(model, cfg.scale.strategy, last=i == len(micro) - 1), \
                        autocast(cfg.scale.strategy, precision, device):
                    logits = model(b["input_ids"].to(device), position_ids=b["position_ids"].to(device),
                                   cu_seqlens=b["cu_seqlens"].to(device), max_seqlen=b["max_seqlen"],
                                   mtp=mtp is not None)
                    if mtp is not None:
                        logits, mtp_logits = logits
                    part = unwrap(model).loss_sum(logits, b["labels"].to(device))
                    objective = part * world / n_tokens
                    if mtp is not None:
                        objective = objective + mtp.term(unwrap(model), i, mtp_logits) * world
                    if engine is not None:
                        engine.backward(objective, scale_wrt_gas=False)
                        if i < len(micro) - 1:
                            engine.step()  # not a boundary: DeepSpeed only counts the micro-batch
                    else:
                        scaler.scale(objective).backward()
                loss_sum += part.detach()
            loss = float(_all_sum(loss_sum) / n_tokens)
            mtp_metrics = mtp.metrics(_all_sum) if mtp is not None else {}
            multiplier = lr_multiplier(schedule, step)  # the schedule counts updates from 0
            lr = cfg.optim.lr * multiplier
            if engine is not None:  # the spike guard is off (TrainConfig.validate)
                apply_lr(optimizer, cfg.optim.lr, multiplier)
                engine.step()
                grad_norm = deepspeed.grad_norm(engine)
            else:
                scaler.unscale_(optimizer)
                grad_norm = clip_grad_norm(model, cfg.clip_grad_norm)
            step += 1
            _maybe_fail(cfg, step, rank, world, run_dir)
            action = guard.check(step, loss, grad_norm)
            if action == "ok" and engine is None:
                apply_lr(optimizer, cfg.optim.lr, multiplier)
                scaler.step(optimizer)
                scaler.update()
            if engine is None:
                optimizer.zero_grad(set_to_none=True)
            if action == "rollback" and local.latest is not None:
                # the weights and optimizer go back; the data and the step count go on past
                # the spike (as PaLM did), so a run that keeps spiking still ends
                with torch.no_grad():
                    checkpoint.load(local.latest, model, optimizer, rank, from_rank0=True)
                rollbacks += 1
            tokens_window += cfg.global_batch_size * seq_len
            last = step >= cfg.steps
            ckpt_now = last or (cfg.checkpoint.every and step % cfg.checkpoint.every == 0) or notice.due(step)
            eval_now = evaluator.due(step)
            if step % cfg.log_every == 0 or last or ckpt_now or eval_now:
                dt = time.perf_counter() - t_window
                tps = tokens_window / dt
                metrics = {
                    "step": step, "loss": loss, "perplexity": float(np.exp(min(loss, 50.0))),
                    "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tps,
                    "tokens_per_s_per_device": tps / world, "spike": action != "ok", "rollbacks": rollbacks,
                    "peak_memory_gb": peak_memory_gb(device), "data_wait_s": loader.data_wait_s,
                    "data_wait_frac": (loader.data_wait_s - wait_window) / dt,
                    "tokens_seen": loader.position.sequences_seen * seq_len,
                    **mtp_metrics,
                }
                if lengths is not None:
                    metrics["seq_len"] = micro[0]["input_ids"].shape[1]
                if mix_window:  # the realised share of every source in this log window
                    counts = {k: v - mix_window[k] for k, v in loader.counts.items()}
                    total = max(1, sum(counts.values()))
                    metrics.update({f"mix/{k}": v / total for k, v in counts.items()})
                    mix_window = dict(loader.counts)
                util = mfu(tps / world, flops_per_token, peak)
                if util is not None:
                    metrics["mfu"] = util
                if eval_now:
                    metrics.update(evaluator(model, step))
                    if eval_start is not None:
                        metrics.update(continual.forgetting(eval_start, metrics, cfg.continual.forgetting_sets))
                log(metrics)
                save_and_report(metrics, bool(ckpt_now))
                tokens_window, t_window, wait_window = 0, time.perf_counter(), loader.data_wait_s
    finally:
        loader.close()
        if seq_log is not None:
            seq_log.close()
        tb.close()


def _loader(cfg: TrainConfig, rank: int, world: int, position: Any) -> TrainBatches | MixedBatches:
    """The worker's batches: one source in the loader's order, or several mixed."""
    d = cfg.data
    if d.sources:
        return MixedBatches(d.sources, d.mix_in_sequences(cfg.global_batch_size), cfg.micro_batch_size, rank, world,
                            position, seed=d.seed, prefetch=d.prefetch, window=d.window)
    return TrainBatches(d.path, cfg.micro_batch_size, rank, world, position, seed=d.seed,
                        prefetch=d.prefetch, window=d.window)
