"""Sums that are bit-identical for any partitioning: values attached to the nodes of one fixed
binary tree over RNG blocks (numpy only; :mod:`dte_dask.graph.reduce` wires them into task graphs).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def add(a: Any, b: Any) -> Any:
    """Add two statistics: arrays, numbers, or dicts of them."""
    if isinstance(a, dict):
        return {k: add(a[k], b[k]) for k in a}
    return a + b


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
