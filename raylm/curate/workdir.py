"""A curate run's saved progress under ``OUT/_work/``, so a killed run resumes where it was.

Two kinds of work are kept, the expensive ones, each written before it counts as done:

* **per read unit** (a file, or one range of a big one: ``raylm.curate.split``): the documents
  of one unit after the row steps that come before the first dedup step (normalise, quality,
  langid, PII: the bulk of the CPU time) are written as ``files/<file>-<unit>-<part>.parquet``;
  ``files/<file>-<unit>.json`` (its part list, rows and the steps' telemetry) is written last,
  as datatrove marks a finished task. A unit without its marker is redone from the start, and
  its stray parts are deleted.
* **per dedup step**: the decision (cluster members and their roots, duplicate rows, frequent
  lines' holders), written by the workers as Parquet under ``steps/<n>-<name>/``, with
  ``done.json`` (its index, counters and telemetry) written last by the driver; a step folder
  without it is deleted and decided again.

``run.json`` is the run's fingerprint: the config (without ``ray``, which does not change the
output) and every input's path, size and modification time. A rerun into the same output
folder resumes only with the same fingerprint; ``--overwrite`` starts over. The whole folder
goes once ``stats.json`` is written.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow.fs as pafs

from raylm.storage import InputError, filesystem

WORK = "_work"


def fingerprint(config: dict[str, Any], files: list[str]) -> dict[str, Any]:
    """What the output depends on: the config (minus ``ray`` and ``storage_endpoint``, which say
    where things run and are, not what they hold) and every input's size and mtime."""
    inputs = []
    for path in files:
        fs, p = filesystem(path)
        info = fs.get_file_info(p)
        inputs.append([path, info.size, info.mtime_ns])
    return {"config": {k: v for k, v in config.items() if k not in ("ray", "storage_endpoint")}, "inputs": inputs}


def _differs(saved: dict[str, Any], now: dict[str, Any]) -> str:
    """A short description of the first difference between two fingerprints."""
    if saved.get("inputs") != now["inputs"]:
        return "the inputs (paths, sizes or modification times) differ"
    keys = sorted(set(saved.get("config", {})) | set(now["config"]))
    changed = [k for k in keys if saved.get("config", {}).get(k) != now["config"].get(k)]
    return f"config keys differ: {', '.join(changed)}"


class WorkDir:
    """Paths and markers of ``OUT/_work``; every read and write goes through pyarrow.fs, so an
    object store works as well as a local disk."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.fs, root = filesystem(out)
        self.root = f"{root}/{WORK}"

    # --- the run ---------------------------------------------------------------------------

    def _read_json(self, path: str) -> Any | None:
        """The JSON at ``path``; None if it is missing or was cut short by a kill."""
        try:
            with self.fs.open_input_stream(path) as f:
                return json.loads(f.read().decode("utf-8"))
        except (FileNotFoundError, OSError, ValueError):
            return None

    def _write_json(self, path: str, data: Any) -> None:
        """Write to a temporary name, then move: a reader never sees half a marker."""
        tmp = f"{path}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(json.dumps(data, ensure_ascii=False).encode("utf-8"))
        self.fs.move(tmp, path)

    def exists(self) -> bool:
        return self.fs.get_file_info(f"{self.root}/run.json").type == pafs.FileType.File

    def start(self, print_: dict[str, Any], out: str) -> bool:
        """Begin or resume the run with fingerprint ``print_``; True when resuming."""
        saved = self._read_json(f"{self.root}/run.json")
        if saved is not None:
            if saved != print_:
                raise InputError(f"{out}: holds an unfinished curate run of other inputs or another config "
                                 f"({_differs(saved, print_)}); rerun it as it was to resume, or pass "
                                 "--overwrite to start over")
            return True
        self.fs.create_dir(f"{self.root}/files", recursive=True)
        self._write_json(f"{self.root}/run.json", print_)
        return False

    def remove(self) -> None:
        if self.fs.get_file_info(self.root).type == pafs.FileType.Directory:
            self.fs.delete_dir(self.root)

    # --- per input file --------------------------------------------------------------------

    @staticmethod
    def part_name(unit: str, part: int) -> str:
        """File name of part ``part`` of read unit ``unit`` (``ReadUnit.name``)."""
        return f"{unit}-{part:04d}.parquet"

    def part_path(self, name: str) -> str:
        """Path of a part in ``self.fs`` (markers list parts by name, so the folder can move)."""
        return f"{self.root}/files/{name}"

    def mark_unit_done(self, unit: str, parts: list[str], rows: int, telemetry: dict[str, Any], read: int) -> None:
        """``rows`` written into ``parts`` after the unit's row steps; ``read``: records read."""
        self._write_json(f"{self.root}/files/{unit}.json",
                         {"unit": unit, "parts": parts, "rows": rows, "read": read, "telemetry": telemetry})

    def done_units(self) -> dict[str, dict[str, Any]]:
        """Markers of the read units whose documents are all written, by unit name."""
        folder = f"{self.root}/files"
        if self.fs.get_file_info(folder).type != pafs.FileType.Directory:
            return {}
        done = {}
        for info in self.fs.get_file_info(pafs.FileSelector(folder)):
            if info.base_name.endswith(".json"):
                marker = self._read_json(info.path)
                if marker is not None:
                    done[marker["unit"]] = marker
        return done

    def clear_unfinished(self, done: dict[str, dict[str, Any]]) -> int:
        """Delete the parts no marker lists (a killed unit's); returns how many went."""
        folder = f"{self.root}/files"
        if self.fs.get_file_info(folder).type != pafs.FileType.Directory:
            return 0
        listed = {p for m in done.values() for p in m["parts"]}
        stray = [i.path for i in self.fs.get_file_info(pafs.FileSelector(folder))
                 if not i.base_name.endswith(".json") and i.base_name not in listed]
        for path in stray:
            self.fs.delete_file(path)
        return len(stray)

    # --- per dedup step --------------------------------------------------------------------

    def step_dir(self, key: str) -> str:
        """Path (in ``self.fs``) of dataset step ``key``'s decision folder."""
        return f"{self.root}/steps/{key}"

    def load_decision(self, key: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """A finished step's decision (what ``save_decision`` was given) and telemetry, or None;
        an unfinished step's folder is cleared for the new attempt."""
        folder = self.step_dir(key)
        done = self._read_json(f"{folder}/done.json")
        if done is None:
            if self.fs.get_file_info(folder).type == pafs.FileType.Directory:
                self.fs.delete_dir(folder)
            return None
        return done["decision"], done["telemetry"]

    def save_decision(self, key: str, decision: dict[str, Any], telemetry: dict[str, Any]) -> None:
        """Mark step ``key`` decided: its files are written, ``decision`` says how to read them."""
        self.fs.create_dir(self.step_dir(key), recursive=True)
        self._write_json(f"{self.step_dir(key)}/done.json", {"decision": decision, "telemetry": telemetry})
