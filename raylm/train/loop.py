"""The Ray Train worker function: build, parallelise, restore, then step until ``steps``.

``train_loop_per_worker`` builds the run on this rank (the model, the strategy that shares it
and the train module that steps it: ``raylm.train.module``), restores it, and hands it to
``Loop``, which owns everything around a step: the data (``grad_accum`` micro-batches of
``micro_batch_size`` packed sequences per worker and step), the spike guard's decision, logging,
evaluation and checkpoints.

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

import json
import os
import random
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from raylm import console
from raylm.config import to_dict
from raylm.data.loader import TrainBatches, split_rows
from raylm.data.mixed_loader import MixedBatches
from raylm.data.mixing import LengthSchedule
from raylm.data.position import position_from_dict
from raylm.train import checkpoint, continual
from raylm.train.config import TrainConfig
from raylm.train.evaluate import Evaluator
from raylm.train.metrics import MetricsLog, mfu, peak_memory_gb, peak_tflops
from raylm.train.module import StepResult, TrainModule, build_model
from raylm.train.objective import batch_transform
from raylm.train.parallel import resolve_precision
from raylm.train.preemption import PreemptionNotice
from raylm.train.run import ResolvedRun
from raylm.train.samples import sample_hook
from raylm.train.stability import SpikeGuard
from raylm.train.strategy import build_strategy
from raylm.train.tracking import Tracker


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


def _node_id() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def _seed_rank(seed: int, rank: int) -> None:
    """Per-rank random streams from here on (the weights were initialised alike on every rank)."""
    random.seed(seed * 1000 + rank)
    np.random.seed(seed * 1000 + rank)
    torch.manual_seed(seed * 1000 + rank)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    console.quiet_train_worker()  # no Ray Data bar per shuffle window, no line per report
    run = ResolvedRun.from_dict(config["run"])  # resolved once on the driver (raylm.train.resolve)
    cfg = run.cfg
    run_dir: str | None = config.get("run_dir")  # local storage only: metrics.jsonl, tensorboard/
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.scale.device == "auto" else torch.device("cpu")
    precision = resolve_precision(cfg.scale.precision, device)
    strategy = build_strategy(cfg, precision, device)
    model = build_model(cfg, device)
    _seed_rank(cfg.seed, rank)
    module = TrainModule(cfg, strategy, model, world)
    restored = ray.train.get_checkpoint()  # this run's own: a resume, never from continual.init_from again
    start = None
    if restored is None and cfg.continual.init_from:  # before DeepSpeed, whose ZeRO partitions the loaded weights
        start = continual.load_init(cfg, module.model, module.optimizer, rank)
    module.setup()
    if run_dir and rank == 0:
        with open(os.path.join(run_dir, "meta.json"), "w") as f:
            json.dump(strategy.metadata(world), f, indent=2)
    loop = Loop(run, module, rank, world, run_dir, restored)
    if restored is not None:
        with restored.as_directory() as folder:
            loop.restore(checkpoint.load(folder, strategy, rank, world))
    elif start is not None:
        loop.begin(start)
    loop.run(evaluate_first=restored is None)


class Loop:
    """The steps of one worker after its start or resume (see the module docstring)."""

    def __init__(self, run: ResolvedRun, module: TrainModule, rank: int, world: int, run_dir: str | None,
                 restored: Any = None) -> None:
        self.resolved, self.cfg, self.module, self.rank, self.world, self.run_dir = run, run.cfg, module, rank, world, run_dir
        cfg = run.cfg
        self.config = to_dict(run.cfg)  # every checkpoint's config.json
        self.device = module.device
        self.guard = SpikeGuard(cfg.spike_guard)
        self.step, self.position, self.eval_start = 0, None, None  # eval_start: forgetting's baseline
        self.checkpoints = checkpoint.Checkpointer(cfg.name, rank, cfg.checkpoint.async_save, restored)
        self.metrics_log = MetricsLog(run_dir if rank == 0 else None)
        self.tracker = Tracker(cfg.tracking, rank, self.config, run_dir)  # MLflow / W&B, rank 0 only
        self.notice = PreemptionNotice(cfg.checkpoint.preemption_check_every, rank)
        self.rollbacks = 0
        self.accum = cfg.grad_accum_at(world)  # the same global batch at any number of workers
        self.node = _node_id()
        self.flops_per_token = cfg.model.flops_per_token(cfg.model.max_seq_len)
        self.peak = peak_tflops(self.device, cfg.peak_tflops)

    def restore(self, state: dict[str, Any]) -> None:
        """Go on from this run's own checkpoint (its ``state.json``)."""
        self.step, self.position = state["step"], position_from_dict(state["data"])
        self.guard.load_state_dict(state["spike_guard"])
        self.eval_start = state.get("eval_start")
        if self.rank == 0:  # Ray Train's own account of the restart is INFO, quiet by default
            print(f"step {self.step}: resumed from this run's latest checkpoint on {self.world} worker(s) "
                  f"(after a worker failed, its node was preempted or the group was resized)", flush=True)

    def begin(self, start: continual.Start) -> None:
        """Go on from where a continual run's ``init_from`` says."""
        self.step, self.position = start.step, start.position
        if start.spike_guard is not None:
            self.guard.load_state_dict(start.spike_guard)

    def _loader(self) -> TrainBatches | MixedBatches:
        """The worker's batches: one source in the loader's order, or several mixed; the ranks of
        one tensor-parallel group read the same batches."""
        cfg, d = self.cfg, self.cfg.data
        tp = cfg.scale.tensor_parallel
        rank, world = self.rank // tp, self.world // tp
        if d.sources:
            return MixedBatches(d.sources, d.mix_in_sequences(cfg.global_batch_size), cfg.micro_batch_size, rank,
                                world, self.position, seed=d.seed, prefetch=d.prefetch, window=d.window,
                                grad_accum=self.accum, timeout_s=d.read_timeout_s)
        return TrainBatches(d.path, cfg.micro_batch_size, rank, world, self.position, seed=d.seed,
                            prefetch=d.prefetch, window=d.window, grad_accum=self.accum, timeout_s=d.read_timeout_s)

    def run(self, evaluate_first: bool) -> None:
        cfg = self.cfg
        transform = batch_transform(cfg)
        hooks = [h for h in (sample_hook(self.resolved),) if h is not None]
        # loads its sets: before the loader's thread
        evaluator = Evaluator(cfg, self.rank, self.world, self.device, sets=self.resolved.eval_sets,
                              autocast=self.module.strategy.autocast, hooks=hooks)
        loader = self._loader()
        seq_log = None
        if cfg.log_seq_ids and self.run_dir:
            seq_log = open(os.path.join(self.run_dir, f"seq_ids-rank{self.rank}.jsonl"), "a")
        lengths = LengthSchedule([tuple(p) for p in cfg.data.seq_len_schedule]) if cfg.data.seq_len_schedule else None
        window = _Window(loader)
        try:
            if evaluate_first and evaluator.due(0):  # step 0, or a WSD branch's first step
                first = {"step": self.step, **evaluator(self.module.model, self.step)}
                if cfg.continual.forgetting_sets:
                    self.eval_start = continual.baseline(first)
                self._log(first)
                self._report(first, loader, with_checkpoint=False)
                window.restart()
            while self.step < cfg.steps:
                micro = [next(loader) for _ in range(self.accum)]
                if seq_log is not None:
                    seq_log.write(json.dumps({"step": self.step + 1, "pid": os.getpid(), "node": self.node,
                                              "world": self.world,
                                              "seq_ids": [int(i) for b in micro for i in b["seq_id"]]}) + "\n")
                    seq_log.flush()
                seq_len = micro[0]["input_ids"].shape[1]  # stored length: tokens per step are B * it
                if transform is not None:  # keyed by the step being trained: resumes mask alike
                    micro = [transform(b, self.step + 1) for b in micro]
                if lengths is not None:
                    micro = [split_rows(b, lengths.seq_len_at(self.step)) for b in micro]
                result = self.module.train_step(micro, self.step)
                self.step += 1
                _maybe_fail(cfg, self.step, self.rank, self.world, self.run_dir)
                action = self.guard.check(self.step, result.loss, result.grad_norm)
                self.module.optimizer_step(result, apply=action == "ok")
                if action == "rollback":
                    self._rollback()
                window.tokens += cfg.global_batch_size * seq_len
                last = self.step >= cfg.steps
                ckpt_now = (last or bool(cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0)
                            or self.notice.due(self.step))  # a node of the run is being preempted
                eval_now = evaluator.due(self.step)
                if self.step % cfg.log_every == 0 or last or ckpt_now or eval_now:
                    metrics = self._metrics(result, action, seq_len, window, micro if lengths else None)
                    if eval_now:
                        metrics.update(evaluator(self.module.model, self.step))
                        if self.eval_start is not None:
                            metrics.update(continual.forgetting(self.eval_start, metrics,
                                                                cfg.continual.forgetting_sets))
                    self._log(metrics)
                    self._report(metrics, loader, with_checkpoint=ckpt_now)
                    window.restart()
            self.tracker.finish()
        finally:
            loader.close()
            if seq_log is not None:
                seq_log.close()
            self.metrics_log.close()

    def _metrics(self, result: StepResult, action: str, seq_len: int, window: _Window,
                 micro: list[dict[str, Any]] | None) -> dict[str, Any]:
        """The figures of the step just taken and of the log window it ends."""
        cfg, loader = self.cfg, window.loader
        dt = time.perf_counter() - window.t0
        tps = window.tokens / dt
        metrics = {
            "step": self.step, "loss": result.loss, "perplexity": float(np.exp(min(result.loss, 50.0))),
            "lr": cfg.optim.lr * result.lr_multiplier, "grad_norm": result.grad_norm, "tokens_per_s": tps,
            "tokens_per_s_per_device": tps / self.world, "workers": self.world, "spike": action != "ok",
            "rollbacks": self.rollbacks,
            "peak_memory_gb": peak_memory_gb(self.device), "data_wait_s": loader.data_wait_s,
            "data_wait_frac": (loader.data_wait_s - window.wait) / dt,
            "tokens_seen": loader.position.sequences_seen * seq_len,
            **result.metrics,
        }
        if micro is not None:  # a length curriculum: the length trained at this step
            metrics["seq_len"] = micro[0]["input_ids"].shape[1]
        metrics.update(window.mix())
        util = mfu(tps / self.world, self.flops_per_token, self.peak)
        if util is not None:
            metrics["mfu"] = util
        return metrics

    def _log(self, metrics: dict[str, Any]) -> None:
        """Rank 0: ``metrics.jsonl``, TensorBoard and the experiment trackers."""
        self.metrics_log(metrics)
        self.tracker.log(metrics)

    def _report(self, metrics: dict[str, Any], loader: Any, with_checkpoint: bool) -> None:
        if not with_checkpoint:
            self.checkpoints.report(metrics)
            return
        state = {"step": self.step, "data": loader.position.state_dict(), "spike_guard": self.guard.state_dict(),
                 "world_size": self.world}
        if self.eval_start is not None:
            state["eval_start"] = self.eval_start
        self.checkpoints.report(metrics, self.module.strategy, state, config=self.config)

    def _rollback(self) -> None:
        """The weights and optimizer go back to the latest checkpoint in storage; the data and
        the step count go on past the spike (as PaLM did), so a run that keeps spiking still ends."""
        self.checkpoints.wait()
        if dist.is_initialized():
            dist.barrier()  # every rank's files are in storage
        latest = self.checkpoints.latest
        if latest is None:  # none yet
            return
        with torch.no_grad(), latest.as_directory() as folder:
            checkpoint.load(folder, self.module.strategy, self.rank, self.world)
        self.rollbacks += 1


class _Window:
    """The log window since the last report: tokens, time, data wait and the sources' counts."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.counts = dict.fromkeys(getattr(loader, "counts", {}), 0)
        self.restart()

    def restart(self) -> None:
        self.tokens, self.t0, self.wait = 0, time.perf_counter(), self.loader.data_wait_s
        if self.counts:
            self.counts = dict(self.loader.counts)

    def mix(self) -> dict[str, float]:
        """The realised share of every source in this window (a mixed run), else nothing."""
        if not self.counts:
            return {}
        counts = {k: v - self.counts[k] for k, v in self.loader.counts.items()}
        total = max(1, sum(counts.values()))
        return {f"mix/{k}": v / total for k, v in counts.items()}
