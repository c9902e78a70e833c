"""Tree reductions over partition results.

``tree_sum`` adds small statistics (dicts of arrays) with a fixed fan-in. ``DyadicCover`` makes a
sum *bit-identical* for any partitioning: values are attached to RNG blocks, and blocks are only
ever added along one fixed binary tree over block indices, whatever partition computed them.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed
from threadpoolctl import threadpool_limits

SPLIT_EVERY = 8


def add(a: Any, b: Any) -> Any:
    """Add two statistics: arrays, numbers, or dicts of them."""
    if isinstance(a, dict):
        return {k: add(a[k], b[k]) for k in a}
    return a + b


def _sum_all(items: Sequence[Any]) -> Any:
    out = items[0]
    for it in items[1:]:
        out = add(out, it)
    return out


def tree_sum(parts: Sequence[Delayed], name: str, split_every: int = SPLIT_EVERY) -> Delayed:
    """Sum ``parts`` in a tree of ``name-<token>`` tasks (one dashboard bar per stage)."""
    level = list(parts)
    token = tokenize(*level)
    depth = 0
    f = dask.delayed(_sum_all, pure=True)
    while len(level) > 1:
        level = [f(level[i:i + split_every], dask_key_name=f"{name}-{token}-{depth}-{i}")
                 for i in range(0, len(level), split_every)]
        depth += 1
    if len(level) == 1 and depth == 0:
        return f([level[0]], dask_key_name=f"{name}-{token}")
    return level[0]


# --------------------------------------------------------------------------------- dyadic cover
class DyadicCover:
    """Values attached to nodes ``(level, j)`` of the binary tree over RNG blocks ``0..n_blocks-1``.

    Node (L, j) covers blocks ``[j 2^L, (j+1) 2^L)``; its value is, by definition, the value of its
    left child plus that of its right child (or the left child alone when the right one covers no
    block). Merging covers of adjacent ranges and coalescing siblings therefore always performs
    the same additions in the same order, so the root is identical for any partitioning.
    """

    def __init__(self, n_blocks: int, nodes: dict[tuple[int, int], np.ndarray]) -> None:
        self.n_blocks = n_blocks
        self.nodes = nodes
        self._coalesce()

    @classmethod
    def from_blocks(cls, n_blocks: int, block_ids: Sequence[int], values: Sequence[np.ndarray]) -> DyadicCover:
        return cls(n_blocks, {(0, int(b)): v for b, v in zip(block_ids, values)})

    def _exists(self, level: int, j: int) -> bool:
        return j * (1 << level) < self.n_blocks

    def _coalesce(self) -> None:
        changed = True
        while changed:
            changed = False
            for (lvl, j) in sorted(self.nodes):
                if (lvl, j) not in self.nodes:
                    continue
                left, right = (lvl, j & ~1), (lvl, j | 1)
                parent = (lvl + 1, j >> 1)
                if (1 << lvl) >= self.n_blocks and j == 0:
                    continue  # root
                if left in self.nodes and right in self.nodes:
                    self.nodes[parent] = add(self.nodes.pop(left), self.nodes.pop(right))
                    changed = True
                elif left in self.nodes and not self._exists(*right):
                    self.nodes[parent] = self.nodes.pop(left)
                    changed = True

    def merge(self, other: DyadicCover) -> DyadicCover:
        overlap = set(self.nodes) & set(other.nodes)
        if overlap:
            raise ValueError(f"covers overlap at {sorted(overlap)[:3]}")
        return DyadicCover(self.n_blocks, {**self.nodes, **other.nodes})

    def root(self) -> np.ndarray:
        if len(self.nodes) != 1:
            raise ValueError(f"cover is incomplete: {len(self.nodes)} nodes left")
        return next(iter(self.nodes.values()))


def by_rng_block(block: Any, func: Any, block_size: int, n_blocks: int, *args: Any, rows: np.ndarray | None = None) -> DyadicCover:
    """Apply ``func(slice, *args)`` (or ``func(slice, rows_slice, *args)``) to each RNG block of a
    partition block and return the results as a :class:`DyadicCover`, so that their sum over the
    whole panel is bit-identical for any partitioning."""
    if block.n == 0:
        return DyadicCover(n_blocks, {})
    blk = block.rank // block_size
    cuts = np.flatnonzero(np.r_[True, blk[1:] != blk[:-1], True])
    ids, vals = [], []
    # small matrix products: multi-threaded BLAS inside a (multi-threaded) task only oversubscribes
    with threadpool_limits(limits=1):
        for a, b in zip(cuts[:-1], cuts[1:]):
            sl = slice(int(a), int(b))
            part = block.take(sl)
            vals.append(func(part, *args) if rows is None else func(part, rows[sl], *args))
            ids.append(int(blk[a]))
    return DyadicCover.from_blocks(n_blocks, ids, vals)


def _merge_all(covers: Sequence[DyadicCover]) -> DyadicCover:
    out = covers[0]
    for c in covers[1:]:
        out = out.merge(c)
    return out


def _root(cover: DyadicCover) -> np.ndarray:
    return cover.root()


def tree_merge(parts: Sequence[Delayed], name: str, split_every: int = SPLIT_EVERY) -> Delayed:
    """Merge :class:`DyadicCover` parts into the root value (bit-identical for any partitioning)."""
    level = list(parts)
    token = tokenize(*level)
    f = dask.delayed(_merge_all, pure=True)
    depth = 0
    while len(level) > 1:
        level = [f(level[i:i + split_every], dask_key_name=f"{name}-{token}-{depth}-{i}")
                 for i in range(0, len(level), split_every)]
        depth += 1
    return dask.delayed(_root, pure=True)(level[0], dask_key_name=f"{name}-{token}-root")
