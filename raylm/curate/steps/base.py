"""The contract every curation step follows.

A *row step* (datatrove's filter/mapper, NeMo Curator's stage) sees only live documents: a
``pyarrow.Table`` batch with at least ``id`` and ``text``. It returns a ``StepResult`` with a
table of the same rows in the same order (it may rewrite ``text`` and add columns), an
optional drop reason per row (``None`` keeps the row) and optional counters for the stats.
The pipeline does the rest: it hides dropped rows from the step, records who dropped what,
times the step and runs it as Ray tasks, or as an actor pool when ``needs_actor`` is set
(``setup()`` then runs once per actor, e.g. to load a model).

A *dataset step* (the dedups) needs to see the whole corpus; it implements ``run(ds, ctx)``
on a ``ray.data.Dataset`` and is built from the same batch-level pieces.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

if TYPE_CHECKING:
    import ray.data


@dataclasses.dataclass(kw_only=True)
class StepConfig:
    """Base of every step's config; subclasses add their own fields with defaults."""

    def validate(self) -> None:
        """Raise ``raylm.config.ConfigError`` for values that cannot work."""


@dataclasses.dataclass
class StepResult:
    table: pa.Table
    reasons: list[str | None] | None = None
    counters: Mapping[str, int] = dataclasses.field(default_factory=dict)


class RowStep:
    """A step that maps a batch of live documents to a batch of the same documents."""

    name: ClassVar[str]
    Config: ClassVar[type[StepConfig]]
    needs_actor: ClassVar[bool] = False

    def __init__(self, cfg: StepConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        """Load heavy state once per worker (models, tables). Called before ``apply``."""

    def apply(self, batch: pa.Table) -> StepResult:
        raise NotImplementedError


class DatasetStep:
    """A step that needs the whole corpus (deduplication). ``run`` returns the new dataset."""

    name: ClassVar[str]
    Config: ClassVar[type[StepConfig]]

    def __init__(self, cfg: StepConfig) -> None:
        self.cfg = cfg

    def run(self, ds: "ray.data.Dataset", ctx: Any) -> "ray.data.Dataset":
        raise NotImplementedError


def replace_text(table: pa.Table, texts: list[str]) -> pa.Table:
    """Return ``table`` with its ``text`` column replaced."""
    idx = table.schema.get_field_index("text")
    return table.set_column(idx, "text", pa.array(texts, type=pa.large_string()))


def set_column(table: pa.Table, name: str, values: Any, type: pa.DataType | None = None) -> pa.Table:
    """Add or replace column ``name``."""
    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, type=type)
    idx = table.schema.get_field_index(name)
    if idx >= 0:
        return table.set_column(idx, name, arr)
    return table.append_column(name, arr)
