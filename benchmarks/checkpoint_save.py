"""What a checkpoint costs a training step: sharded (DCP) saves, synchronous and asynchronous,
against the full state dict gathered to rank 0 (raylm's format before issue 16).

2 gloo processes on CPU train a model with FSDP2 (``raylm.train.strategy.FSDP2``, the
strategy a run uses) and save its model and AdamW state every ``--every`` steps, three ways,
each in fresh processes:

* ``full_rank0`` (the baseline): ``get_*_state_dict(full_state_dict=True, cpu_offload=True)``
  gathers everything to rank 0, which ``torch.save``s ``model.pt`` and ``optim.pt``;
* ``dcp_sync``: ``raylm.train.strategy.state.save_state``: every rank writes its own shards
  with ``dcp.save``;
* ``dcp_async``: the same through ``dcp.async_save`` on a gloo group of its own: the step waits
  for the copy of the state to CPU memory, the files are written while training goes on (the
  next save waits for the previous one, as a run's would).

Per mode (medians over ``--saves`` saves): the step time without a save, the time the
training thread is blocked by a save (``blocked_s``), the time until its files are written
(``written_s``), the extra time a window of ``--every`` steps with one save takes over the same
steps without one (``step_cost_s``: what a run pays per checkpoint, the background writing's
competition for the CPU included), the bytes rank 0 writes, and rank 0's peak resident memory
above its level before the save (RSS sampled every 2 ms; the allocator reuses memory the
training step freed, so it understates what a save allocates). The ratios against
``full_rank0`` are printed and written to ``results/checkpoint_save.json``.

    python benchmarks/checkpoint_save.py            # under 2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raylm.model import Transformer  # noqa: E402
from raylm.optim.optimizers import OptimConfig, build_optimizer  # noqa: E402
from raylm.train.config import train_config  # noqa: E402
from raylm.train.strategy import build_strategy  # noqa: E402
from raylm.train.strategy.state import save_state  # noqa: E402

WORLD = 2
MODES = ("full_rank0", "dcp_sync", "dcp_async")
MODEL = {"vocab_size": 8192, "d_model": 512, "n_layers": 6, "n_heads": 8, "n_kv_heads": 4, "max_seq_len": 128,
         "attention": "sdpa"}


class PeakRSS:
    """Peak resident memory of this process above the level at ``start``, sampled every 2 ms."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def start(self) -> None:
        self.base = self.peak = self.rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.rss())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak - self.base


def _save_full(folder: str, model, optimizer, rank: int) -> None:
    """The baseline: full state dicts gathered to rank 0, which writes them."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(model, options=options)
    optim_sd = get_optimizer_state_dict(model, optimizer, options=options)
    if rank == 0:
        torch.save(model_sd, os.path.join(folder, "model.pt"))
        torch.save(optim_sd, os.path.join(folder, "optim.pt"))


def _worker(rank: int, port: int, mode: str, args: argparse.Namespace, root: str, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    device = torch.device("cpu")
    cfg = train_config({"data": {"path": "x"}, "model": MODEL, "micro_batch_size": args.batch,
                        "scale": {"strategy": "fsdp2", "num_workers": WORLD}})
    torch.manual_seed(0)
    strategy = build_strategy(cfg, "fp32", device)
    model = strategy.wrap(Transformer(cfg.model))
    optimizer = build_optimizer(model, OptimConfig(lr=1e-4))
    strategy.setup(optimizer)
    group = dist.new_group(backend="gloo") if mode == "dcp_async" else None
    g = torch.Generator().manual_seed(rank)
    ids = torch.randint(0, MODEL["vocab_size"], (args.batch, MODEL["max_seq_len"] + 1), generator=g)

    def step() -> None:
        loss = strategy.module.loss_sum(model(ids[:, :-1]), ids[:, 1:]) / ids[:, 1:].numel()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed_steps(n: int) -> list[float]:
        out = []
        for _ in range(n):
            dist.barrier()
            t0 = time.perf_counter()
            step()
            dist.barrier()
            out.append(time.perf_counter() - t0)
        return out

    timed_steps(2)  # warm-up: the optimizer state exists from here
    plain = timed_steps(args.every)
    blocked, written, windows, peaks, rank0_bytes = [], [], [], [], []
    pending = None
    for i in range(args.saves):
        folder = os.path.join(root, f"save-{i}")
        os.makedirs(folder, exist_ok=True)
        if pending is not None:
            pending.result()  # a run's next save waits for the last
        dist.barrier()
        rss = PeakRSS()
        rss.start()
        t0 = time.perf_counter()
        done_at: list[float] = []
        if mode == "full_rank0":
            _save_full(folder, model, optimizer, rank)
        else:
            pending = save_state(folder, model, optimizer, async_save=mode == "dcp_async", group=group)
        dist.barrier()
        t_blocked = time.perf_counter() - t0
        if pending is not None:
            pending.add_done_callback(lambda _, done_at=done_at: done_at.append(time.perf_counter()))
        window = t_blocked + sum(timed_steps(args.every))
        if pending is not None:
            pending.result()
        dist.barrier()
        written.append((done_at[0] if done_at else t0 + t_blocked) - t0)
        peaks.append(rss.stop())
        blocked.append(t_blocked)
        windows.append(window)
        mine = ("model.pt", "optim.pt") if mode == "full_rank0" else ("model_and_optim/__0_0.distcp",
                                                                     "model_and_optim/.metadata")
        rank0_bytes.append(sum(os.path.getsize(os.path.join(folder, f)) for f in mine) if rank == 0 else 0)
        dist.barrier()
        if rank == 0:
            shutil.rmtree(folder, ignore_errors=True)
    if rank == 0:
        base = args.every * statistics.median(plain)
        queue.put({"mode": mode, "step_s": statistics.median(plain), "blocked_s": statistics.median(blocked),
                   "written_s": statistics.median(written),
                   "step_cost_s": statistics.median(windows) - base,
                   "rank0_written_mib": rank0_bytes[0] / 2**20,
                   "rank0_peak_extra_mib": max(peaks) / 2**20})
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=int, default=6, help="steps after each save that its window counts")
    ap.add_argument("--saves", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("-o", "--output", default=str(Path(__file__).parent / "results" / "checkpoint_save.json"))
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    rows = {}
    for mode in MODES:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        root = tempfile.mkdtemp(prefix=f"raylm-ckpt-bench-{mode}-")
        try:
            mp.start_processes(_worker, args=(port, mode, args, root, queue), nprocs=WORLD, start_method="spawn")
        finally:
            shutil.rmtree(root, ignore_errors=True)
        rows[mode] = queue.get()
        r = rows[mode]
        print(f"{mode:<11} step {r['step_s']:.3f} s  blocked {r['blocked_s']:.3f} s  written {r['written_s']:.3f} s  "
              f"cost per checkpoint {r['step_cost_s']:.3f} s  rank 0 wrote {r['rank0_written_mib']:.0f} MiB, "
              f"peak RSS +{r['rank0_peak_extra_mib']:.0f} MiB")
    params = train_config({"data": {"path": "x"}, "model": MODEL}).model.num_params()
    base = rows["full_rank0"]
    ratios = {m: {"step_cost_ratio": rows[m]["step_cost_s"] / base["step_cost_s"],
                  "blocked_ratio": rows[m]["blocked_s"] / base["blocked_s"],
                  "rank0_written_ratio": rows[m]["rank0_written_mib"] / base["rank0_written_mib"],
                  "rank0_peak_rss_ratio": rows[m]["rank0_peak_extra_mib"] / max(base["rank0_peak_extra_mib"], 1e-9)}
              for m in MODES if m != "full_rank0"}
    for m, r in ratios.items():
        print(f"{m} / full_rank0: cost per checkpoint {r['step_cost_ratio']:.2f}, step blocked {r['blocked_ratio']:.2f}, "
              f"rank 0 wrote {r['rank0_written_ratio']:.2f}, rank-0 peak RSS {r['rank0_peak_rss_ratio']:.2f}")
    out = {"benchmark": "checkpoint_save", "date": datetime.date.today().isoformat(), "host": platform.node(),
           "device": f"cpu ({os.cpu_count()} cores), {WORLD} gloo processes, 1 torch thread each",
           "torch": torch.__version__, "model": MODEL, "params": params,
           "state_mib": params * 4 * 3 / 2**20, "micro_batch_size": args.batch, "steps_per_window": args.every,
           "saves": args.saves, "method": __doc__.split("\n\n")[1] + "\n" + __doc__.split("\n\n")[2],
           "rows": rows, "ratios_vs_full_rank0": ratios}
    Path(args.output).write_text(json.dumps(out, indent=2))
    print(f"-> {args.output}")


if __name__ == "__main__":
    main()
