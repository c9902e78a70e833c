"""Data-driven nonparametric dose response (Chen, Christensen & Kankanala 2024, "CCK"): kernels (numpy).

The CCK estimator of R ``contdid`` / moderndid ``cont_did(dose_est_method="cck")`` (two periods, one
treated cohort and never-treated units): the treated units' outcome change, minus the comparison
mean, regressed on a cubic B-spline of the dose with knots at dose quantiles, whose number of
segments J is chosen from the dyadic set {1, 2, 4, ...} by the CCK procedure:

1. the largest J searched, from the sample size (``segment_set``; with the dose as its own
   instrument the sieve measure of ill-posedness is 1, so only n matters), and the test level;
2. Lepski's method with a multiplier bootstrap (``lepski``): the smallest J whose curve is within
   1.1 theta* (sup over the dose grid of the studentised difference) of every larger J's, theta*
   the bootstrap quantile of that sup over all pairs; J is capped at the second-largest J searched;
3. uniform bands with critical value z* + max(0, log log J~) theta* (``cck_band``).

With the dose as its own instrument, the NPIV of CCK is least squares: every J's sums X'X, X'dY
are formed per block (``cck_stats``), and the per-unit scores X_i u_i of every J in one pass
(``cck_scores``), reduced to their Gram matrix and multiplier-bootstrap draws; the selection, the
estimates and the influence functions of the chosen J are linear maps of those on the driver.
Knots: exact quantiles of the treated doses (linear rule) plus R ``npiv``'s tie-breaking shift
``linspace(0, 1e-10 (max - min), J + 1)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dte_dask.core.blocks import UnitBlock
from dte_dask.core.cells import Cells
from dte_dask.core.contdid import cohorts, design, dose_of


def segment_set(n_treated: int, degree: int) -> tuple[np.ndarray, float]:
    """Numbers of segments searched (1, 2, 4, ... up to J^max) and the Lepski test level alpha^.

    J^max: the last dyadic J with dim sqrt(log dim) max(1, (0.1 log n)^4) <= 10 sqrt(n) before the
    criterion crosses that bound (dim = degree + J); 1 .. 2^(L-1), L = max(3, floor(log2 n)), if it never
    crosses (R ``npiv`` / moderndid's rule).
    """
    n = float(n_treated)
    top = max(int(np.floor(np.log(n) / np.log(2.0))), 3)
    segs = 2 ** np.arange(top + 1)
    bound = 10.0 * np.sqrt(n)
    scale = max((0.1 * np.log(n)) ** 4, 1.0)
    crit = np.full(top + 1, np.nan)
    for i in range(top + 1):
        if i <= 1 or crit[i - 2] <= bound:
            dim = degree + segs[i]
            crit[i] = dim * np.sqrt(np.log(dim)) * scale
        else:
            crit[i] = crit[i - 1]
    cross = np.flatnonzero((crit[:-1] <= bound) & (crit[1:] > bound))
    segs = segs[: cross[0] + 1] if cross.size else segs[:top]
    dim_max = degree + int(segs[-1])
    return segs, min(0.5, float(np.sqrt(np.log(dim_max) / dim_max)))


def shifted_knots(quantiles: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Knots lo, interior quantiles, hi plus the tie-breaking shift linspace(0, 1e-10 (hi - lo))."""
    k = np.r_[lo, quantiles, hi]
    return k + np.linspace(0.0, 1e-10 * (hi - lo), k.size)


@dataclass(frozen=True)
class CckSetup:
    """The cell (one cohort, two periods), the dose column and every searched J's knots."""

    cells: Cells
    dose_col: int
    degree: int
    knots: tuple[np.ndarray, ...]  # per J: boundary, interior knots, boundary (shifted)

    @property
    def dims(self) -> np.ndarray:
        return np.array([k.size - 2 + self.degree + 1 for k in self.knots])

    @property
    def offsets(self) -> np.ndarray:
        return np.r_[0, np.cumsum(self.dims)]

    def basis(self, j: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = self.knots[j]
        return design(x, (float(k[0]), float(k[-1])), k[1:-1], self.degree)

    def stacked(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every J's basis side by side (and their derivatives)."""
        parts = [self.basis(j, x) for j in range(len(self.knots))]
        return np.hstack([b for b, _ in parts]), np.hstack([d for _, d in parts])


def cck_stats(block: UnitBlock, setup: CckSetup) -> dict:
    """Sums of the treated units (X'X, X'dY, sum X' of every J; count, sum dY) and of the comparison units."""
    P = int(setup.offsets[-1])
    out = {"xx": np.zeros((P, P)), "xy": np.zeros(P), "dsum": np.zeros(P), "n_t": 0.0, "y_t": 0.0,
           "n_c": 0.0, "y_c": 0.0}
    d = dose_of(block, setup.dose_col)
    off = setup.offsets
    for rows, _, kt, kc, dyt in cohorts(block, setup.cells):
        if kt.size:
            X, dX = setup.stacked(d[rows])
            for j in range(off.size - 1):  # diagonal blocks only
                s = slice(off[j], off[j + 1])
                out["xx"][s, s] = X[:, s].T @ X[:, s]
            out["xy"] = X.T @ dyt[:, 0]
            out["dsum"] = dX.sum(axis=0)
            out["n_t"], out["y_t"] = float(rows.size), float(dyt[:, 0].sum())
        if kc.size:
            dyc = _dy(block, setup.cells, rows)
            out["n_c"], out["y_c"] = float(rows.size), float(dyc.sum())
    return out


def _dy(block: UnitBlock, cells: Cells, rows: np.ndarray) -> np.ndarray:
    return block.y[rows, cells.t[0]] - block.y[rows, cells.base[0]]


@dataclass(frozen=True)
class CckFit:
    """Driver-side least squares of every J (small arrays)."""

    beta: tuple[np.ndarray, ...]  # per J: coefficients of dY on [1, B_2(d) ..]
    xx_inv: tuple[np.ndarray, ...]  # per J: (X'X)^-1
    avg_deriv: tuple[np.ndarray, ...]  # per J: mean over treated units of the basis' derivatives
    acrt: np.ndarray  # per J: average derivative of the fit over the treated units
    mean_t: float
    mean_c: float
    n_t: float
    n_c: float


def solve_cck(s: dict, setup: CckSetup) -> CckFit:
    off = setup.offsets
    beta, inv, avg = [], [], []
    for j in range(off.size - 1):
        sl = slice(off[j], off[j + 1])
        xx = s["xx"][sl, sl]
        if np.linalg.matrix_rank(xx) < xx.shape[0]:
            raise np.linalg.LinAlgError(f"{j}")
        inv.append(np.linalg.inv(xx))
        beta.append(np.linalg.solve(xx, s["xy"][sl]))
        avg.append(s["dsum"][sl] / s["n_t"])
    acrt = np.array([a @ b for a, b in zip(avg, beta)])
    return CckFit(beta=tuple(beta), xx_inv=tuple(inv), avg_deriv=tuple(avg), acrt=acrt, mean_t=s["y_t"] / s["n_t"],
                  mean_c=s["y_c"] / s["n_c"], n_t=s["n_t"], n_c=s["n_c"])


def cck_scores(block: UnitBlock, setup: CckSetup, fit: CckFit, n: int) -> np.ndarray:
    """(n_block, P + nJ + 2) per-unit columns, every later quantity a linear map of them:

    * X_i u_i for every J (u_i the J-fit's residual; treated units), P columns;
    * X'_i beta_J - ACRT_J for every J (treated units), nJ columns;
    * ATT^o's influence function (binary DiD, scaled so that Var = Psi'Psi / n^2);
    * the comparison units' part -n/n_c (dY_i - mean_c) of ATT(d)'s influence function.
    """
    off = setup.offsets
    nJ = off.size - 1
    out = np.zeros((block.n, int(off[-1]) + nJ + 2))
    d = dose_of(block, setup.dose_col)
    c_att, c_cv = out.shape[1] - 2, out.shape[1] - 1
    for rows, _, kt, kc, dyt in cohorts(block, setup.cells):
        if kt.size:
            X, dX = setup.stacked(d[rows])
            dy = dyt[:, 0]
            for j in range(nJ):
                s = slice(off[j], off[j + 1])
                out[rows, s] = (dy - X[:, s] @ fit.beta[j])[:, None] * X[:, s]
                out[rows, off[-1] + j] = dX[:, s] @ fit.beta[j] - fit.acrt[j]
            out[rows, c_att] = n / fit.n_t * (dy - fit.mean_t)
        if kc.size:
            v = -n / fit.n_c * (_dy(block, setup.cells, rows) - fit.mean_c)
            out[rows, c_att] = v
            out[rows, c_cv] = v
    return out


def _sup_t(dev: np.ndarray, se: np.ndarray) -> np.ndarray:
    """max over the grid of |dev| / se (se bounded away from 0 as R ``npiv``), per row of ``dev``."""
    return np.max(np.abs(dev) / np.maximum(se, np.finfo(float).eps), axis=-1)


@dataclass(frozen=True)
class CckChoice:
    segments: int  # J chosen
    index: int  # its position in the searched set
    theta: float  # bootstrap critical value of the Lepski test
    j_tilde: int  # dimension of the chosen sieve (degree + J)
    z_sup: list  # [J1, J2, sup-t of the difference of their curves] for every pair J1 < J2 searched


def lepski(segs: np.ndarray, setup: CckSetup, fit: CckFit, grid: np.ndarray, gram: np.ndarray,
           draws: np.ndarray, n: int, alpha_hat: float) -> CckChoice:
    """Lepski's method with the multiplier bootstrap (``draws``: sum_i V_bi psi_i / n of cck_scores' columns)."""
    maps, h, var = grid_maps(setup, fit, grid, gram, deriv=False)
    off = setup.offsets
    nJ = segs.size
    boot = [n * draws[:, off[j]:off[j + 1]] @ maps[j].T for j in range(nJ)]  # D*_J(x) per draw
    pairs = [(a, b) for a in range(nJ) for b in range(a + 1, nJ)]
    z_sup = np.zeros(len(pairs))
    z_boot = np.zeros((draws.shape[0], max(len(pairs), 1)))
    for i, (a, b) in enumerate(pairs):
        cov = np.einsum("dp,pq,dq->d", maps[a], gram[off[a]:off[a + 1], off[b]:off[b + 1]], maps[b])
        se = np.sqrt(np.maximum(var[a] + var[b] - 2.0 * cov, 0.0))
        z_sup[i] = _sup_t(h[a] - h[b], se)
        z_boot[:, i] = _sup_t(boot[a] - boot[b], se)
    theta = float(np.quantile(z_boot.max(axis=1), 1.0 - alpha_hat, method="lower")) if pairs else 0.0
    passed = np.ones((nJ, nJ), dtype=bool)
    for i, (a, b) in enumerate(pairs):
        passed[a, b] = z_sup[i] <= 1.1 * theta
    ok = [a for a in range(nJ - 1) if passed[a, a + 1:].all()]
    pick = ok[0] if ok else nJ - 1
    pick = min(pick, nJ - 2) if nJ > 1 else pick  # J~ = min(J^, second-largest J searched)
    return CckChoice(segments=int(segs[pick]), index=pick, theta=theta, j_tilde=setup.degree + int(segs[pick]),
                     z_sup=[[int(segs[a]), int(segs[b]), float(z)] for (a, b), z in zip(pairs, z_sup)])


def grid_maps(setup: CckSetup, fit: CckFit, grid: np.ndarray, gram: np.ndarray, deriv: bool):
    """Per J: the map B(x) (X'X)^-1 from the summed scores X_i u_i to the curve on the grid (or its
    derivative), the fitted curve of dY, and its variance from the treated units (R ``npiv``'s
    asymptotic variance; ``gram``: the scores' Psi'Psi)."""
    off = setup.offsets
    maps, h, var = [], [], []
    for j in range(off.size - 1):
        b, db = setup.basis(j, grid)
        B = db if deriv else b
        A = B @ fit.xx_inv[j]
        maps.append(A)
        h.append(B @ fit.beta[j])
        var.append(np.einsum("dp,pq,dq->d", A, gram[off[j]:off[j + 1], off[j]:off[j + 1]], A))
    return maps, h, var


def cck_band(segs: np.ndarray, choice: CckChoice, setup: CckSetup, fit: CckFit, grid: np.ndarray, gram: np.ndarray,
             draws: np.ndarray, n: int, alpha: float, deriv: bool) -> float:
    """Critical value of the honest, adaptive uniform band: z*_{1-alpha} + max(0, log log J~) theta*,
    z* the bootstrap quantile of the sup-t over the grid and over the J searched up to
    max(J~, third-largest J) (all of them if at most two)."""
    maps, _, var = grid_maps(setup, fit, grid, gram, deriv=deriv)
    off = setup.offsets
    use = np.flatnonzero(segs <= max(choice.segments, segs[-3])) if segs.size > 2 else np.arange(segs.size)
    z = np.max([_sup_t(n * draws[:, off[j]:off[j + 1]] @ maps[j].T, np.sqrt(np.maximum(var[j], 0.0)))
                for j in use], axis=0)
    z_star = float(np.quantile(z, 1.0 - alpha, method="lower"))
    return z_star + max(0.0, float(np.log(np.log(choice.j_tilde)))) * choice.theta
