"""Write curated documents to ``OUT/data`` and quarantined ones to ``OUT/rejected``.

A Ray Data ``Datasink``: each write task writes one Parquet file of kept rows and one of
rejected rows (with ``step`` and ``reason``) and returns exact counts, which the driver sums
in ``on_write_complete``. Internal columns are not written.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raylm.curate import schema as S
from raylm.curate.runner import concat, live_mask
from raylm.sinks import FolderSink
from raylm.storage import filesystem


class CurateSink(FolderSink):
    def __init__(self, out: str, write_rejected: bool = True, rows_per_file: int = 50_000) -> None:
        super().__init__(out)
        self.out, self.write_rejected, self.rows_per_file = out, write_rejected, rows_per_file
        self.results: list[dict[str, Any]] = []

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def on_write_start(self, schema=None) -> None:
        fs, root = filesystem(self.out)
        for sub in ("data", "rejected"):
            fs.create_dir(f"{root}/{sub}", recursive=True)

    def write(self, blocks, ctx) -> dict[str, Any]:
        table = concat([pa.table(b) if not isinstance(b, pa.Table) else b for b in blocks])
        fs, root = filesystem(self.out)
        name = self.part_name(ctx)
        mask = live_mask(table)
        kept = table.filter(mask).drop_columns(list(S.INTERNAL))
        rejected = table.filter(pc.invert(mask))
        result = {"kept": kept.num_rows, "kept_bytes": _bytes(kept), "dropped": Counter(), "dropped_bytes": Counter(),
                  "length_hist": length_histogram(kept), "langs": Counter()}
        if "lang" in kept.column_names:
            result["langs"].update(kept.column("lang").to_pylist())
        if kept.num_rows:
            pq.write_table(kept, f"{root}/data/{name}", filesystem=fs)
        if rejected.num_rows:
            lens = pc.binary_length(rejected.column(S.TEXT)).to_pylist()
            for step, reason, n in zip(rejected.column(S.DROP_STEP).to_pylist(),
                                       rejected.column(S.DROP_REASON).to_pylist(), lens):
                result["dropped"][(step, reason)] += 1
                result["dropped_bytes"][(step, reason)] += n or 0
            if self.write_rejected:
                out = rejected.drop_columns([S.KEY]).rename_columns(
                    [S.REJECT_STEP if c == S.DROP_STEP else S.REJECT_REASON if c == S.DROP_REASON else c
                     for c in rejected.drop_columns([S.KEY]).column_names])
                pq.write_table(out, f"{root}/rejected/{name}", filesystem=fs)
        return result

    def on_write_complete(self, write_result) -> None:
        self.results = list(write_result.write_returns)


LENGTH_BINS = np.logspace(0, 8, 33)  # document length in UTF-8 bytes, 1 B .. 100 MB


def length_histogram(table: pa.Table) -> list[int]:
    if not table.num_rows:
        return [0] * (len(LENGTH_BINS) - 1)
    lens = pc.binary_length(table.column(S.TEXT)).to_numpy(zero_copy_only=False)
    return np.histogram(np.clip(lens, 1, None), LENGTH_BINS)[0].tolist()


def _bytes(table: pa.Table) -> int:
    if not table.num_rows:
        return 0
    return pc.sum(pc.binary_length(table.column(S.TEXT))).as_py() or 0
