"""A real 2-worker run on two mixed sources with a length curriculum: the realised mix is
logged and holds the weights, and the curriculum's length is used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from raylm.train.config import train_config
from raylm.train.runlog import read_metrics
from raylm.train.trainer import fit, run_dir
from tests.train.sample import SEQ_LEN, config


@pytest.fixture(scope="module")
def two_sources(shards, tmp_path_factory) -> dict[str, str]:
    """The packed sample split in two sources (even and odd seq_ids), each with dense seq_ids."""
    table = pq.read_table(shards)
    out = {}
    for name, parity in (("even", 0), ("odd", 1)):
        part = table.filter(pc.equal(pc.bit_wise_and(table["seq_id"], 1), parity))
        part = part.set_column(0, "seq_id", pc.cast(pc.divide(part["seq_id"], 2), "int64"))
        d = tmp_path_factory.mktemp(name)
        pq.write_table(part, d / "shard-00000.parquet", row_group_size=32)
        out[name] = str(d)
    return out


def mixed(two_sources, tmp_path: Path, name: str, **kw) -> dict:
    d = config(two_sources["even"], tmp_path, name, 2, **{"log_every": 2, **kw})
    d["data"] = {"sources": two_sources, "mix": {"weights": {"even": 0.75, "odd": 0.25}},
                 "seq_len_schedule": [[0, SEQ_LEN // 2], [4, SEQ_LEN]], "window": 64, "prefetch": 1}
    return d


def test_mixed_run_logs_its_mix_and_its_length_schedule(ray_session, two_sources, tmp_path):
    """A killed mixed run resumes exactly: the FIM evaluation run of ``test_eval.py`` (two mixed
    sources) against its uninterrupted twin, and the mixer's saved position in
    ``tests/data/test_mixed_loader.py``."""
    d = mixed(two_sources, tmp_path, "mixed")
    assert fit(train_config(d)).error is None
    rows = read_metrics(run_dir(train_config(d)))
    assert [r["step"] for r in rows] == [2, 3, 4, 6, 8]  # every 2 steps and at the step-3 checkpoint
    assert [r["seq_len"] for r in rows] == [SEQ_LEN // 2] * 3 + [SEQ_LEN] * 2  # updates 0-3 short, then full
    for r in rows:  # 8 or 16 sequences per log window: 3 even to 1 odd
        assert r["mix/even"] == pytest.approx(0.75) and r["mix/odd"] == pytest.approx(0.25)
    loss = [r["loss"] for r in rows]
    assert np.isfinite(loss).all() and loss[-1] < loss[0]


def test_mix_config_errors_name_the_key():
    from raylm.config import ConfigError

    base = {"model": {"flavor": "debug"}}
    with pytest.raises(ConfigError, match="either data.path"):
        train_config({**base, "data": {"path": "x", "sources": {"a": "y"}, "mix": {"weights": {"a": 1}}}})
    with pytest.raises(ConfigError, match="data.mix: the weights"):
        train_config({**base, "data": {"sources": {"a": "y"}}})
    with pytest.raises(ConfigError, match=r"sources \['b'\] are not in"):
        train_config({**base, "data": {"sources": {"a": "y"}, "mix": {"weights": {"a": 1, "b": 1}}}})
    with pytest.raises(ConfigError, match="weight -1"):
        train_config({**base, "data": {"sources": {"a": "y"}, "mix": {"weights": {"a": -1}}}})
    with pytest.raises(ConfigError, match="step 0"):
        train_config({**base, "data": {"path": "x", "seq_len_schedule": [[5, 64]]}})
