"""``raylm tune``'s console: a table of trials, one row as each trial finishes.

A Ray Tune ``Callback`` (Tune runs its callbacks on the driver): the row shows the trial's
values of the searched keys, its last and best reported metric, how many reports it made
(fewer than the others: ASHA stopped it early) and how it ended. On a terminal a bar over the
trials stands under the table. Like all progress it goes to stderr (the best values, the
command's result, go to stdout).
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from raylm import console


class TrialTable(Callback):
    def __init__(self, keys: list[str], metric: str, mode: str, total: int | None = None) -> None:
        self.keys, self.metric, self.mode = keys, metric, mode
        self.widths = [max(12, len(k)) for k in keys]
        self.best: dict[str, float] = {}
        self.bar = None
        if console.interactive():
            self.bar = console.bar(total=total, desc="trials", unit="trial")
        console.say("  ".join([f"{'trial':<8}", *(f"{k:>{w}}" for k, w in zip(keys, self.widths)),
                               f"{'last ' + metric:>12}", f"{'best ' + metric:>12}", f"{'reports':>7}", "status"]),
                    progress=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info) -> None:
        value = result.get(self.metric)
        if isinstance(value, (int, float)):
            old = self.best.get(trial.trial_id)
            better = old is None or (value < old if self.mode == "min" else value > old)
            self.best[trial.trial_id] = value if better else old

    def _row(self, trial: Any, status: str) -> None:
        result = trial.last_result or {}
        cells = [f"{trial.trial_id[-8:]:<8}"]
        for key, width in zip(self.keys, self.widths):
            value = trial.config.get(key)
            cells.append(f"{value:>{width}.4g}" if isinstance(value, float) else f"{value!s:>{width}}")
        last, best = result.get(self.metric), self.best.get(trial.trial_id)
        cells += [f"{last:>12.4f}" if isinstance(last, (int, float)) else f"{'-':>12}",
                  f"{best:>12.4f}" if best is not None else f"{'-':>12}",
                  f"{result.get('training_iteration', 0):>7}", status]
        console.say("  ".join(cells), progress=True)
        if self.bar is not None:
            self.bar.update(1)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._row(trial, "done")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._row(trial, "ERROR")

    def on_experiment_end(self, trials: list, **info) -> None:
        if self.bar is not None:
            self.bar.close()
