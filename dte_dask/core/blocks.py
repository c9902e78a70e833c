"""Per-partition wide blocks: one row per unit, one column per period (numpy only).

A :class:`UnitBlock` holds every unit of one partition (whole clusters when clustering), sorted by
(entity, unit). Every kernel of :mod:`dte_dask.core` reads these blocks; building one from a long
pandas frame (and validating the panel on the way) is :func:`dte_dask.panel.blocks.frame_to_block`,
and Dask's ``sizeof`` of a block is registered there too.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from dte_dask.core.aligned import AlignedPickle


@dataclass(frozen=True)
class UnitBlock(AlignedPickle):
    """Wide arrays for the units of one partition.

    Attributes
    ----------
    ids : (n,) unit ids, sorted within each entity
    rank : (n,) int64 stable index of the unit's entity (cluster if clustering, else unit) among
        all entities of the panel; RNG blocks are ``rank // rng_block_size``
    g : (n,) float64 first treated period as a period index; ``inf`` = never treated
    w : (n,) float64 sampling weights (ones if none)
    cluster : (n,) cluster ids or None
    y : (n, T) float64 outcomes, NaN where a period is not observed
    x : (n, p) time-invariant covariates, (n, T, p) time-varying ones, or None
    """

    ids: np.ndarray
    rank: np.ndarray
    g: np.ndarray
    w: np.ndarray
    cluster: np.ndarray | None
    y: np.ndarray
    x: np.ndarray | None

    def __sizeof__(self) -> int:
        """Bytes held by the arrays (a fallback for processes that have not imported
        :mod:`dte_dask.panel.blocks`, where Dask's ``sizeof`` of a block is registered)."""
        return int(sum(a.nbytes for a in (self.ids, self.rank, self.g, self.w, self.cluster, self.y, self.x)
                       if a is not None))

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])

    @property
    def nobs(self) -> np.ndarray:
        """Observed periods per unit."""
        return (~np.isnan(self.y)).sum(axis=1)

    def take(self, index: np.ndarray | slice) -> UnitBlock:
        """Rows ``index`` (a boolean mask, integer positions or a slice)."""
        def sub(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]
        return UnitBlock(self.ids[index], self.rank[index], self.g[index], self.w[index],
                         sub(self.cluster), self.y[index], sub(self.x))

    def x_at(self, period: int) -> np.ndarray:
        """Covariates as of ``period`` (n, p); time-invariant covariates ignore it."""
        if self.x is None:
            return np.empty((self.n, 0))
        return self.x if self.x.ndim == 2 else self.x[:, period, :]

    def with_varying_x(self) -> UnitBlock:
        """Time-invariant covariates (n, p) as time-varying ones (n, T, p), NaN where y is not
        observed: the layout a block gets when any unit of the panel has varying covariates (C order,
        as a block pivoted with varying covariates has them)."""
        if self.x is None or self.x.ndim == 3:
            return self
        x = np.empty((self.n, self.y.shape[1], self.x.shape[1]))
        x[...] = self.x[:, None, :]
        x[np.isnan(self.y)] = np.nan
        return replace(self, x=x)

    def with_rank_offset(self, offset: int) -> UnitBlock:
        return replace(self, rank=self.rank + offset)


@dataclass(frozen=True)
class BlockSummary:
    """What the driver learns about a block: counts only, never per-unit arrays."""

    n_units: int
    n_entities: int
    n_rows: int
    cohorts: dict[float, int]  # group index -> units
    n_unbalanced: int  # units not observed in every period
    first_rank: int
    last_rank: int
    x_varying: bool = False  # covariates held as (n, T, p)
    n_weighted: int = -1  # units with a positive sampling weight (-1: not counted)
    cohort_obs: dict[float, tuple[int, ...]] | None = None  # group index -> units observed in each period


def count_distinct(a: np.ndarray) -> int:
    """Number of distinct values of a 1-d array (sorted arrays: one comparison pass, no sort).

    ``np.unique`` of many distinct integers takes its hash path in numpy >= 2.3, which is about
    a thousand times slower than a comparison of neighbours; blocks hold their ranks sorted.
    """
    if a.size == 0:
        return 0
    s = a if bool(np.all(a[1:] >= a[:-1])) else np.sort(a)
    return int(np.count_nonzero(s[1:] != s[:-1])) + 1


def summarize(block: UnitBlock) -> BlockSummary:
    gs, counts = np.unique(block.g, return_counts=True)
    nobs = block.nobs
    T = block.y.shape[1]
    balanced = bool(np.all(nobs == T))
    return BlockSummary(
        n_units=block.n,
        n_entities=count_distinct(block.rank),
        n_rows=int(nobs.sum()),
        cohorts={float(k): int(c) for k, c in zip(gs, counts)},
        n_unbalanced=int(np.count_nonzero(nobs < T)),
        first_rank=int(block.rank[0]) if block.n else -1,
        last_rank=int(block.rank[-1]) if block.n else -1,
        x_varying=block.x is not None and block.x.ndim == 3,
        n_weighted=int(np.count_nonzero(block.w > 0)),
        # a balanced block observes every unit of a cohort in every period
        cohort_obs={float(k): (int(c),) * T if balanced else tuple(int(o) for o in (~np.isnan(block.y[block.g == k])).sum(axis=0))
                    for k, c in zip(gs, counts)},
    )


def runs(keys: np.ndarray) -> list[tuple[int, int, int]]:
    """``(lo, hi, key)`` of each run of equal values ``keys[lo:hi]`` (integer keys, in order)."""
    if keys.size == 0:
        return []
    cuts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1], True])
    return [(int(a), int(b), int(keys[a])) for a, b in zip(cuts[:-1], cuts[1:])]


def rng_block_runs(rank: np.ndarray, block_size: int) -> list[tuple[int, int, int]]:
    """``(lo, hi, block)`` of each run of rows ``lo..hi-1`` in one RNG block (``rank`` sorted:
    the stable entity indices, RNG block ``rank // block_size``)."""
    return runs(rank // block_size)


def entity_sums(psi: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Sum rows of ``psi`` that share an entity rank (``rank`` sorted, entities contiguous)."""
    if psi.shape[0] == 0:
        return psi
    starts = np.flatnonzero(np.r_[True, rank[1:] != rank[:-1]])
    if starts.size == psi.shape[0]:
        return psi
    return np.add.reduceat(psi, starts, axis=0)
