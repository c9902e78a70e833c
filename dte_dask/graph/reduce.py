"""Tree reductions over partition results.

``tree_sum`` adds small statistics (dicts of arrays) with a fixed fan-in. ``by_rng_block`` and
``tree_merge`` make a sum *bit-identical* for any partitioning: values are attached to RNG blocks
(:class:`~dte_dask.core.dyadic.DyadicCover`), and blocks are only ever added along one fixed binary
tree over block indices, whatever partition computed them.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed

from dte_dask.core.aligned import aligned
from dte_dask.core.blocks import rng_block_runs
from dte_dask.core.dyadic import DyadicCover, add
from dte_dask.inference.threads import single_threaded_blas

__all__ = ["DyadicCover", "add", "by_rng_block", "compute", "single_threaded_blas", "tree_merge", "tree_sum"]

SPLIT_EVERY = 8


def compute(*objs: Any, **kwargs: Any) -> tuple:
    """``dask.compute(*objs, **kwargs)`` with every array of the results aligned
    (:func:`~dte_dask.core.aligned.aligned`): results that come back from distributed workers can
    be misaligned, and numpy rounds some products of misaligned arrays differently, so the
    driver's arithmetic on them would depend on the scheduler."""
    return aligned(dask.compute(*objs, **kwargs))


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


def by_rng_block(block: Any, func: Any, block_size: int, n_blocks: int, *args: Any, rows: np.ndarray | None = None) -> DyadicCover:
    """Apply ``func(slice, *args)`` (or ``func(slice, rows_slice, *args)``) to each RNG block of a
    partition block and return the results as a :class:`DyadicCover`, so that their sum over the
    whole panel is bit-identical for any partitioning."""
    ids, vals = [], []
    block, args = aligned(block), aligned(args)  # as received from another process: see core.aligned
    # small matrix products: multi-threaded BLAS inside a (multi-threaded) task only oversubscribes
    with single_threaded_blas():
        for a, b, bid in rng_block_runs(block.rank, block_size):
            part = block.take(slice(a, b))
            vals.append(func(part, *args) if rows is None else func(part, rows[a:b], *args))
            ids.append(bid)
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
