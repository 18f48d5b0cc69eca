"""Connected components of the duplicate graph on the cluster: large-star / small-star.

Kiveris, Lattanzi, Mirrokni, Rastogi and Vassilvitskii, "Connected Components in MapReduce
and Beyond" (SoCC 2014). Nodes are document keys; each round is two shuffles by node:

* **large-star**: every node ``u`` with neighbours ``N(u)`` and ``m(u) = min(N(u) + {u})``
  links each larger neighbour ``v > u`` to ``m(u)``;
* **small-star**: every node ``u`` with smaller neighbours ``N'(u)`` and ``m = min N'(u)``
  links ``u`` and each ``v`` in ``N'(u)`` to ``m``.

Neither ever links a node to a larger one, and the edge set stops changing exactly when every
component is a star around its smallest key (the paper's Theorem), which takes O(log^2 n)
rounds at worst and a handful on duplicate graphs. A round counts the edges it changed
(large-star: edges whose smaller end was not its own minimum; small-star: edges moved onto
``m``); both zero is convergence. The driver holds those two counters per round, nothing else.

Rows between the shuffles are ``(shard, u, w)``: the neighbour ``w`` of node ``u``, in the
partition of ``u``; every step deduplicates its rows, so the edge list never grows past the
graph's size.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pyarrow as pa

from raylm.curate.dedup.partition import by_shard, shard_of

NEIGHBOUR_SCHEMA = pa.schema([("shard", pa.int32()), ("u", pa.int64()), ("w", pa.int64()), ("changed", pa.int64())])
ROOT_SCHEMA = pa.schema([("key", pa.int64()), ("root", pa.int64())])


@dataclasses.dataclass
class Components:
    """The result: ``roots`` a Dataset of ``(key, root)`` for every node of a component of two
    or more, its smallest key as root (the root has a row of its own), and how it converged."""

    roots: Any
    rounds: int
    converged: bool
    changed_per_round: list[int]


def _unique_rows(u: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``(u, w)`` rows, sorted by ``u`` then ``w``."""
    if len(u) == 0:
        return u, w
    order = np.lexsort((w, u))
    u, w = u[order], w[order]
    keep = np.concatenate(([True], (u[1:] != u[:-1]) | (w[1:] != w[:-1])))
    return u[keep], w[keep]


def _rows(u: np.ndarray, w: np.ndarray, changed: np.ndarray, num_shards: int) -> pa.Table:
    return pa.Table.from_arrays([pa.array(shard_of(u, num_shards)), pa.array(u, pa.int64()),
                                 pa.array(w, pa.int64()), pa.array(changed, pa.int64())], schema=NEIGHBOUR_SCHEMA)


def both_directions(table: pa.Table, num_shards: int) -> pa.Table:
    """map_batches: undirected edges ``(a, b)`` -> neighbour rows of both ends."""
    a, b = table.column("a").to_numpy(), table.column("b").to_numpy()
    zero = np.zeros(2 * len(a), np.int64)
    return _rows(np.concatenate([a, b]), np.concatenate([b, a]), zero, num_shards)


def large_star(table: pa.Table, num_shards: int) -> pa.Table:
    """map_groups over one partition of neighbour rows (all of ``N(u)`` for its nodes ``u``):
    ``(v, m(u))`` for every ``v > u``, as rows of ``v`` in ``v``'s partition (small-star's input)."""
    u, w = _unique_rows(table.column("u").to_numpy(), table.column("w").to_numpy())
    if len(u) == 0:
        return NEIGHBOUR_SCHEMA.empty_table()
    starts = np.flatnonzero(np.concatenate(([True], u[1:] != u[:-1])))
    group = np.cumsum(np.concatenate(([True], u[1:] != u[:-1]))) - 1
    m = np.minimum(w[starts], u[starts])[group]  # rows are sorted by w inside a node: its first is its min
    sel = w > u
    return _rows(w[sel], m[sel], (m[sel] != u[sel]).astype(np.int64), num_shards)


def small_star(table: pa.Table, num_shards: int) -> pa.Table:
    """map_groups over one partition of rows ``(u, w)`` with ``w < u`` (``N'(u)``): ``u`` and
    every ``w`` linked to ``m = min N'(u)``, as neighbour rows of both ends (large-star's input)."""
    u, w = _unique_rows(table.column("u").to_numpy(), table.column("w").to_numpy())
    if len(u) == 0:
        return NEIGHBOUR_SCHEMA.empty_table()
    new = np.concatenate(([True], u[1:] != u[:-1]))
    group = np.cumsum(new) - 1
    m = w[np.flatnonzero(new)][group]
    moved = w != m  # edge (u, w) becomes (w, m); (u, m) stays
    x = np.concatenate([u[new], w[moved]])  # one (u, m) per node, then the moved ones
    y = np.concatenate([m[new], m[moved]])
    changed = np.concatenate([np.zeros(int(new.sum()), np.int64), np.ones(int(moved.sum()), np.int64)])
    return _rows(np.concatenate([x, y]), np.concatenate([y, x]), np.concatenate([changed, np.zeros_like(changed)]),
                 num_shards)


def star_roots(table: pa.Table) -> pa.Table:
    """map_batches over converged neighbour rows: ``(key, root)`` for every leaf ``u > w`` and
    ``(root, root)`` for the centre (repeated; the sort that follows keeps one)."""
    u, w = table.column("u").to_numpy(), table.column("w").to_numpy()
    leaf = u > w
    key = np.concatenate([u[leaf], w[leaf]])
    root = np.concatenate([w[leaf], w[leaf]])
    return pa.Table.from_arrays([pa.array(key, pa.int64()), pa.array(root, pa.int64())], schema=ROOT_SCHEMA)


def _changed(ds: Any) -> int:
    return int(ds.sum("changed") or 0)


def connected_components(edges: Any, ctx: Any, max_rounds: int = 64) -> Components:
    """Components of the undirected ``edges`` Dataset (columns ``a``, ``b``): alternate
    large-star and small-star until a round changes no edge (or ``max_rounds``)."""
    num_shards = ctx.num_shards
    rows = edges.map_batches(both_directions, batch_format="pyarrow", fn_kwargs={"num_shards": num_shards},
                             **ctx.remote_args)
    changed_per_round: list[int] = []
    converged = False
    for _ in range(max_rounds):
        large = by_shard(rows, large_star, ctx, num_shards=num_shards).materialize()
        small = by_shard(large, small_star, ctx, num_shards=num_shards).materialize()
        changed_per_round.append(_changed(large) + _changed(small))
        rows = small
        if changed_per_round[-1] == 0:
            converged = True
            break
    roots = rows.map_batches(star_roots, batch_format="pyarrow", **ctx.remote_args)
    return Components(roots, len(changed_per_round), converged, changed_per_round)
