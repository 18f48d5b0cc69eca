"""One local Ray for the whole test session (ray.init costs seconds).

``num_cpus=4`` is logical: on a 2-core CI machine it leaves room for Ray Data's read tasks
next to Train workers, which would otherwise starve each other.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_session():
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
