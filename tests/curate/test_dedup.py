"""The distributed dedup machinery: pairs, connected components, keyed decisions (real Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from raylm.curate.dedup import pairs as P
from raylm.curate.dedup.components import connected_components
from raylm.curate.dedup.keyed import KeyedTable, write_keyed


class _Ctx:
    """What the dedup functions read from a run's RunContext."""

    def __init__(self, num_shards: int = 4, batch_size: int = 1000) -> None:
        self.num_shards, self.batch_size, self.remote_args = num_shards, batch_size, {}


def test_bucket_pairs_all_pairs_and_star():
    a, b = P.pairs_in_buckets(np.array([1, 1, 1, 2, 2, 2, 2], np.uint64), np.array([30, 10, 20, 5, 6, 7, 8]), 3)
    assert set(zip(a.tolist(), b.tolist())) == {(10, 20), (10, 30), (20, 30), (5, 6), (5, 7), (5, 8)}


def test_pair_counts_sum_across_partitions():
    """A pair's shared buckets found in two bucket partitions are summed in its pair partition."""
    part1 = pa.table({"shard": pa.array([0] * 4, pa.int32()), "bucket": pa.array([1, 1, 2, 2], pa.uint64()),
                      "key": pa.array([7, 3, 3, 7], pa.int64())})
    part2 = pa.table({"shard": pa.array([1] * 3, pa.int32()), "bucket": pa.array([9, 9, 9], pa.uint64()),
                      "key": pa.array([3, 7, 8], pa.int64())})
    rows = pa.concat_tables([P.candidate_pairs(part1, 16, 4), P.candidate_pairs(part2, 16, 4)])
    assert rows.num_rows == 4  # (3, 7) twice: once per bucket partition, counted 2 and 1
    v = P.verify_pairs(rows, min_count=3)
    got = {(a, b): ok for a, b, ok in zip(*(v.column(c).to_pylist() for c in ("a", "b", "ok")))}
    assert got == {(3, 7): True, (3, 8): False, (7, 8): False}


def _reference_roots(edges: list[tuple[int, int]]) -> dict[int, int]:
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in parent}


def test_connected_components_match_union_find(ray_session):
    """Paths, a star, random sparse clusters and a long chain in shuffled order: the components
    and their smallest keys equal a union-find's, and the rounds converge."""
    import ray

    rng = np.random.default_rng(0)
    edges = [(i, i + 1) for i in range(1000, 1200)]  # a chain of 201 keys: many rounds of label passing
    edges += [(5000, 5000 + i) for i in range(1, 50)]  # a star
    for c in range(300):  # small random clusters, as near duplicates make them
        base = 10_000 + 10 * c
        n = int(rng.integers(2, 6))
        edges += [(base + int(rng.integers(0, i)), base + i) for i in range(1, n)]
    edges = [(b, a) if rng.random() < 0.5 else (a, b) for a, b in edges]
    rng.shuffle(edges)
    ds = ray.data.from_arrow(pa.table({"a": pa.array([a for a, _ in edges], pa.int64()),
                                       "b": pa.array([b for _, b in edges], pa.int64())}))
    cc = connected_components(ds.repartition(8), _Ctx())
    got = cc.roots.to_pandas()
    got = dict(zip(got["key"].tolist(), got["root"].tolist()))  # (root, root) repeats: one value
    assert got == _reference_roots(edges)
    assert cc.converged and cc.changed_per_round[-1] == 0
    assert 2 <= cc.rounds <= 16, cc.changed_per_round


def test_keyed_table_lookup_reads_only_its_keys(ray_session, tmp_path):
    import ray

    keys = np.arange(0, 60_000, 3, dtype=np.int64)  # 20,000 keys: 3 row groups or more
    shuffled = np.random.default_rng(1).permutation(keys)
    ds = ray.data.from_arrow(pa.table({"key": pa.array(shuffled), "root": pa.array(shuffled // 2)})).repartition(5)
    table = write_keyed(ds, str(tmp_path / "t"))
    assert table.rows == len(keys) and len(table.lo) >= 3
    assert np.all(table.lo <= table.hi)
    again = KeyedTable.from_dict(table.to_dict())
    found = again.lookup(np.array([3, 4, 59_997, 30_000, 100_000]))
    assert sorted(zip(found.column("key").to_pylist(), found.column("root").to_pylist())) == [
        (3, 1), (30_000, 15_000), (59_997, 29_998)]
    assert again.lookup(np.array([-5, 70_000])) is None  # outside every row group: nothing read


def test_keyed_table_unique_keeps_one_row_per_key(ray_session, tmp_path):
    import ray

    ds = ray.data.from_arrow(pa.table({"key": pa.array([5, 5, 5, 9, 1, 9], pa.int64()),
                                       "root": pa.array([1, 1, 1, 1, 1, 1], pa.int64())}))
    table = write_keyed(ds, str(tmp_path / "t"), unique=True)
    assert table.rows == 3
    assert sorted(table.lookup(np.array([1, 5, 9])).column("key").to_pylist()) == [1, 5, 9]


@pytest.mark.parametrize("n", [0])
def test_empty_decision(ray_session, tmp_path, n):
    import ray

    ds = ray.data.from_arrow(pa.table({"key": pa.array([], pa.int64()), "root": pa.array([], pa.int64())}))
    table = write_keyed(ds, str(tmp_path / "t"), unique=True)
    assert table.rows == n and table.lookup(np.array([1, 2])) is None
