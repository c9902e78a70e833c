"""The triple-differences DRDID kernel and influence pass: one logit per design, Psi of the cells at once.

The ~200 two-by-two comparisons of a staggered DDD fall into a handful of *designs* (treated
cohort, control cohort and partition, covariate period): the comparisons of a design share their
units, covariates and propensity score. :class:`DddCovKernel` is
:class:`~dte_dask.core.kernels_cov.PanelCovKernel` with the IRLS logit run once per design (on one
representative comparison; the others are copies of its fit, which is exact: their data, start and
scale are identical), so a logit pass evaluates and the driver solves a few logits instead of
hundreds. Its first pass also sums the cohorts' weighted sizes (the aggregation weights).

:func:`ddd_psi` forms a partition block's influence functions of the *cells* directly: per RNG
block and design, the comparisons' DRDID influence functions (the formulas of
:func:`dte_dask.core.covariates.cov_influence`) are written as ``L @ R`` with L shared by the
design's comparisons (outcomes and covariates times per-row factors) and R small
(:func:`dte_dask.core.covariates.design_terms`); ``L @ (R @ A)``
(``A``: comparisons to cells) is added into the cells' columns, so neither the (n x comparisons)
matrix nor per-comparison temporaries are formed. The graph calls it one RNG block at a time;
every sum runs over one RNG block's rows in a fixed order: bit-identical for any partitioning.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from dte_dask.core.blocks import UnitBlock
from dte_dask.core.cells import Cells
from dte_dask.core.covariates import design_terms
from dte_dask.core.kernels import LogitPasses, Pass, StagedKernel, Stats
from dte_dask.core.kernels_cov import PanelCovKernel
from dte_dask.core.logit import LogitFit


def design_representatives(comp, x_varying: bool) -> tuple[np.ndarray, np.ndarray]:
    """(first column of each design, design of each column)."""
    groups = comp.designs(x_varying)
    of = np.empty(comp.K, dtype=np.int64)
    for i, ks in enumerate(groups):
        of[ks] = i
    return np.array([int(ks[0]) for ks in groups], dtype=np.int64), of


class _PerDesign:
    """A :class:`~dte_dask.core.kernels.LogitPasses` of every column, run on one column per design."""

    def __init__(self, full: LogitPasses, comp, reps: np.ndarray, of: np.ndarray) -> None:
        irls = full.irls
        self.of, self.K = of, irls.K
        self.sub = comp.subset(reps)
        self.inner = LogitPasses(full.stats, irls.gamma[reps], irls.started[reps], irls.scale[reps], full.extra)

    def next(self) -> Pass | None:
        step = self.inner.next()
        return None if step is None else Pass(_on_subset, (self.sub, step.stats, *step.args), step.name)

    def feed(self, s: Stats) -> None:
        self.inner.feed(s)

    def result(self) -> LogitFit:
        fit = self.inner.result()
        return replace(fit, **{f: getattr(fit, f)[self.of] for f in LogitFit.__dataclass_fields__ if f != "passes"})


def _on_subset(block: UnitBlock, cells: Cells, sub, stats, *args) -> Stats:
    return stats(block, sub, *args)


def _same_within(of: np.ndarray, *arrays: np.ndarray) -> bool:
    """Every column of a design starts identically (so one fit per design is exact)."""
    for a in arrays:
        a = np.asarray(a).reshape(of.size, -1)
        first = np.zeros(of.max(initial=-1) + 1, dtype=np.int64)
        first[of[::-1]] = np.arange(of.size)[::-1]
        if not np.array_equal(a, a[first[of]], equal_nan=True):
            return False
    return True


class DddCovKernel(PanelCovKernel):
    """:class:`PanelCovKernel` on the comparisons with one propensity logit per design."""

    def __init__(self, a, x_varying: bool) -> None:
        super().__init__(a)
        self.reps, self.of = design_representatives(a.cells, x_varying)

    warm_sample = 0  # one logit per design already: no sample's warm start, no fused passes

    def _iterate(self, passes, done, fuse=None):
        if isinstance(passes, LogitPasses) and self.reps.size < self.of.size:
            irls = passes.irls
            if irls.passes == 0 and _same_within(self.of, irls.gamma, irls.started, irls.scale):
                passes = _PerDesign(passes, self.a.cells, self.reps, self.of)
        return StagedKernel._iterate(self, passes, done)


# ----------------------------------------------------------------------------- influence
def cells_psi_into(out: np.ndarray, block: UnitBlock, comp, est: dict[str, Any], A: np.ndarray) -> None:
    """Add the cells' influence functions ``Psi_comparisons @ A`` of ``block`` into ``out``
    (n_block x K), one design at a time, into the span of cells its comparisons enter."""
    ok = est["ok"]
    varying = block.x is not None and block.x.ndim == 3
    for ks in comp.designs(varying):
        ks = ks[ok[ks]]
        if ks.size == 0:
            continue
        Ak = A[ks]
        cols = np.flatnonzero(np.any(Ak != 0, axis=0))
        if cols.size == 0:
            continue
        rows = comp.design_rows(block, ks)
        idx = np.flatnonzero(rows[0])
        if idx.size == 0:
            continue
        L, R = design_terms(block, comp, est, ks, rows)
        a, b = int(cols[0]), int(cols[-1]) + 1
        if b - a <= 2 * cols.size:  # (nearly) contiguous cells: a slice, zeros in the gaps
            out[idx, a:b] += L @ (R @ Ak[:, a:b])
        else:
            out[np.ix_(idx, cols)] += L @ (R @ Ak[:, cols])


def ddd_psi(block: UnitBlock, cells: Cells, est: dict[str, Any], groups: np.ndarray) -> np.ndarray:
    """(n_block, K + |groups|): the cells' influence functions (zero for reference cells), then one
    cohort-share column per group (for the aggregation weights), as
    :func:`dte_dask.core.kernels.influence_with_groups`."""
    K = cells.K
    out = np.zeros((block.n, K + groups.size))
    pieces = block.pieces() if hasattr(block, "pieces") else [block]
    start = 0
    for b in pieces:
        cells_psi_into(out[start:start + b.n, :K], b, est["comp"], est["kernel"], est["A"])
        start += b.n
    G = cells.effective_g(block.g)
    out[:, K:] = (G[:, None] == groups[None, :]) * block.w[:, None] - est["pg"][None, :]
    return out
