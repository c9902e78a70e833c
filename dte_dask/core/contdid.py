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

from dte_dask.core.blocks import UnitBlock
from dte_dask.core.cells import Cells


def knot_sequence(boundary: tuple[float, float], knots: np.ndarray, degree: int) -> np.ndarray:
    lo, hi = boundary
    return np.r_[np.full(degree + 1, lo), np.asarray(knots, dtype=float), np.full(degree + 1, hi)]


def _bsplvb(t: np.ndarray, x: np.ndarray, mu: np.ndarray, k: int) -> np.ndarray:
    """(n, k+1) values of the degree-k B-splines nonzero on knot interval mu (de Boor's BSPLVB),
    the interval's polynomial piece also outside it (extrapolation)."""
    n = np.ones((x.size, k + 1))
    for j in range(1, k + 1):
        saved = np.zeros(x.size)
        for r in range(j):
            right, left = t[mu + r + 1] - x, x - t[mu + r + 1 - j]
            tmp = n[:, r] / (right + left)
            n[:, r] = saved + right * tmp
            saved = left * tmp
        n[:, j] = saved
    return n


def design(x: np.ndarray, boundary: tuple[float, float], knots: np.ndarray, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Regressors [1, B_2(x) .. B_m(x)] and their derivatives in x [0, B_2'(x) .. B_m'(x)].

    The B-splines of the clamped knots (scipy's ``BSpline.design_matrix`` with ``extrapolate``), by
    de Boor's recursion vectorised over x: no per-call spline objects (this runs once per cohort
    and RNG block).
    """
    t = knot_sequence(boundary, knots, degree)
    m = t.size - degree - 1
    x = np.asarray(x, dtype=float)
    b, db = np.zeros((x.size, m)), np.zeros((x.size, m))
    if x.size == 0:
        return b, db
    mu = np.clip(np.searchsorted(t, x, side="right") - 1, degree, m - 1)
    cols = (mu - degree)[:, None] + np.arange(degree + 1)
    rows = np.arange(x.size)[:, None]
    b[rows, cols] = _bsplvb(t, x, mu, degree)
    if degree > 0:  # B'_i = k (B_{i,k-1} / (t_{i+k} - t_i) - B_{i+1,k-1} / (t_{i+k+1} - t_{i+1}))
        low = np.zeros((x.size, degree + 2))
        low[:, 1:-1] = _bsplvb(t, x, mu, degree - 1)  # B_{mu-k+1 .. mu, k-1}; zero at both ends
        i = cols
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(t[i + degree] > t[i], low[:, :-1] / (t[i + degree] - t[i]), 0.0)
            c = np.where(t[i + degree + 1] > t[i + 1], low[:, 1:] / (t[i + degree + 1] - t[i + 1]), 0.0)
        db[rows, cols] = degree * (a - c)
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

    def cohort_bases(self, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """``basis(k, x)`` for every cell k, computed once per cohort (cells share their cohort's)."""
        pairs, inv = np.unique(np.c_[self.lo, self.hi], axis=0, return_inverse=True)
        per = [design(x, (float(a), float(b)), self.knots, self.degree) for a, b in pairs]
        return [per[j] for j in inv.ravel()]

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


def cohorts(block: UnitBlock, cells: Cells):
    """Each cohort of the block (never treated included): its rows, its outcomes, the cells where
    it is the treated cohort (and its outcome changes there) and those where it is a comparison."""
    G = cells.effective_g(block.g)
    never_only = np.isinf(cells.ctrl_min)
    for c in np.unique(G):
        rows = np.flatnonzero(G == c)
        y = block.y[rows]
        kt = np.flatnonzero(cells.g == c)
        kc = np.flatnonzero(np.where(never_only, np.isinf(c), c > cells.ctrl_min) & (cells.g != c))
        yield rows, y, kt, kc, y[:, cells.t[kt]] - y[:, cells.base[kt]]


def _changes(cells: Cells, kc: np.ndarray, coef: np.ndarray, n_periods: int) -> np.ndarray:
    """(T, m): y_i @ M = sum_k coef[k] (y_i[t_k] - y_i[base_k]) for the cells ``kc``: a linear map of
    the outcome changes without forming the n x K changes of the comparison units."""
    M = np.zeros((n_periods,) + coef.shape[1:])
    np.add.at(M, cells.t[kc], coef)
    np.add.at(M, cells.base[kc], -coef)
    return M


def cell_stats(block: UnitBlock, setup: DoseSetup) -> dict:
    """Sums per cell: X'X, X'dY, sum of derivatives over treated, counts and dY sums."""
    p, K = setup.p, setup.cells.K
    out = {"xx": np.zeros((K, p, p)), "xy": np.zeros((K, p)), "dsum": np.zeros((K, p)),
           "n_t": np.zeros(K), "y_t": np.zeros(K), "n_c": np.zeros(K), "y_c": np.zeros(K)}
    d = dose_of(block, setup.dose_col)
    cells = setup.cells
    for rows, y, kt, kc, dyt in cohorts(block, cells):
        if kt.size:  # one basis per cohort: X'X is shared by its cells
            X, dX = setup.basis(int(kt[0]), d[rows])
            out["xx"][kt] = X.T @ X
            out["xy"][kt] = (X.T @ dyt).T
            out["dsum"][kt] = dX.sum(axis=0)
            out["n_t"][kt] = rows.size
            out["y_t"][kt] = dyt.sum(axis=0)
        ys = y.sum(axis=0)
        out["n_c"][kc] += rows.size
        out["y_c"][kc] += ys[cells.t[kc]] - ys[cells.base[kc]]
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


def solve_cells(s: dict, setup: DoseSetup, grid: np.ndarray) -> DoseFit:
    K, p, D = setup.cells.K, setup.p, grid.size
    coef, bread = np.full((K, p), np.nan), np.full((K, p, p), np.nan)
    gb, gdb = np.zeros((K, D, p)), np.zeros((K, D, p))
    n_t, n_c = s["n_t"], s["n_c"]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_t, mean_c = s["y_t"] / n_t, s["y_c"] / n_c
        avg = s["dsum"] / n_t[:, None]
    for k, (b, db) in enumerate(setup.cohort_bases(grid)):
        if n_t[k] > 0 and np.linalg.matrix_rank(s["xx"][k]) == p:
            coef[k] = np.linalg.solve(s["xx"][k], s["xy"][k])
            bread[k] = np.linalg.inv(s["xx"][k] / n_t[k])
        gb[k], gdb[k] = b, db
    att_d = np.einsum("kdp,kp->kd", gb, coef) - mean_c[:, None]
    acrt_d = np.einsum("kdp,kp->kd", gdb, coef)
    return DoseFit(coef=coef, bread=bread, mean_t=mean_t, mean_c=mean_c, n_t=n_t, n_c=n_c, avg_deriv=avg,
                   att=mean_t - mean_c, acrt=np.einsum("kp,kp->k", avg, coef), att_d=att_d, acrt_d=acrt_d)


def curve_maps(setup: DoseSetup, grid: np.ndarray, compact: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How a unit's coefficient influence (a p-vector in its cohort's basis) reaches the dose curves.

    Returns ``rmap`` (K, p, r), ``level`` (r, D) and ``slope`` (r, D): the unit's coefficient
    influence ``acc`` is stored as ``acc @ rmap[k]`` (r numbers, ``influence``'s first columns), and
    its ATT(d) / ACRT(d) influence on the grid is that times ``level`` / ``slope``.

    Every cohort's basis spans the same spline space (same interior knots; the boundary knots only
    bound the extrapolated end pieces), so with ``compact`` the cohorts' coefficients are carried to
    one reference basis (the grid's range): r = p numbers per unit instead of the 2D grid values,
    which is what the bootstrap multiplies. If a cohort's basis is not an exact change of basis of
    the reference (an interior knot outside its dose range), the grid values are stored (r = 2D).
    """
    K, p, D = setup.cells.K, setup.p, grid.size
    lo, hi = float(setup.lo.min()), float(setup.hi.max())
    if compact:
        z = np.linspace(lo, hi, 8 * p)
        bz, dbz = design(z, (lo, hi), setup.knots, setup.degree)
        rmap = np.empty((K, p, p))
        for k, (cz, dcz) in enumerate(setup.cohort_bases(z)):
            x = np.linalg.lstsq(bz, cz, rcond=None)[0]  # cz = bz @ x as functions
            err = max(np.abs(bz @ x - cz).max(), np.abs(dbz @ x - dcz).max() / (1.0 + np.abs(dcz).max()))
            if not err <= 1e-10:
                return curve_maps(setup, grid, compact=False)
            rmap[k] = x.T
        gb, gdb = design(grid, (lo, hi), setup.knots, setup.degree)
        return rmap, gb.T.copy(), gdb.T.copy()
    rmap = np.empty((K, p, 2 * D))
    for k, (gb, gdb) in enumerate(setup.cohort_bases(grid)):
        rmap[k] = np.hstack([gb.T, gdb.T])
    eye = np.eye(D)
    zero = np.zeros((D, D))
    return rmap, np.vstack([eye, zero]), np.vstack([zero, eye])


def influence(block: UnitBlock, setup: DoseSetup, fit: DoseFit, w: np.ndarray, n: int, rmap: np.ndarray,
              ev_w: np.ndarray, ev_col: np.ndarray, ev_wif: np.ndarray, n_events: int, slope: bool) -> np.ndarray:
    """(n_block, r + 3 + n_events) influence functions, scaled so that Var = Psi'Psi / n^2.

    Columns: the dose curves' coefficient part ``acc @ rmap`` (r columns, see :func:`curve_maps`),
    the comparison part ``cv`` of ATT(d) (the same at every dose), ATT^o, ACRT^o (dose-aggregation
    weights ``w``, zero for pre-treatment cells), then the event-study estimates: cell k's ATT(g,t)
    (ACRT(g,t) if ``slope``) enters column ``ev_col[k]`` with weight ``ev_w[k]``, and cohort g_k's
    units add ``ev_wif[k]`` = (estimate_k - event-time estimate) / (cohort shares of the event
    time): the influence of the estimated weights (R ``did``'s ``wif``).

    Work is by cohort (all its cells at once). The curves' influence runs through the coefficients
    only: each unit's weighted coefficient influence over its cohort's cells (a p-vector) and, as a
    comparison unit, its weighted mean deviations (a scalar).
    """
    cells = setup.cells
    r = rmap.shape[2]
    psi = np.zeros((block.n, r + 3 + n_events))
    valid = np.isfinite(fit.coef).all(axis=1)
    with np.errstate(divide="ignore"):
        st, sc = n / fit.n_t, n / fit.n_c
    agg = np.zeros((cells.K, n_events))
    if n_events:
        agg[np.flatnonzero(valid), ev_col[valid]] = ev_w[valid]
    u = np.einsum("kpq,kq->kp", np.nan_to_num(fit.bread), fit.avg_deriv)  # bread_k @ avg_k
    d = dose_of(block, setup.dose_col)
    ev = slice(r + 3, r + 3 + n_events)
    T = block.y.shape[1]
    for rows, y, kt, kc, dyt in cohorts(block, cells):
        keep = valid[kt]
        kt, dyt = kt[keep], dyt[:, keep]
        if kt.size:
            X, dX = setup.basis(int(kt[0]), d[rows])
            coef = fit.coef[kt]
            resid = dyt - X @ coef.T
            att_t = st[kt] * (dyt - fit.mean_t[kt])
            acrt_t = st[kt] * (dX @ coef.T - fit.acrt[kt] + resid * (X @ u[kt].T))
            if n_events:
                wif = np.zeros(n_events)
                np.add.at(wif, ev_col[kt], ev_wif[kt])
                psi[rows, ev] += (acrt_t if slope else att_t) @ agg[kt] + wif
            wk = w[kt]
            on = np.flatnonzero(wk)
            if on.size:
                if r:
                    m, q, p = rows.size, kt.size, setup.p
                    z = ((resid * (wk * st[kt]))[:, :, None] * X[:, None, :]).reshape(m, q * p)
                    acc = z @ fit.bread[kt].reshape(q * p, p)  # sum_k w_k n/n_k (IF of the coefficients)
                    psi[rows, :r] = acc @ rmap[int(kt[on[0]])]
                psi[rows, r + 1] += att_t @ wk
                psi[rows, r + 2] += acrt_t @ wk
        kc = kc[valid[kc]]
        if kc.size:  # comparison units: -n/n_c (dY - mean_c) of each cell, weighted, as maps of y
            a = -sc[kc]
            if n_events and not slope:
                ca = a[:, None] * agg[kc]
                psi[rows, ev] += y @ _changes(cells, kc, ca, T) - fit.mean_c[kc] @ ca
            cw = a * w[kc]
            cv = y @ _changes(cells, kc, cw, T) - fit.mean_c[kc] @ cw
            psi[rows, r] += cv
            psi[rows, r + 1] += cv
    return psi
