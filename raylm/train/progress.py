"""Training progress on the driver: rank 0's reports as a progress bar, or one line per log window.

Ray Train V2 runs its callbacks in the controller actor, not in the driver, so a small
``UserCallback`` hands each report of rank 0 to a ``ray.util.queue.Queue`` (an actor of no CPU)
and a thread of the driver draws them while ``fit`` waits:

- on a terminal, a tqdm bar over the run's steps with loss, tokens/s and MFU (ETA: tqdm's);
- elsewhere, one line per log window:
  ``step   20/60  loss 6.237  lr 2.6e-03  grad 0.31  24.8k tok/s  wait 1%  eta 25s``;
- held-out evaluations as a line of their own in both;
- what happens to the worker group (a failure or preemption and the restart from the latest
  checkpoint, an elastic resize, the run training again and on how many workers), from a
  controller callback, and every minute a line while a restarted run waits for room for its
  workers; Ray Train's own account of these is INFO, quiet by default;
all on stderr, where progress goes.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ray.train import UserCallback
from ray.train.v2._internal.execution.callback import ControllerCallback  # Ray: "custom workarounds" welcome

from raylm import console
from raylm.train.config import TrainConfig


def _put(queue: Any, row: dict[str, Any]) -> None:
    """Into the driver's queue; what is shown must never fail the run (an exception raised in a
    Train controller callback fails it), so a queue that is gone loses the line only."""
    try:
        queue.put_nowait(row)
    except Exception:  # the queue actor is gone, or full
        pass


class _Forward(UserCallback):
    """In the Train controller: every report of rank 0 into the driver's queue."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if metrics and "step" in metrics[0]:
            _put(self.queue, dict(metrics[0]))


def _first_line(error: Any, limit: int = 160) -> str:
    text = str(error).strip().splitlines()[0] if error is not None and str(error).strip() else type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _Events(ControllerCallback):
    """In the Train controller: the worker group's restarts, resizes and starts into the driver's
    queue as ``{"event": kind, "text": ...}`` (each state entered once, not every poll)."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue
        self.state: str | None = None
        self.workers: int | None = None
        self.restarted = False

    def _put(self, kind: str, text: str) -> None:
        _put(self.queue, {"event": kind, "text": text, "workers": self.workers})

    def after_controller_state_update(self, previous_state: Any, current_state: Any) -> None:
        name = type(current_state).__name__
        if name == self.state:
            return
        self.state = name
        if name == "SchedulingState":
            self.workers = getattr(current_state.scaling_decision, "num_workers", self.workers)
        elif name in ("RestartingState", "ReschedulingState"):
            self.restarted = True
            self._put("restart", f"the worker group stopped ({_first_line(current_state.training_failed_error)}); "
                                 "it restarts from the latest checkpoint when there is room for its workers")
        elif name == "ResizingState":
            self.restarted = True
            n = getattr(current_state.scaling_decision, "num_workers", "more")
            self._put("restart", f"room for {n} workers: the worker group restarts at that size from the latest "
                                 "checkpoint")
        elif name == "RunningState" and self.restarted:
            self.restarted = False
            self._put("running", f"training again on {self.workers} worker(s)")


def window_line(row: dict[str, Any], steps: int, eta: float | None) -> str:
    """One log window as a line (the same figures as the bar's)."""
    parts = [f"step {row['step']:>{len(str(steps))}}/{steps}", f"loss {row['loss']:.3f}",
             f"lr {row['lr']:.1e}", f"grad {row['grad_norm']:.2f}", f"{console.human(row['tokens_per_s'])} tok/s"]
    if row.get("mfu") is not None:
        parts.append(f"MFU {100 * row['mfu']:.1f}%")
    if row.get("data_wait_frac") is not None:
        parts.append(f"wait {100 * row['data_wait_frac']:.0f}%")
    if row.get("spike"):
        parts.append("SPIKE (step skipped)")
    if eta is not None:
        parts.append(f"eta {console.duration(eta)}")
    return "  ".join(parts)


def eval_line(row: dict[str, Any]) -> str | None:
    """``eval @ 60: val 6.10 | sample 6.10 | en 5.92, ko 6.51`` (None: no evaluation in ``row``)."""
    if "val/loss" not in row:
        return None
    sets = [f"{k[4:-5]} {v:.3f}" for k, v in row.items()
            if k.startswith("val/") and k.endswith("/loss") and k.count("/") == 2 and not k.startswith("val/lang/")]
    langs = [f"{k[9:-5]} {v:.3f}" for k, v in row.items() if k.startswith("val/lang/") and k.endswith("/loss")]
    parts = [f"val {row['val/loss']:.3f}"] + ([", ".join(sets)] if sets else []) + ([", ".join(langs)] if langs else [])
    return f"eval @ {row['step']}: " + " | ".join(parts)


class TrainProgress:
    """``with TrainProgress(cfg) as p: fit(cfg, callbacks=p.callbacks)``; ``p.rows`` are the
    reports seen, in order, ``p.events`` the worker group's."""

    def __init__(self, cfg: TrainConfig, poll_s: float = 0.25) -> None:
        self.cfg, self.poll_s = cfg, poll_s
        self.rows: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.queue = None
        self.bar = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t_first: float | None = None
        self._step_first = 0
        self._waiting: float | None = None  # since the last line while a restarted run waits for workers
        self._waiting_from = 0.0
        self.wait_line_s = 60.0

    @property
    def callbacks(self) -> list[Any]:
        """For ``fit(cfg, callbacks=...)``: rank 0's reports and the worker group's events."""
        return [_Forward(self.queue), _Events(self.queue)]

    def __enter__(self) -> TrainProgress:
        import ray
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = ray.get_runtime_context().get_node_id()  # on the driver's node: it goes when the driver does,
        self.queue = Queue(actor_options={"num_cpus": 0,  # not with a worker node an elastic run loses
                                          "scheduling_strategy": NodeAffinitySchedulingStrategy(here, soft=False)})
        if console.interactive():
            self.bar = console.bar(total=self.cfg.steps, desc="train", unit="step")
        self._thread = threading.Thread(target=self._drain, name="raylm-train-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        from ray.util.queue import Empty

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        while True:  # what came after the thread's last look
            try:
                self._show(self.queue.get_nowait())
            except Empty:
                break
        if self.bar is not None:
            self.bar.close()
        self.queue.shutdown()

    def _drain(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                self._show(self.queue.get(timeout=self.poll_s))
            except Empty:
                if self._waiting is not None and time.perf_counter() - self._waiting >= self.wait_line_s:
                    waited = console.duration(time.perf_counter() - self._waiting_from)
                    console.say(f"train: still waiting for room for the workers ({waited}; a run below "
                                "scale.num_workers' minimum waits for nodes)", progress=True)
                    self._waiting = time.perf_counter()

    def _show(self, row: dict[str, Any]) -> None:
        if "event" in row:
            self.events.append(row)
            console.say(f"train: {row['text']}", progress=True)
            if row["event"] == "restart":
                self._waiting = self._waiting_from = time.perf_counter()
            else:
                self._waiting = None
            return
        self._waiting = None
        self.rows.append(row)
        evaluated = eval_line(row)
        if "loss" in row:
            now = time.perf_counter()
            if self._t_first is None:  # the first window includes start-up: time the rest
                self._t_first, self._step_first = now, row["step"]
            done = row["step"] - self._step_first
            eta = (now - self._t_first) / done * (self.cfg.steps - row["step"]) if done > 0 else None
            if self.bar is not None:
                self.bar.update(row["step"] - self.bar.n)
                post = f"loss {row['loss']:.3f}, {console.human(row['tokens_per_s'])} tok/s"
                if row.get("mfu") is not None:
                    post += f", MFU {100 * row['mfu']:.1f}%"
                self.bar.set_postfix_str(post)
            else:
                console.say(window_line(row, self.cfg.steps, eta), progress=True)
        if evaluated:
            console.say(evaluated, progress=True)
