"""Continuous-treatment DiD (Callaway, Goodman-Bacon & Sant'Anna 2024): per-block kernels (numpy/scipy).

Every cell (g, t) compares the change ``dY = Y_t - Y_base`` of cohort g's units, regressed on a
B-spline basis of their dose, with the mean change of the cell's comparison units (not yet treated
by t, or never treated). The B-spline basis is R ``splines2::bSpline`` / moderndid's: a clamped knot
sequence on the cohort's dose range, interior knots at dose quantiles, the first column replaced
by an intercept. The regression reduces to the sums X'X, X'dY (pass ``stats``); the influence
functions are formed per unit on the workers (``influence``), never shipped.

Columns of the influence matrix: ATT(d) and ACRT(d) at every grid dose, ATT^o, ACRT^o, then (event
study) one column per event time. Knots are exact dose quantiles found without shipping the doses:
a histogram pass, then only the doses of the bins that hold the needed order statistics.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import BSpline

from dte_dask.core.blocks import UnitBlock
from dte_dask.core.cells import Cells


def knot_sequence(boundary: tuple[float, float], knots: np.ndarray, degree: int) -> np.ndarray:
    lo, hi = boundary
    return np.r_[np.full(degree + 1, lo), np.asarray(knots, dtype=float), np.full(degree + 1, hi)]


def design(x: np.ndarray, boundary: tuple[float, float], knots: np.ndarray, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Regressors [1, B_2(x) .. B_m(x)] and their derivatives in x [0, B_2'(x) .. B_m'(x)]."""
    t = knot_sequence(boundary, knots, degree)
    m = t.size - degree - 1
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return np.empty((0, m)), np.empty((0, m))
    spl = BSpline(t, np.eye(m), degree, extrapolate=True)
    b = BSpline.design_matrix(x, t, degree, extrapolate=True).toarray()
    db = spl.derivative(1)(x)
    b[:, 0] = 1.0
    db[:, 0] = 0.0
    return b, db


N_BINS = 4096


def _treated_doses(block: UnitBlock, dose_col: int, groups: np.ndarray, n_periods: int):
    """Doses of the cohorts' units and their numbers of post-treatment periods (the knots' weights)."""
    treated = np.isin(block.g, groups)
    return dose_of(block, dose_col)[treated], (n_periods - block.g[treated]).astype(np.int64)


def _bin_of(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, x, side="right") - 1, 0, edges.size - 2)


def dose_histogram(block: UnitBlock, dose_col: int, groups: np.ndarray, n_periods: int,
                   edges: np.ndarray) -> np.ndarray:
    """Post-period-weighted counts of the treated doses in the bins ``edges`` (integers: exact sums)."""
    x, c = _treated_doses(block, dose_col, groups, n_periods)
    return np.bincount(_bin_of(x, edges), weights=c, minlength=edges.size - 1).astype(np.int64)


def doses_in_bins(block: UnitBlock, dose_col: int, groups: np.ndarray, n_periods: int, edges: np.ndarray,
                  bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct treated doses falling in ``bins`` and their weighted counts."""
    x, c = _treated_doses(block, dose_col, groups, n_periods)
    keep = np.isin(_bin_of(x, edges), bins)
    vals, inv = np.unique(x[keep], return_inverse=True)
    return vals, np.bincount(inv, weights=c[keep], minlength=vals.size).astype(np.int64)


def knot_ranks(total: int, num_knots: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy's linear quantile rule on ``total`` sorted values: the order statistics j, j+1 and the
    fractions for the interior probabilities linspace(0, 1, num_knots + 2)[1:-1]."""
    h = (total - 1) * np.linspace(0.0, 1.0, num_knots + 2)[1:-1]
    j = np.floor(h).astype(np.int64)
    return j, h - j


def needed_bins(hist: np.ndarray, num_knots: int) -> np.ndarray:
    """Bins holding the order statistics that the interior knots interpolate."""
    j, _ = knot_ranks(int(hist.sum()), num_knots)
    ranks = np.minimum(np.r_[j, j + 1], int(hist.sum()) - 1)
    return np.unique(np.searchsorted(np.cumsum(hist), ranks, side="right"))


def knots_from(hist: np.ndarray, edges: np.ndarray, gathered: list[tuple[np.ndarray, np.ndarray]],
               num_knots: int) -> np.ndarray:
    """Interior knots, equal to ``np.quantile`` of every treated dose repeated by its post periods.

    Only the doses in the bins holding the needed order statistics were gathered (``gathered``).
    """
    total = int(hist.sum())
    if num_knots <= 0 or total == 0:
        return np.empty(0)
    j, frac = knot_ranks(total, num_knots)
    uv, inv = np.unique(np.concatenate([v for v, _ in gathered]), return_inverse=True)
    uc = np.bincount(inv, weights=np.concatenate([c for _, c in gathered]), minlength=uv.size).astype(np.int64)
    b = _bin_of(uv, edges)
    run = np.cumsum(uc)
    first = np.r_[True, b[1:] != b[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(uv.size), 0))  # first gathered value of its bin
    within = run - np.r_[0, run][start]
    after = np.r_[0, np.cumsum(hist)][b] + within  # global weighted rank just after each value

    def value(r: np.ndarray) -> np.ndarray:
        return uv[np.searchsorted(after, np.minimum(r, total - 1), side="right")]

    lo, hi = value(j), value(j + 1)
    return np.array([np.quantile(np.array([a, c]), f) for a, c, f in zip(lo, hi, frac)])


@dataclass(frozen=True)
class DoseSetup:
    """What every block kernel needs: the cells, their groups' dose ranges, knots and the grid."""

    cells: Cells
    dose_col: int
    degree: int
    knots: np.ndarray
    lo: np.ndarray  # (K,) lower boundary knot of each cell's cohort
    hi: np.ndarray  # (K,) upper boundary knot

    def basis(self, k: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return design(x, (float(self.lo[k]), float(self.hi[k])), self.knots, self.degree)

    @property
    def p(self) -> int:
        return self.degree + self.knots.size + 1


def dose_of(block: UnitBlock, col: int) -> np.ndarray:
    x = block.x_at(0)
    return x[:, col]


def dose_bounds(block: UnitBlock, dose_col: int, groups: np.ndarray) -> dict:
    """Per cohort: min and max dose; ``varying``: a unit whose dose changes over time (or None)."""
    d = dose_of(block, dose_col)
    varying = None
    if block.x is not None and block.x.ndim == 3:
        x = block.x[:, :, dose_col]
        bad = np.flatnonzero(np.nanmax(x, axis=1) != np.nanmin(x, axis=1))
        if bad.size:
            varying = block.ids[bad[0]]
    lo = np.full(groups.size, np.inf)
    hi = np.full(groups.size, -np.inf)
    for j, g in enumerate(groups):
        m = block.g == g
        if m.any():
            lo[j], hi[j] = d[m].min(), d[m].max()
    return {"lo": lo, "hi": hi, "varying": varying}


def _masks(block: UnitBlock, cells: Cells, k: int, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dy = block.y[:, int(cells.t[k])] - block.y[:, int(cells.base[k])]
    tr = g == cells.g[k]
    cm = cells.ctrl_min[k]
    ct = (np.isinf(g) if np.isinf(cm) else g > cm) & ~tr
    return dy, tr, ct


class _CohortBases:
    """Regressors of each cohort's units (one basis per cohort, shared by its cells)."""

    def __init__(self, block: UnitBlock, setup: DoseSetup) -> None:
        self.setup, self.dose, self.cache = setup, dose_of(block, setup.dose_col), {}
        self.g = setup.cells.effective_g(block.g)

    def __call__(self, k: int, tr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = float(self.setup.cells.g[k])
        if key not in self.cache:
            self.cache[key] = self.setup.basis(k, self.dose[tr])
        return self.cache[key]


def cell_stats(block: UnitBlock, setup: DoseSetup) -> dict:
    """Sums per cell: X'X, X'dY, sum of derivatives over treated, counts and dY sums."""
    cells, p, K = setup.cells, setup.p, setup.cells.K
    out = {"xx": np.zeros((K, p, p)), "xy": np.zeros((K, p)), "dsum": np.zeros((K, p)),
           "n_t": np.zeros(K), "y_t": np.zeros(K), "n_c": np.zeros(K), "y_c": np.zeros(K)}
    bases = _CohortBases(block, setup)
    for k in range(K):
        dy, tr, ct = _masks(block, cells, k, bases.g)
        X, dX = bases(k, tr)
        out["xx"][k] = X.T @ X
        out["xy"][k] = X.T @ dy[tr]
        out["dsum"][k] = dX.sum(axis=0)
        out["n_t"][k], out["y_t"][k] = tr.sum(), dy[tr].sum()
        out["n_c"][k], out["y_c"][k] = ct.sum(), dy[ct].sum()
    return out


@dataclass(frozen=True)
class DoseFit:
    """Driver-side solution of every cell (small arrays)."""

    coef: np.ndarray  # (K, p)
    bread: np.ndarray  # (K, p, p) inv(X'X / n_t)
    mean_t: np.ndarray
    mean_c: np.ndarray
    n_t: np.ndarray
    n_c: np.ndarray
    avg_deriv: np.ndarray  # (K, p)
    att: np.ndarray  # (K,) ATT(g,t) = mean_t - mean_c
    acrt: np.ndarray  # (K,) ACRT(g,t): average derivative over the cohort
    att_d: np.ndarray  # (K, D)
    acrt_d: np.ndarray  # (K, D)
    grid_b: np.ndarray  # (K, D, p)
    grid_db: np.ndarray  # (K, D, p)


def solve_cells(s: dict, setup: DoseSetup, grid: np.ndarray) -> DoseFit:
    K, p, D = setup.cells.K, setup.p, grid.size
    coef, bread = np.full((K, p), np.nan), np.full((K, p, p), np.nan)
    gb, gdb = np.zeros((K, D, p)), np.zeros((K, D, p))
    n_t, n_c = s["n_t"], s["n_c"]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_t, mean_c = s["y_t"] / n_t, s["y_c"] / n_c
        avg = s["dsum"] / n_t[:, None]
    for k in range(K):
        if n_t[k] > 0 and np.linalg.matrix_rank(s["xx"][k]) == p:
            coef[k] = np.linalg.solve(s["xx"][k], s["xy"][k])
            bread[k] = np.linalg.inv(s["xx"][k] / n_t[k])
        gb[k], gdb[k] = setup.basis(k, grid)
    att_d = np.einsum("kdp,kp->kd", gb, coef) - mean_c[:, None]
    acrt_d = np.einsum("kdp,kp->kd", gdb, coef)
    return DoseFit(coef=coef, bread=bread, mean_t=mean_t, mean_c=mean_c, n_t=n_t, n_c=n_c, avg_deriv=avg,
                   att=mean_t - mean_c, acrt=np.einsum("kp,kp->k", avg, coef), att_d=att_d, acrt_d=acrt_d,
                   grid_b=gb, grid_db=gdb)


def influence(block: UnitBlock, setup: DoseSetup, fit: DoseFit, w: np.ndarray, n: int,
              ev_w: np.ndarray, ev_col: np.ndarray, ev_wif: np.ndarray, n_events: int, slope: bool) -> np.ndarray:
    """(n_block, 2D + 2 + n_events) influence functions, scaled so that Var = Psi'Psi / n^2.

    Columns: ATT(d) and ACRT(d) on the grid, ATT^o, ACRT^o (dose-aggregation weights ``w``, zero
    for pre-treatment cells), then the event-study estimates: cell k's ATT(g,t) (ACRT(g,t) if
    ``slope``) enters column ``ev_col[k]`` with weight ``ev_w[k]``, and cohort g_k's units add
    ``ev_wif[k]`` = (estimate_k - event-time estimate) / (cohort shares of the event time): the
    influence of the estimated weights (R ``did``'s ``wif``).

    The curves' influence runs through the coefficients only, whose basis on the grid depends on
    the cohort alone: each unit accumulates its weighted coefficient influence over its cohort's
    cells (a p-vector) and the comparison units their weighted mean deviations (a scalar), and
    both are mapped to the D grid doses once.
    """
    cells, K = setup.cells, setup.cells.K
    D = fit.att_d.shape[1]
    psi = np.zeros((block.n, 2 * D + 2 + n_events))
    acc = np.zeros((block.n, setup.p))
    ctrl = np.zeros(block.n)
    grid_of: dict[float, int] = {}
    bases = _CohortBases(block, setup)
    for k in range(K):
        if not np.isfinite(fit.coef[k]).all():
            continue
        dy, tr, ct = _masks(block, cells, k, bases.g)
        X, dX = bases(k, tr)
        a = ((dy[tr] - X @ fit.coef[k])[:, None] * X) @ fit.bread[k]  # IF of the coefficients (treated scale)
        st, sc = n / fit.n_t[k], n / fit.n_c[k]
        att_t = st * (dy[tr] - fit.mean_t[k])
        att_c = -sc * (dy[ct] - fit.mean_c[k])
        acrt_t = st * (dX @ fit.coef[k] - fit.acrt[k] + a @ fit.avg_deriv[k])
        if n_events and ev_w[k] != 0:
            col = 2 * D + 2 + int(ev_col[k])
            psi[tr, col] += ev_w[k] * (acrt_t if slope else att_t) + ev_wif[k]
            if not slope:
                psi[ct, col] += ev_w[k] * att_c
        if w[k] == 0:
            continue
        grid_of.setdefault(float(cells.g[k]), k)
        acc[tr] += (w[k] * st) * a
        ctrl[ct] += w[k] * att_c
        psi[tr, 2 * D] += w[k] * att_t
        psi[ct, 2 * D] += w[k] * att_c
        psi[tr, 2 * D + 1] += w[k] * acrt_t
    for g, k in grid_of.items():
        tr = bases.g == g
        psi[tr, :D] = acc[tr] @ fit.grid_b[k].T
        psi[tr, D:2 * D] = acc[tr] @ fit.grid_db[k].T
    psi[:, :D] += ctrl[:, None]
    return psi
