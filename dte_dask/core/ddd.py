"""Triple differences (Ortiz-Villavicencio & Sant'Anna 2025, R ``triplediff``): cells to comparisons
and the GMM combination of comparison groups (numpy only).

The DDD ATT(g,t) of the treated-and-eligible units (S = g, Q = 1) is *not* a difference of two
DiDs: each of three 2x2 comparisons is estimated by DRDID's panel estimator (reg / ipw / dr with
its own propensity score and outcome regression on the comparison's units),

    ATT(g,t) = DiD[(g,1) vs (g,0)] + DiD[(g,1) vs (gc,1)] - DiD[(g,1) vs (gc,0)],

and the influence function is the same combination of the three (each on the scale of the whole
panel, n * psi / S_treated, which is ``triplediff``'s n / n_sub rescaling). With not-yet-treated
controls a cell may have several comparison cohorts gc; their DDD estimates are combined with the
optimal GMM weights Omega^-1 1 / (1' Omega^-1 1), Omega the covariance of their influence functions
over the cell's units (paper, eq. 4.11-4.12).

The comparisons are a cell set for the DRDID kernel of :mod:`dte_dask.core.kernels_cov`: each
column j is one 2x2 (treated cohort g with Q = 1, control cohort gc with partition q, periods t and
base); its ``designs`` / ``design_rows`` are what :mod:`dte_dask.core.covariates` reads. The
partition indicator travels as a covariate column of the blocks (``qcol``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from dte_dask.core.blocks import UnitBlock, rng_block_runs
from dte_dask.core.cells import Cells
from dte_dask.core.covariates import cov_influence


@dataclass(frozen=True)
class Comparisons:
    """J two-by-two comparisons: treated (G = g, Q = 1) against controls (G = gc, Q = q)."""

    g: np.ndarray  # (J,) treated cohort (period index)
    t: np.ndarray  # (J,) current period
    base: np.ndarray  # (J,) base period
    gc: np.ndarray  # (J,) control cohort (inf: never treated)
    q: np.ndarray  # (J,) control partition (0 / 1)
    never_above: float = np.inf
    never_alias: float = np.nan  # a cohort coerced to never treated (no never-treated units)
    qcol: int = 0  # the covariate column holding the partition
    complete_cases: bool = False  # unbalanced panel: each column keeps the units observed at t and base
    _groups: dict = field(default_factory=dict, compare=False, repr=False)  # designs(), computed once

    @property
    def K(self) -> int:
        return int(self.g.shape[0])

    def effective_g(self, G: np.ndarray) -> np.ndarray:
        return np.where((G > self.never_above) | (G == self.never_alias), np.inf, G)

    def design_key(self, j: int, x_varying: bool) -> tuple:
        """What the rows of column j depend on: (g, gc, q, covariate period[, t, base])."""
        key = (int(self.g[j]), float(self.gc[j]), int(self.q[j]),
               int(min(self.base[j], self.t[j])) if x_varying else 0)
        return key + (int(self.t[j]), int(self.base[j])) if self.complete_cases else key

    def designs(self, x_varying: bool) -> list[np.ndarray]:
        """Columns sharing units, covariates and nuisance fits: same (g, gc, q, covariate period)."""
        if x_varying not in self._groups:
            keys: dict[tuple, list[int]] = {}
            for j in range(self.K):
                keys.setdefault(self.design_key(j, x_varying), []).append(j)
            self._groups[x_varying] = [np.array(v) for v in keys.values()]
        return self._groups[x_varying]

    def subset(self, cols: np.ndarray) -> Comparisons:
        """The comparisons ``cols`` (same design keys, so a DesignBlock's rows serve them too)."""
        return replace(self, g=self.g[cols], t=self.t[cols], base=self.base[cols], gc=self.gc[cols], q=self.q[cols],
                       _groups={})

    def design_rows(self, block: UnitBlock, ks: np.ndarray, buf: np.ndarray | None = None,
                    G: np.ndarray | None = None):
        """Rows of a design: mask, X = [1, covariates], treated indicator d, weights (picked once
        per block when ``block`` is a :class:`DesignBlock`; ``buf``, a buffer for X, and ``G``,
        the effective groups, are not used)."""
        j = int(ks[0])
        cache = getattr(block, "rows", None)
        if cache:
            hit = cache.get(self.design_key(j, block.x is not None and block.x.ndim == 3))
            if hit is not None:
                return hit
        return self.pick_rows(block, j)

    def design_dy(self, block: UnitBlock, ks: np.ndarray) -> np.ndarray | None:
        """The outcome changes of the comparisons ``ks`` of one design when ``block`` keeps them
        (a :class:`DesignBlock`), else None."""
        kept = getattr(block, "dy", None)
        if not kept:
            return None
        hit = kept.get(self.design_key(int(ks[0]), block.x is not None and block.x.ndim == 3))
        if hit is None:
            return None
        full, dy = hit
        if full.size == ks.size and np.array_equal(full, ks):
            return dy
        pos = np.searchsorted(full, ks)
        if np.any(pos >= full.size) or not np.array_equal(full[np.minimum(pos, full.size - 1)], ks):
            return None
        return dy[:, pos]

    def pick_rows(self, block: UnitBlock, j: int):
        x = block.x_at(int(min(self.base[j], self.t[j])))
        G, Q = self.effective_g(block.g), x[:, self.qcol]
        D = (G == self.g[j]) & (Q == 1)
        C = (G == self.gc[j]) & (Q == self.q[j])
        m = D | C
        if self.complete_cases:
            m &= observed(block, self.t[j], self.base[j])
        xm = x[m]
        X = np.empty((xm.shape[0], xm.shape[1]))  # [1, covariates without the partition]
        X[:, 0] = 1.0
        X[:, 1:1 + self.qcol] = xm[:, :self.qcol]
        X[:, 1 + self.qcol:] = xm[:, self.qcol + 1:]
        return m, X, D[m].astype(float), block.w[m]


@dataclass(frozen=True, eq=False)
class DesignBlock(UnitBlock):
    """A partition block with every comparison design's rows picked once, for all the passes.

    ``rows`` maps :meth:`Comparisons.design_key` to :meth:`Comparisons.pick_rows` and ``dy`` to the
    design's columns and outcome changes (what :meth:`Comparisons.design_dy` hands out); ``parts`` maps
    the (start, stop) slice of each RNG block to its own DesignBlock, which ``take`` hands back, so
    :func:`~dte_dask.graph.reduce.by_rng_block` reuses them in every pass."""

    rows: dict = field(default_factory=dict, repr=False)
    parts: dict = field(default_factory=dict, repr=False)
    dy: dict = field(default_factory=dict, repr=False)  # design key -> (its columns, outcome changes)

    def take(self, index: np.ndarray | slice) -> UnitBlock:
        if isinstance(index, slice) and (index.start, index.stop) in self.parts:
            return self.parts[(index.start, index.stop)]
        return super().take(index)

    def pieces(self) -> list[UnitBlock]:
        """The RNG-block parts in row order (the block itself when it has none)."""
        return [self.parts[k] for k in sorted(self.parts)] or [self]


def design_block(block: UnitBlock, comp: Comparisons, block_size: int) -> DesignBlock:
    """``block`` with the rows of every design of ``comp`` picked once per RNG block (the slices
    :func:`~dte_dask.graph.reduce.by_rng_block` takes)."""
    varying = block.x is not None and block.x.ndim == 3
    groups = comp.designs(varying)

    def build(b: UnitBlock, parts: dict) -> DesignBlock:
        rows, dy = {}, {}
        for ks in groups:
            key = comp.design_key(int(ks[0]), varying)
            rows[key] = comp.pick_rows(b, int(ks[0]))
            y = b.y[rows[key][0]]
            dy[key] = (ks, y[:, comp.t[ks]] - y[:, comp.base[ks]])
        return DesignBlock(b.ids, b.rank, b.g, b.w, b.cluster, b.y, b.x, rows=rows, parts=parts, dy=dy)

    if block.n == 0:
        return build(block, {})
    parts = {(a, c): build(UnitBlock.take(block, slice(a, c)), {})
             for a, c, _ in rng_block_runs(block.rank, block_size)}
    return DesignBlock(block.ids, block.rank, block.g, block.w, block.cluster, block.y, block.x, parts=parts)


def observed(block: UnitBlock, t: int, base: int) -> np.ndarray:
    """Units observed in both periods of a 2x2."""
    return ~np.isnan(block.y[:, t]) & ~np.isnan(block.y[:, base])


@dataclass(frozen=True)
class DddLayout:
    """How the comparisons make the cells: column d of the DDD estimates (one per cell and control
    cohort) is ``comb[:, d]`` of the comparisons; ``cell[d]`` its cell, ``gc[d]`` its cohort."""

    comp: Comparisons
    comb: np.ndarray  # (J, D) +1 / -1
    cell: np.ndarray  # (D,)
    gc: np.ndarray  # (D,)


def layout(cells: Cells, cohorts: list[float], qcol: int = 0, complete_cases: bool = False) -> DddLayout:
    """Comparisons of every non-reference cell: the own-cohort ineligible units once per cell, and
    for each comparison cohort gc (never treated; with not-yet-treated controls every cohort
    gc > max(t, base), gc != g, present in the panel) its eligible and ineligible units."""
    rows: list[tuple[int, int, int, float, int]] = []
    index: dict[tuple, int] = {}

    def col(*key) -> int:
        if key not in index:
            index[key] = len(rows)
            rows.append(key)
        return index[key]

    terms, cell_of, gc_of = [], [], []
    for k in range(cells.K):
        if cells.reference[k]:
            continue
        g, t, b, cmin = int(cells.g[k]), int(cells.t[k]), int(cells.base[k]), float(cells.ctrl_min[k])
        ctrl = [np.inf] if np.isinf(cmin) else [c for c in cohorts if c > cmin and c != g]
        for gc in ctrl:
            a = col(g, t, b, float(g), 0)
            terms.append(((a, 1.0), (col(g, t, b, gc, 1), 1.0), (col(g, t, b, gc, 0), -1.0)))
            cell_of.append(k)
            gc_of.append(gc)
    comb = np.zeros((len(rows), len(terms)))
    for d, tt in enumerate(terms):
        for j, s in tt:
            comb[j, d] += s
    arr = list(zip(*rows)) if rows else [[]] * 5
    comp = Comparisons(np.array(arr[0], dtype=np.int64), np.array(arr[1], dtype=np.int64),
                       np.array(arr[2], dtype=np.int64), np.array(arr[3], dtype=float),
                       np.array(arr[4], dtype=np.int64), never_above=cells.never_above,
                       never_alias=cells.never_alias, qcol=qcol,
                       complete_cases=complete_cases)
    return DddLayout(comp, comb, np.array(cell_of, dtype=np.int64), np.array(gc_of, dtype=float))


def ddd_estimates(lay: DddLayout, att_j: np.ndarray, ok_j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(D,) DDD estimates per cell and comparison cohort, and which are estimable (all three
    comparisons are)."""
    used = lay.comb != 0
    ok = np.all(ok_j[:, None] | ~used, axis=0)
    att = np.where(ok, np.nan_to_num(att_j) @ lay.comb, np.nan)
    return att, ok


def gmm_weights(lay: DddLayout, K: int, att_d: np.ndarray, ok_d: np.ndarray, gram_d: np.ndarray | None,
                sum_d: np.ndarray | None, n_cell: np.ndarray, n: int):
    """(D, K) weights of the DDD columns in each cell, the cells' estimates, estimability and, for
    cells combining several comparison cohorts, ``triplediff``'s GMM standard error
    sqrt(1 / (n 1' Omega^-1 1)) (NaN elsewhere).

    ``gram_d`` / ``sum_d``: Psi'Psi and column sums of the DDD influence functions (panel scale);
    ``n_cell``: units of each cell (its cohort and all its comparison cohorts)."""
    W = np.zeros((att_d.shape[0], K))
    att = np.full(K, np.nan)
    se_gmm = np.full(K, np.nan)
    for k in range(K):
        ds = np.flatnonzero((lay.cell == k) & ok_d)
        if ds.size == 1:
            W[ds[0], k] = 1.0
            att[k] = att_d[ds[0]]
        elif ds.size > 1:
            nc = float(n_cell[k])
            s = sum_d[ds]
            # covariance over the cell's units of the cell-scale influence functions (nc / n) psi
            omega = (gram_d[np.ix_(ds, ds)] - np.outer(s, s) / nc) / (nc - 1.0) * (nc / n) ** 2
            try:
                inv = np.linalg.inv(omega)
            except np.linalg.LinAlgError:
                inv = np.linalg.pinv(omega)
            ones = np.ones(ds.size)
            w = inv @ ones / (ones @ inv @ ones)
            W[ds, k] = w
            att[k] = float(w @ att_d[ds])
            se_gmm[k] = np.sqrt(1.0 / (n * np.sum(inv)))
    return W, att, np.isfinite(att), se_gmm


def combination(lay: DddLayout, W: np.ndarray) -> np.ndarray:
    """(J, K): each cell's influence function as a combination of the comparisons'."""
    return lay.comb @ W


def cell_sizes(cells: Cells, lay: DddLayout, sizes: dict[float, int]) -> np.ndarray:
    """Units of each cell of a balanced panel (its cohort and its comparison cohorts), from the
    panel's cohort sizes ``sizes`` (keys: effective cohorts, ``inf`` never treated)."""
    n_cell = np.zeros(cells.K)
    for k in np.unique(lay.cell):
        member = set(np.r_[float(cells.g[k]), lay.gc[lay.cell == k]].tolist())
        n_cell[k] = float(sum(sizes.get(c, 0) for c in member))
    return n_cell


# ----------------------------------------------------------------------------- block tasks
def cell_stats(block: UnitBlock, cells: Cells, lay: DddLayout, kest: dict[str, Any], gmm: bool) -> dict[str, np.ndarray]:
    """Units of each cell (its cohort and comparison cohorts, observed at t and base) and, with
    ``gmm``, the Gram and column sums of the per-cohort DDD influence functions (GMM weights)."""
    G = cells.effective_g(block.g)
    n_cell = np.zeros(cells.K)
    for k in np.unique(lay.cell):
        member = np.isin(G, np.r_[float(cells.g[k]), lay.gc[lay.cell == k]])
        n_cell[k] = np.count_nonzero(member & observed(block, cells.t[k], cells.base[k]))
    out = {"n_cell": n_cell}
    if gmm:
        psi = cov_influence(block, lay.comp, kest) @ lay.comb
        out.update(gram=psi.T @ psi, sum=psi.sum(axis=0))
    return out
