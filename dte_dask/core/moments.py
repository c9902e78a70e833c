"""ATT(g,t) without covariates on balanced panels, from cohort moments (no n x K matrices).

Without covariates every unit of a *category* r (its effective first-treatment period: a cohort,
or never treated) enters every cell in the same way. Its influence function is affine in its
outcome path Y_i (length T), centred on the category's weighted means m_r:

    psi_i = w_i (A_r' (Y_i - m_r) + b_r) + d            (K' entries, REFERENCE §1.3 and §1.6)

with A_r[:, k] = a_rk e_k (e_k = 1{t_k} - 1{base_k}), a_rk = n (D_rk / S_D,k - C_rk / S_C,k),
b_r[k] = a_rk e_k'm_r - n (D_rk mu1_k / S_D,k - C_rk mu0_k / S_C,k), and for the cohort-share
columns b_r[K+j] = 1{r = g_j}, d[K+j] = -P(G = g_j). So

* pass 1 needs per category only sum w, sum w Y (cohort-by-period sums: the estimates);
* pass 2 needs per category sum w^2 Ytilde Ytilde' (T x T), sum w^2 Ytilde, sum w^2, sum w Ytilde,
  sum w and the count, from which Psi'Psi follows exactly (centring keeps it well conditioned);
* the bootstrap rebuilds Psi for one RNG block at a time (never for the whole partition).

The results equal those of :mod:`dte_dask.core.twobytwo` up to rounding.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from dte_dask.core.blocks import UnitBlock
from dte_dask.core.cells import Cells
from dte_dask.core.multipliers import Multipliers, key_runs


def category_index(block: UnitBlock, cells: Cells, cats: np.ndarray) -> np.ndarray:
    """Position of each unit's effective group in ``cats`` (sorted, ``inf`` last)."""
    return np.searchsorted(cats, cells.effective_g(block.g))


def category_sums(block: UnitBlock, cells: Cells, cats: np.ndarray) -> dict[str, np.ndarray]:
    """Pass 1: per category, the weight total, the weighted outcome sums by period and the count."""
    r = category_index(block, cells, cats)
    R = cats.size
    onehot = np.zeros((block.n, R))
    onehot[np.arange(block.n), r] = block.w
    return {"W": onehot.sum(0), "SY": onehot.T @ block.y, "N": np.bincount(r, minlength=R).astype(float)}


def membership(cells: Cells, cats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, K) treated and control indicators of each category in each cell."""
    return cells.treated(cats), cells.controls(cats)


def estimate(cells: Cells, cats: np.ndarray, s: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cell estimates from the category sums (the same 2x2 as ``twobytwo.uncond_stats``)."""
    D, C = membership(cells, cats)
    dS = s["SY"][:, cells.t] - s["SY"][:, cells.base]  # (R, K)
    out = {"SwD": D.T @ s["W"], "SwC": C.T @ s["W"], "SwDdY": np.einsum("rk,rk->k", D, dS),
           "SwCdY": np.einsum("rk,rk->k", C, dS), "nD": D.T @ s["N"], "nC": C.T @ s["N"]}
    with np.errstate(invalid="ignore", divide="ignore"):
        out["mu1"], out["mu0"] = out["SwDdY"] / out["SwD"], out["SwCdY"] / out["SwC"]
        out["m"] = s["SY"] / s["W"][:, None]  # (R, T) category means
    out["m"] = np.nan_to_num(out["m"])
    return out


def coefficients(cells: Cells, cats: np.ndarray, est: dict[str, Any], groups: np.ndarray, n: int):
    """A (R, T, K'), b (R, K'), d (K') of the affine influence functions (zero for NaN cells)."""
    D, C = membership(cells, cats)
    ok = est["ok"]
    K, G, R, T = cells.K, groups.size, cats.size, est["m"].shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        sD = np.where(ok, n / est["SwD"], 0.0)
        sC = np.where(ok, n / est["SwC"], 0.0)
        mu1, mu0 = np.where(ok, est["mu1"], 0.0), np.where(ok, est["mu0"], 0.0)
    a = D * sD - C * sC  # (R, K)
    A = np.zeros((R, T, K + G))
    kk = np.arange(K)
    for r in range(R):
        A[r, cells.t, kk] += a[r]
        A[r, cells.base, kk] -= a[r]
    b = np.zeros((R, K + G))
    em = est["m"][:, cells.t] - est["m"][:, cells.base]  # e_k' m_r
    b[:, :K] = a * em - (D * (sD * mu1) - C * (sC * mu0))
    b[:, K:] = cats[:, None] == groups[None, :]
    d = np.zeros(K + G)
    d[K:] = -est["pg"]
    return A, b, d


def category_moments(block: UnitBlock, cells: Cells, cats: np.ndarray, m: np.ndarray) -> dict[str, np.ndarray]:
    """Pass 2: centred second moments per category (sums over this block's units)."""
    r = category_index(block, cells, cats)
    R, T = cats.size, block.y.shape[1]
    out = {"Q": np.zeros((R, T, T)), "q": np.zeros((R, T)), "s2": np.zeros(R), "s1y": np.zeros((R, T)),
           "s1": np.zeros(R), "N": np.zeros(R)}
    for j in np.unique(r):
        rows = r == j
        w = block.w[rows]
        Yt = block.y[rows] - m[j]
        wY = Yt * w[:, None]
        out["Q"][j] = wY.T @ wY
        out["q"][j] = w @ wY
        out["s2"][j] = w @ w
        out["s1y"][j] = wY.sum(0)
        out["s1"][j] = w.sum()
        out["N"][j] = rows.sum()
    return out


def gram(mom: dict[str, np.ndarray], A: np.ndarray, b: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Psi'Psi from the category moments (exact algebra, no per-unit matrix)."""
    out = np.outer(d, d) * mom["N"].sum()
    for r in range(A.shape[0]):
        Ar, br = A[r], b[r]
        qb = np.outer(Ar.T @ mom["q"][r], br)
        sd = np.outer(Ar.T @ mom["s1y"][r] + mom["s1"][r] * br, d)
        out += Ar.T @ mom["Q"][r] @ Ar + qb + qb.T + mom["s2"][r] * np.outer(br, br) + sd + sd.T
    return out


def boot_apply(block: UnitBlock, cells: Cells, cats: np.ndarray, m: np.ndarray, A: np.ndarray, b: np.ndarray,
               d: np.ndarray) -> CategoryApply:
    """``apply(M, a, b)`` (with ``apply.order``) for
    :func:`~dte_dask.inference.bootstrap.boot_cover_apply`: ``V @ Psi[a:b]``, see :class:`CategoryApply`."""
    return CategoryApply(block, category_index(block, cells, cats), m, A, b, d)


class CategoryApply:
    """``V @ Psi`` of one RNG block from the affine form, category by category, Psi never formed.

    With psi_i = w_i (A_r'(Y_i - m_r) + b_r) + d, ``V @ Psi = sum_r (V_r [w (Y - m_r), w]) [A_r; b_r]
    + (V 1) d``: the multipliers meet a (T + 2)-wide matrix ``[w (Y - m_r), w, 1]`` per category
    instead of the K'-wide Psi (its last column sums the multipliers). ``order`` groups the block's
    units by category (ascending, then by rank: defined by the data, never by the partitioning), so
    that each category's multipliers are contiguous columns.
    """

    def __init__(self, block: UnitBlock, r: np.ndarray, m: np.ndarray, A: np.ndarray, b: np.ndarray,
                 d: np.ndarray) -> None:
        self.block, self.r, self.m, self.A, self.b, self.d = block, r, m, A, b, d
        self.groups: list[tuple[int, int, int, np.ndarray]] = []

    def order(self, lo: int, hi: int) -> np.ndarray:
        """Units lo..hi-1 (offsets) grouped by category; forms each category's [w (Y - m_r), w]."""
        perm, runs = key_runs(self.r[lo:hi])
        self.groups = []
        for a, z, j in runs:
            rows = lo + perm[a:z]
            w = self.block.w[rows, None]
            self.groups.append((a, z, j, np.hstack([(self.block.y[rows] - self.m[j]) * w, w, np.ones_like(w)])))
        return perm

    def __call__(self, M: Multipliers, lo: int, hi: int) -> np.ndarray:
        out = np.zeros((M.n_draws, self.d.size))
        vsum = np.zeros((M.n_draws, 1))
        for a, z, j, Wj in self.groups:
            P = M.matmul(a, z, Wj)
            out += P[:, :-2] @ self.A[j] + P[:, -2:-1] * self.b[j][None, :]
            vsum += P[:, -1:]
        return out + vsum * self.d[None, :]
