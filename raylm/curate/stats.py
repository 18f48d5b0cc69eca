"""Counting what every step did, so that ``input = kept + sum(dropped)`` can be checked.

Row steps report per batch to one small actor (documents and bytes in, drops by reason,
their own counters, seconds), or, inside a per-file task, to a local ``Telemetry`` that is
saved with the file's output. The sink returns exact kept / dropped counts from what it
wrote; ``build_stats`` puts both into ``stats.json``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import ray


class Telemetry:
    """Per-step telemetry (documents and bytes in, drops by reason, seconds, the step's own
    counters), summed. Used as is inside a task, or as ``StatsActor`` by every task of a run."""

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, Any]] = {}
        self.read: dict[str, int] = {}
        """Records read per read unit, set once the unit is read whole (a retried or re-run
        read sets its unit again, never adds): the run's input, counted apart from the sink."""

    def set_read(self, counts: dict[str, int]) -> None:
        self.read.update(counts)

    def records_read(self) -> int:
        return sum(self.read.values())

    def add(self, step: str, docs_in: int, bytes_in: int, dropped: dict[str, int],
            seconds: float, counters: dict[str, int]) -> None:
        s = self.steps.setdefault(step, {"docs_in": 0, "bytes_in": 0, "dropped": Counter(),
                                         "seconds": 0.0, "counters": Counter()})
        s["docs_in"] += docs_in
        s["bytes_in"] += bytes_in
        s["seconds"] += seconds
        s["dropped"].update(dropped)
        s["counters"].update(counters)

    def add_all(self, steps: dict[str, dict[str, Any]]) -> None:
        """Add the output of another ``get()`` (e.g. saved with a finished input file)."""
        for step, t in steps.items():
            self.add(step, t["docs_in"], t["bytes_in"], t["dropped"], t["seconds"], t["counters"])

    def get(self) -> dict[str, dict[str, Any]]:
        return {k: {**v, "dropped": dict(v["dropped"]), "counters": dict(v["counters"])} for k, v in self.steps.items()}


StatsActor = ray.remote(num_cpus=0)(Telemetry)


def stats_actor() -> Any:
    """A ``StatsActor`` on this (the driver's) node: the run's counters survive the loss of any
    worker node, as the driver itself must."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return StatsActor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()


def merge_sink_results(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the per-write-task results of the sink."""
    kept = kept_bytes = 0
    hist: list[int] = []
    langs: Counter = Counter()
    dropped: dict[str, Counter] = defaultdict(Counter)
    dropped_bytes: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        kept += r["kept"]
        kept_bytes += r["kept_bytes"]
        hist = [x + y for x, y in zip(hist, r["length_hist"])] if hist else list(r["length_hist"])
        langs.update(r.get("langs", {}))
        for (step, reason), n in r["dropped"].items():
            dropped[step][reason] += n
        for (step, reason), n in r["dropped_bytes"].items():
            dropped_bytes[step][reason] += n
    return {"kept": kept, "kept_bytes": kept_bytes, "length_hist": hist, "langs": dict(langs),
            "dropped": {k: dict(v) for k, v in dropped.items()},
            "dropped_bytes": {k: dict(v) for k, v in dropped_bytes.items()}}


def build_stats(step_names: list[str], sink: dict[str, Any], telemetry: dict[str, dict[str, Any]],
                seconds: float, input_bytes: int, records_read: int) -> dict[str, Any]:
    """stats.json: the records read (counted per read unit as it was read), the totals from
    the sink (what was written), per-step rows in pipeline order; ``conservation_ok`` when
    every record read was written as kept or as dropped for a reason."""
    dropped_total = sum(n for reasons in sink["dropped"].values() for n in reasons.values())
    docs_in = records_read
    steps = []
    alive = docs_in
    for name in ["read", *step_names]:
        drops = sink["dropped"].get(name, {})
        t = telemetry.get(name, {})
        row = {
            "step": name,
            "docs_in": alive,
            "bytes_in": t.get("bytes_in", input_bytes if name == "read" else 0),
            "kept": alive - sum(drops.values()),
            "dropped": dict(sorted(drops.items())),
            "dropped_bytes": dict(sorted(sink["dropped_bytes"].get(name, {}).items())),
            "seconds": round(t.get("seconds", 0.0), 3),
        }
        if t.get("counters"):
            row["counters"] = dict(sorted(t["counters"].items()))
        steps.append(row)
        alive = row["kept"]
    return {
        "documents_in": docs_in,
        "kept": sink["kept"],
        "dropped": dropped_total,
        "kept_bytes": sink["kept_bytes"],
        "input_bytes": input_bytes,
        "seconds": round(seconds, 3),
        "conservation_ok": docs_in == sink["kept"] + dropped_total and alive == sink["kept"],
        "steps": steps,
        "kept_length_hist": sink["length_hist"],
        "kept_languages": dict(sorted(sink["langs"].items(), key=lambda kv: -kv[1])),
    }


def summary_table(stats: dict[str, Any]) -> str:
    """A plain-text table of the steps for the terminal."""
    lines = [f"{'step':<16}{'docs in':>10}{'kept':>10}{'dropped':>10}{'seconds':>10}  top reasons"]
    for s in stats["steps"]:
        reasons = sorted(s["dropped"].items(), key=lambda kv: -kv[1])[:3]
        top = ", ".join(f"{r}={n}" for r, n in reasons)
        lines.append(f"{s['step']:<16}{s['docs_in']:>10}{s['kept']:>10}{s['docs_in'] - s['kept']:>10}"
                     f"{s['seconds']:>10.1f}  {top}")
    mb = stats["input_bytes"] / 1e6
    lines.append(f"in {stats['documents_in']} docs ({mb:.1f} MB) -> kept {stats['kept']}, "
                 f"dropped {stats['dropped']} in {stats['seconds']:.1f}s "
                 f"({mb / max(stats['seconds'], 1e-9):.1f} MB/s)")
    return "\n".join(lines)
