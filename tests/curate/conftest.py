"""Curate test fixtures shared by the resume and node-loss tests: the sample corpus cut into
files with cross-file duplicates, and one uninterrupted reference run of the default steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from raylm.config import from_dict
from raylm.curate.pipeline import CurateConfig, run
from tests.curate.runs import STEPS, outputs, write_inputs


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> Path:
    return write_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="session")
def reference(ray_session, inputs, tmp_path_factory) -> tuple[list, list, dict]:
    """What an uninterrupted run of STEPS writes: (data, rejected, stats)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    run(from_dict(CurateConfig, {"steps": STEPS}), [str(inputs)], str(out), quiet=True)
    return outputs(out)
