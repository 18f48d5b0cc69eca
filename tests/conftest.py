"""One local Ray for the whole test session (ray.init costs seconds).

``num_cpus=4`` is logical: on a 2-core CI machine it leaves room for Ray Data's read tasks
next to Train workers, which would otherwise starve each other.

Ray Train's controller polls its workers every 2 s by default and watches for spot preemption
every 5 s: on runs of a few seconds that polling is most of the wall time, so the session polls
every 0.2 s and leaves preemption notices (there are none on a laptop) unwatched. Train V2
propagates both variables from the driver to its controller.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_session():
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> str:
    """The sample corpus packed into one token-shard folder (``tests.train.sample.pack_shards``)."""
    from tests.train.sample import pack_shards

    return pack_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="session")
def prepared(ray_session, tmp_path_factory) -> dict:
    """``tests.train.sample.prepare_sample``: the sample corpus through ``raylm prepare`` (two
    sources, held-out splits, FIM, a manifest naming its tokenizer), once for the session."""
    from tests.train.sample import prepare_sample

    return prepare_sample(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="session")
def reference_runs(ray_session, shards, tmp_path_factory) -> dict:
    """``tests.train.sample.REFERENCE_RUNS`` trained once for the session: name -> (config dict,
    Ray's Result). Every Ray Train run costs seconds of worker start-up, so the tests that must
    follow a plain run (DDP and FSDP2 vs one worker, tensor parallel, ZeRO, preemption) share these."""
    from raylm.train.config import train_config
    from raylm.train.trainer import fit
    from tests.train.sample import REFERENCE_RUNS, config

    storage = tmp_path_factory.mktemp("reference-runs")
    out = {}
    for name, (workers, extra) in REFERENCE_RUNS.items():
        d = config(shards, storage, name, workers, **extra)
        result = fit(train_config(d))
        assert result.error is None, f"reference run {name}: {result.error}"
        out[name] = (d, result)
    return out
