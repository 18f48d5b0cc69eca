"""Fixtures shared by the training tests (one Ray session: ``tests/conftest.py``)."""

from __future__ import annotations

import pytest

from tests.train.sample import prepare_sample


@pytest.fixture(scope="session")
def prepared(ray_session, tmp_path_factory) -> dict:
    """``tests.train.sample.prepare_sample``, once for every module that uses it."""
    return prepare_sample(tmp_path_factory.mktemp("prepared"))
