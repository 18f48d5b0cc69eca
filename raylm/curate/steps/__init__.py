"""The curation steps by the name a config uses for them.

Modules are imported when a step is built, so an optional heavy dependency is checked then,
at start-up, and not mid-run.
"""

from __future__ import annotations

import importlib

from raylm.curate.steps.base import DatasetStep, RowStep, StepConfig, StepResult

REGISTRY: dict[str, str] = {
    "normalize": "raylm.curate.steps.normalize:Normalize",
    "quality": "raylm.curate.steps.quality:Quality",
    "langid": "raylm.curate.steps.langid:LangID",
    "pii": "raylm.curate.steps.pii:PII",
    "exact_dedup": "raylm.curate.steps.exact_dedup:ExactDedup",
    "line_dedup": "raylm.curate.steps.line_dedup:LineDedup",
    "minhash_dedup": "raylm.curate.steps.minhash_dedup:MinHashDedup",
    "tokenize": "raylm.data.encode:Tokenize",
}


def step_class(name: str) -> type[RowStep] | type[DatasetStep]:
    module, _, attr = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attr)


__all__ = ["REGISTRY", "DatasetStep", "RowStep", "StepConfig", "StepResult", "step_class"]
