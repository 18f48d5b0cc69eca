"""A curate run's saved progress under ``OUT/_work/``, so a killed run resumes where it was.

Two kinds of work are kept, the expensive ones, each written before it counts as done:

* **per input file**: the documents of one input file after the row steps that come before the
  first dedup step (normalise, quality, langid, PII: the bulk of the CPU time) are written as
  ``files/<index>-<part>.parquet``; ``files/<index>.json`` (its part list, rows and the steps'
  telemetry) is written last, as datatrove marks a finished task. A file without its marker
  is redone from the start, and its stray parts are deleted.
* **per dedup step**: the decision (removed keys, duplicate pairs, frequent lines), which is
  small, as Parquet tables under ``steps/<n>-<name>/`` with ``done.json`` written last.

``run.json`` is the run's fingerprint: the config (without ``ray``, which does not change the
output) and every input's path, size and modification time. A rerun into the same output
folder resumes only with the same fingerprint; ``--overwrite`` starts over. The whole folder
goes once ``stats.json`` is written.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

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
    def part_name(index: int, part: int) -> str:
        return f"{index:06d}-{part:04d}.parquet"

    def part_path(self, name: str) -> str:
        """Path of a part in ``self.fs`` (markers list parts by name, so the folder can move)."""
        return f"{self.root}/files/{name}"

    def mark_file_done(self, index: int, parts: list[str], rows: int, telemetry: dict[str, Any]) -> None:
        self._write_json(f"{self.root}/files/{index:06d}.json",
                         {"index": index, "parts": parts, "rows": rows, "telemetry": telemetry})

    def done_files(self) -> dict[int, dict[str, Any]]:
        """Markers of the input files whose documents are all written, by file index."""
        folder = f"{self.root}/files"
        if self.fs.get_file_info(folder).type != pafs.FileType.Directory:
            return {}
        done = {}
        for info in self.fs.get_file_info(pafs.FileSelector(folder)):
            if info.base_name.endswith(".json"):
                marker = self._read_json(info.path)
                if marker is not None:
                    done[marker["index"]] = marker
        return done

    def clear_unfinished(self, done: dict[int, dict[str, Any]]) -> int:
        """Delete the parts no marker lists (a killed file's); returns how many went."""
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

    def _step_dir(self, key: str) -> str:
        return f"{self.root}/steps/{key}"

    def load_decision(self, key: str) -> tuple[dict[str, pa.Table], dict[str, Any]] | None:
        """A finished step's tables and telemetry, or None."""
        folder = self._step_dir(key)
        done = self._read_json(f"{folder}/done.json")
        if done is None:
            return None
        tables = {name: pq.read_table(f"{folder}/{name}.parquet", filesystem=self.fs) for name in done["tables"]}
        return tables, done["telemetry"]

    def save_decision(self, key: str, tables: dict[str, pa.Table], telemetry: dict[str, Any]) -> None:
        folder = self._step_dir(key)
        self.fs.create_dir(folder, recursive=True)
        for name, table in tables.items():
            pq.write_table(table, f"{folder}/{name}.parquet", filesystem=self.fs)
        self._write_json(f"{folder}/done.json", {"tables": sorted(tables), "telemetry": telemetry})
