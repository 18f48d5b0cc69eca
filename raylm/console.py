"""What a person sees while raylm works: raylm's own lines, a progress bar per long stage on a
terminal, and Ray's internals only when asked for.

Quiet is the default. Ray keeps writing everything to its log files (``<ray tmp>/session_*/logs``),
but only its warnings and errors reach the console, each prefixed by the process that raised it
(``(RayTrainWorker pid=...)``):

- the driver's ``ray`` logger and every worker's root logger log at WARNING
  (``ray.init(logging_level=..., logging_config=ray.LoggingConfig(...))``);
- Ray Train's own ``ray.train`` lines (worker-group start, each ``Reporting training result``)
  at WARNING (``RunConfig(logging_config=ray.train.LoggingConfig(...))``, see ``train_logging``);
- Ray Data's ``ray.data`` logger at WARNING in every process (``RAY_DATA_LOG_LEVEL``), and Ray
  Data's progress UI (an operator bar per dataset on a terminal, ``logging_progress`` blocks off
  one) off, because raylm draws one bar per stage of its own.

``raylm -v`` (or ``RAYLM_LOG_LEVEL=INFO``; ``-vv`` or ``DEBUG``) gives Ray's output back as Ray
prints it. The level travels to every Ray worker in ``RAYLM_LOG_LEVEL`` (``ray_env``).

``stage(...)`` is the progress of one stage: a tqdm bar when stderr is a terminal, else one
compact line when the stage ends (a Ray job's log, CI, ``nohup``); progress goes to stderr, so a
command's result on stdout (``raylm prepare``'s JSON) stays clean.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

from tqdm import tqdm

ENV = "RAYLM_LOG_LEVEL"
"""The environment variable that holds the console's level (WARNING: quiet; INFO, DEBUG: Ray's too)."""

# counters a stage may keep, shown as rates: name -> (label, scale)
_RATES = {"docs": ("docs/s", 1.0), "bytes": ("MB/s", 1e-6), "tokens": ("tok/s", 1.0)}


def log_level() -> int:
    """The console's level from ``RAYLM_LOG_LEVEL`` (default WARNING)."""
    level = logging.getLevelName(os.environ.get(ENV, "WARNING").strip().upper())
    return level if isinstance(level, int) else logging.WARNING


def set_verbosity(count: int) -> None:
    """``-v`` (INFO) or ``-vv`` (DEBUG) from the command line; 0 leaves ``RAYLM_LOG_LEVEL`` as set."""
    if count:
        os.environ[ENV] = "DEBUG" if count > 1 else "INFO"


def loud() -> bool:
    """Whether Ray's own INFO output is wanted (``-v``)."""
    return log_level() < logging.WARNING


def ray_env() -> dict[str, str]:
    """Environment variables every Ray process of a raylm job gets (workers log as the driver)."""
    env = {ENV: logging.getLevelName(log_level())}
    if not loud():
        env["RAY_DATA_LOG_LEVEL"] = "WARNING"
    return env


def ray_init_kwargs() -> dict[str, Any]:
    """``ray.init`` arguments for the console's level: quiet logs WARNING and up on the driver;
    workers' output still reaches it, prefixed by the worker (``ray.LoggingConfig`` is not used:
    with it Ray prints worker lines without that prefix)."""
    if loud():
        return {"logging_level": logging.getLevelName(log_level()), "log_to_driver": True}
    # Ray's notice that a new local cluster has token authentication on (its secure default);
    # its warning that authentication is off still shows
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        lambda record: not record.getMessage().startswith("Token authentication is enabled"))
    return {"logging_level": "WARNING", "log_to_driver": True}


def train_logging():
    """``RunConfig.logging_config``: Ray Train's own lines at the console's level."""
    from ray.train import LoggingConfig

    return LoggingConfig(log_level="INFO" if loud() else "WARNING")


def quiet_ray_data(worker: bool = False) -> None:
    """Ray Data in this process draws no progress of its own (raylm's stages do): on the driver
    unless ``-v``, always in a Train worker (a bar per shuffle window is noise); and unless
    ``-v`` it logs warnings only, and not the one that says its bars are off."""
    if loud() and not worker:
        return
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    if not loud():  # RAY_DATA_LOG_LEVEL is read when ray.data is imported: this process may be late
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        # Ray Data's warning, when a dataset is materialised while the run's own earlier tasks
        # still hold every CPU, that "the Dataset job will hang": it waits for them, as meant
        dataset = logging.getLogger("ray.data.dataset")
        if not any(getattr(f, "raylm", False) for f in dataset.filters):
            dataset.addFilter(_NoCpuNotice())


class _NoCpuNotice(logging.Filter):
    raylm = True

    def filter(self, record: logging.LogRecord) -> bool:
        return "does not have any available CPUs" not in record.getMessage()


def quiet_train_worker() -> None:
    """In a Ray Train worker: Ray Data as ``quiet_ray_data(worker=True)``, and unless ``-v`` no
    ``Reporting training result N: TrainingReport(...)`` line per report. Ray 2.60 logs that line
    under a logger named by its file's path (``logging.getLogger(__file__)``), outside
    ``ray.train``, so ``RunConfig.logging_config`` (``train_logging``) does not reach it."""
    quiet_ray_data(worker=True)
    if not loud():
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(logging.WARNING)


def interactive() -> bool:
    """A person is watching a terminal: progress bars, not lines."""
    return sys.stderr.isatty()


def bar(**kwargs: Any) -> tqdm:
    """A tqdm bar on stderr that follows the terminal's width (a pseudo-terminal that reports
    no width, as some CI and ``script`` sessions do, gets 100 columns instead of an empty bar)."""
    try:
        width = os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        width = 0
    return tqdm(file=sys.stderr, dynamic_ncols=width > 0, ncols=None if width else 100, **kwargs)


def say(text: str = "", progress: bool = False) -> None:
    """One of raylm's own lines (above any bar that is drawing): on stdout, or with ``progress``
    on stderr, where progress goes, so that a command's result on stdout (JSON) stays clean."""
    stream = sys.stderr if progress else sys.stdout
    tqdm.write(text, file=stream)
    stream.flush()


def human(n: float, unit: str = "") -> str:
    """``236544`` -> ``237k``; ``1.2e9`` -> ``1.2G``; ``126.45`` -> ``126``."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            v = n / div
            return f"{v:.1f}{suffix}{unit}" if v < 100 else f"{v:.0f}{suffix}{unit}"
    return f"{n:.3g}{unit}"


def duration(seconds: float) -> str:
    """``75.3`` -> ``1m15s``; ``3.21`` -> ``3.2s``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


class Stage:
    """The progress of one stage: ``advance(n, docs=..., bytes=...)`` as work finishes,
    ``phase(text)`` when it moves on to a part without a count, ``done(summary)`` at the end.

    On a terminal a tqdm bar (the counters as rates: docs/s, MB/s, tok/s); elsewhere one line
    when the stage ends: ``name  summary  in 3.2s (69 docs/s, 0.12 MB/s)``."""

    def __init__(self, name: str, total: int | None = None, unit: str | None = None) -> None:
        self.name, self.total, self.unit = name, total, unit
        self.counts: dict[str, float] = {}
        self.summary: str | None = None
        self.t0 = time.perf_counter()
        self.bar = None
        if interactive():  # without a unit nothing is counted: the bar shows the time it takes
            self.bar = bar(total=total, desc=name, unit=unit or "it",
                           **({} if unit else {"bar_format": "{desc} [{elapsed}{postfix}]"}))
        self._closed = threading.Event()
        if self.bar is not None:  # the elapsed time moves on while a part without a count runs
            threading.Thread(target=self._tick, name=f"raylm-{name}-bar", daemon=True).start()

    def _tick(self) -> None:
        while not self._closed.wait(0.5):
            self.bar.refresh()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def rates(self) -> str:
        dt = max(self.seconds, 1e-9)
        shown = f"{self.unit}s" if self.bar is not None and self.unit else None  # tqdm shows that rate
        return ", ".join(f"{human(self.counts[k] * scale / dt)} {label}" if scale == 1.0
                         else f"{self.counts[k] * scale / dt:.2f} {label}"
                         for k, (label, scale) in _RATES.items() if self.counts.get(k) and k != shown)

    def advance(self, n: int = 1, **counts: float) -> None:
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0) + value
        if self.bar is not None:
            self.bar.update(n)
            if counts:
                self.bar.set_postfix_str(self.rates(), refresh=False)

    def phase(self, text: str) -> None:
        """The stage goes on with ``text`` (``tokenizer: training``), without a count."""
        if self.bar is not None:
            self.bar.set_description_str(f"{self.name}: {text}")

    def done(self, summary: str) -> None:
        self.summary = summary

    def close(self, failed: bool = False) -> None:
        self._closed.set()
        rates = self.rates()
        tail = f" in {duration(self.seconds)}" + (f" ({rates})" if rates else "")
        if self.bar is not None:
            if self.summary:
                self.bar.set_description_str(self.name)
                self.bar.set_postfix_str(", ".join(x for x in (self.summary, rates) if x), refresh=False)
            self.bar.close()
        elif not failed:
            say(f"{self.name:<10} {self.summary or ''}{tail}".rstrip(), progress=True)

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, kind, *_) -> None:
        self.close(failed=kind is not None)


def stage(name: str, total: int | None = None, unit: str | None = None) -> Stage:
    """``with console.stage("curate", total=len(files), unit="file") as s: ... s.advance(...)``;
    without ``unit`` the stage counts nothing and its bar shows the time it takes."""
    return Stage(name, total, unit)
