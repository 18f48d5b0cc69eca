"""Mixing sources in the training feed: every slot comes from the source the Mixer picked, each
source in its own seeded order, the realised mix holds the weights, and a saved position
resumes exactly; the length curriculum's row split keeps documents apart."""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raylm.data.loader import make_batch, split_rows
from raylm.data.mixed_loader import MixedBatches, source_seed
from raylm.data.mixing import MixConfig, Mixer
from raylm.data.position import global_order, position_from_dict

L, B, W, WINDOW, SEED = 4, 5, 2, 64, 11
SIZES = {"web": 300, "code": 120}
BASE = {"web": 0, "code": 1_000_000}  # the first token of a row tells its source and index
MIX = MixConfig(weights={"web": 0.7, "code": 0.3}, max_epochs=10)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, str]:
    out = {}
    for name, n in SIZES.items():
        d = tmp_path_factory.mktemp(name)
        ids = np.arange(n, dtype=np.int64)
        tokens = (BASE[name] + ids[:, None] * L + np.arange(L)).astype(np.int32)
        pq.write_table(pa.table({
            "seq_id": pa.array(ids),
            "tokens": pa.array(tokens.tolist(), type=pa.list_(pa.int32())),
            "cu_seqlens": pa.array([[0, L]] * n, type=pa.list_(pa.int32())),
        }), d / "shard-00000.parquet", row_group_size=50)
        out[name] = str(d)
    return out


def run(sources, steps: int, position=None) -> tuple[list[list[list[tuple[str, int]]]], object]:
    """``out[step][rank]``: (source, seq_id) of every row of both ranks, and the position after."""
    loaders = [MixedBatches(sources, MIX, B, r, W, position, seed=SEED, window=WINDOW) for r in range(W)]
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # up-sampling warnings: code repeats in this test
        for _ in range(steps):
            step = []
            for it in loaders:
                first = next(it)["input_ids"][:, 0].numpy()
                step.append([("code" if t >= BASE["code"] else "web", (t - BASE["code" if t >= BASE["code"] else "web"]) // L)
                             for t in first.tolist()])
            out.append(step)
    positions = [it.position for it in loaders]
    for it in loaders:
        it.close()
    assert all(p == positions[0] for p in positions)  # every rank agrees on where the run is
    return out, positions[0]


def test_slots_follow_the_mixer_and_each_source_its_own_order(ray_session, sources):
    steps = 60  # 600 sequences: code (120) is repeated about 1.5 times
    out, position = run(sources, steps)
    flat = [row for step in out for rank in step for row in rank]
    mixer = Mixer(MIX, SIZES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        picks = [mixer.next() for _ in range(len(flat))]
    assert [s for s, _ in flat] == [s for s, _ in picks]
    for name, n in SIZES.items():
        seen = [i for s, i in flat if s == name]
        order = np.concatenate([global_order(n, WINDOW, source_seed(SEED, name), e) for e in range(4)])
        assert seen == order[:len(seen)].tolist()  # whole epochs of the source, each in its seeded order
    for lo in range(0, len(flat) - 200 + 1, 10):  # every window of 200 sequences: within 1%
        share = sum(s == "code" for s, _ in flat[lo:lo + 200]) / 200
        assert abs(share - 0.3) <= 0.01
    assert position.sequences_seen == len(flat)


def test_saved_position_resumes_exactly(ray_session, sources):
    full, _ = run(sources, 30)
    first, position = run(sources, 12)
    restored = position_from_dict(position.state_dict())
    rest, _ = run(sources, 18, restored)
    assert first + rest == full


def test_a_changed_world_size_or_source_is_refused(ray_session, sources):
    _, position = run(sources, 2)
    with pytest.raises(ValueError, match="world_size"):
        MixedBatches(sources, MIX, B, 0, W + 1, position, seed=SEED, window=WINDOW)
    with pytest.raises(ValueError, match="no data"):
        MixedBatches({"web": sources["web"]}, MIX, B, 0, W, seed=SEED, window=WINDOW)


def test_split_rows_cuts_rows_at_new_boundaries():
    tokens = np.arange(16, dtype=np.int32).reshape(2, 8)
    batch = make_batch(np.array([0, 1]), tokens, [np.array([0, 3, 8]), np.array([0, 8])])
    short = split_rows(batch, 4)
    assert short["input_ids"].shape == (4, 4)
    assert short["cu_seqlens"].tolist() == [0, 3, 4, 8, 12, 16]
    assert short["position_ids"].tolist() == [[0, 1, 2, 0], [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]
    labels = short["labels"].reshape(-1)
    assert (labels[torch.tensor([2, 3, 7, 11, 15])] == -100).all()  # no label across a boundary or cut
    assert labels[0].item() == 1 and labels[8].item() == 9
    assert split_rows(batch, 8) is batch
    with pytest.raises(ValueError, match="divide"):
        split_rows(batch, 3)
