"""The reg / ipw / dr kernels with covariates (DRDID's panel estimators), per partition block.

Formulas are in :mod:`dte_dask.core.twobytwo`. Cells that share a *design* (the same treated
cohort, the same control set and covariates of the same period) share the propensity-score
logit, the controls' X'WX and the weights; only the outcome change differs. Kernels therefore
loop over designs and treat all cells of a design at once with matrix products: with
never-treated controls and time-invariant covariates there is one design per cohort.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from dte_dask.core.blocks import UnitBlock
from dte_dask.core.cells import Cells
from dte_dask.core.logit import eta_extreme, overlap_count
from dte_dask.core.regression import PS_CAP, TRIM_LEVEL, expit, logit_terms
from dte_dask.core.twobytwo import Stats


def designs(cells: Cells, x_varying: bool) -> list[np.ndarray]:
    """Cell indices grouped by design (treated cohort, control threshold, covariate period);
    ``cells`` may be any cell set with ``designs`` / ``design_rows`` (:meth:`Cells.designs`)."""
    return cells.designs(x_varying)


def _x_varying(block: UnitBlock) -> bool:
    return block.x is not None and block.x.ndim == 3


def design_dy(block: UnitBlock, cells: Cells, m: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """(n_m, |ks|) outcome changes Y_t - Y_base of a design's rows ``m`` (only its own columns).

    A cell set with a ``design_dy`` method (the triple-differences comparisons) may hand back the
    changes it keeps with the block (the same numbers, computed once for all passes)."""
    kept = cells.design_dy(block, ks) if hasattr(cells, "design_dy") else None
    if kept is not None:
        return kept
    y = block.y[m]
    return y[:, cells.t[ks]] - y[:, cells.base[ks]]


def ols_stats(block: UnitBlock, cells: Cells, p: int) -> Stats:
    """Per cell: controls' X'WX and X'W dY (outcome regression), treated sums and X totals."""
    K = cells.K
    out = {"XtWX": np.zeros((K, p, p)), "XtWdY": np.zeros((K, p)), "SwDX": np.zeros((K, p)),
           "SwD": np.zeros(K), "SwDdY": np.zeros(K), "nD": np.zeros(K), "nC": np.zeros(K)}
    for ks in designs(cells, _x_varying(block)):
        m, X, d, w = cells.design_rows(block, ks)
        dYm = design_dy(block, cells, m, ks)
        wc, wd = w * (1.0 - d), w * d
        out["XtWX"][ks] = (X * wc[:, None]).T @ X
        out["XtWdY"][ks] = (X.T @ (wc[:, None] * dYm)).T
        out["SwDX"][ks] = X.T @ wd
        out["SwD"][ks] = wd.sum()
        out["SwDdY"][ks] = wd @ dYm
        out["nD"][ks] = d.sum()
        out["nC"][ks] = (1.0 - d).sum()
    return out


def logit_stats(block: UnitBlock, cells: Cells, gamma: np.ndarray, active: np.ndarray, unweighted: bool = False) -> Stats:
    """Per active cell: gradient, information matrix and log-likelihood of the propensity logit;
    the number of rows whose fitted probability is numerically 0 or 1 (``n01``) and of rows with a
    fitted probability of at least 0.999 (``n999``, R did's overlap check). ``unweighted`` ignores
    the sampling weights (R did's preliminary overlap logit is unweighted)."""
    K, p = gamma.shape
    out = {"grad": np.zeros((K, p)), "hess": np.zeros((K, p, p)), "ll": np.zeros(K), "n01": np.zeros(K),
           "n999": np.zeros(K)}
    for ks in designs(cells, _x_varying(block)):
        ks = ks[active[ks]]
        if ks.size == 0:
            continue
        _, X, d, w = cells.design_rows(block, ks)
        if unweighted:
            w = np.ones_like(w)
        gk = gamma[ks]
        same = bool(np.all(gk == gk[0]))
        for gam in gk[:1] if same else np.unique(gk, axis=0):  # cells of a design move together
            sel = ks if same else ks[np.all(gk == gam, axis=1)]
            gr, he, ll, eta, ps = logit_terms(X, d, w, gam)
            out["grad"][sel], out["hess"][sel], out["ll"][sel] = gr, he, ll
            out["n01"][sel], out["n999"][sel] = eta_extreme(eta), overlap_count(eta, ps)
    return out


def _ps_weights(X, d, w, gamma):
    ps = np.minimum(expit(X @ gamma), PS_CAP)
    trim = (d == 1) | (ps < TRIM_LEVEL)
    wt = trim * w * d
    wc = trim * w * ps * (1.0 - d) / (1.0 - ps)
    return ps, wt, wc


def ps_moments(block: UnitBlock, cells: Cells, gamma: np.ndarray, beta: np.ndarray | None) -> Stats:
    """Per cell, given the logit ``gamma``: the weighted sums the ipw / dr estimates need."""
    K, p = gamma.shape
    z = np.zeros
    out = {"St": z(K), "Sc": z(K), "At": z(K), "Ac": z(K), "StX": z((K, p)), "ScX": z((K, p)),
           "ScdYX": z((K, p)), "ScXX": z((K, p, p)), "H": z((K, p, p))}
    for ks in designs(cells, _x_varying(block)):
        m, X, d, w = cells.design_rows(block, ks)
        ps, wt, wc = _ps_weights(X, d, w, gamma[ks[0]])
        dYm = design_dy(block, cells, m, ks)
        out["St"][ks], out["Sc"][ks] = wt.sum(), wc.sum()
        out["At"][ks], out["Ac"][ks] = wt @ dYm, wc @ dYm
        out["StX"][ks], out["ScX"][ks] = X.T @ wt, X.T @ wc
        out["ScdYX"][ks] = (X.T @ (wc[:, None] * dYm)).T
        out["ScXX"][ks] = (X * wc[:, None]).T @ X
        out["H"][ks] = (X * (w * ps * (1.0 - ps))[:, None]).T @ X
    return out


def cov_influence(block: UnitBlock, cells: Cells, est: dict[str, Any]) -> np.ndarray:
    """(n_block, K) influence functions for reg / ipw / dr with covariates (zero for NaN cells)."""
    method, n, ok = est["method"], est["n"], est["ok"]
    psi = np.zeros((block.n, cells.K))
    for ks in designs(cells, _x_varying(block)):
        ks = ks[ok[ks]]
        if ks.size == 0:
            continue
        m, X, d, w = cells.design_rows(block, ks)
        dYm = design_dy(block, cells, m, ks)
        if method == "reg":
            Xb = X @ est["beta"][ks].T  # (n_m, |ks|)
            wd = (w * d)[:, None]
            e_v = (w * (1.0 - d))[:, None] * (dYm - Xb) * (X @ est["v_t"][ks].T)
            num = wd * dYm - wd * est["eta_t"][ks] - (wd * Xb - wd * est["eta_c"][ks] + e_v)
            psi[np.ix_(m, ks)] = n * num / est["St"][ks]
            continue
        ps, wt, wc = _ps_weights(X, d, w, est["gamma"][ks[0]])
        s_v = (w * (d - ps))[:, None] * (X @ est["v_ps"][ks].T)
        wt_, wc_ = wt[:, None], wc[:, None]
        if method == "ipw":
            treat = (wt_ * dYm - wt_ * est["eta_t"][ks]) / est["St"][ks]
            ctrl = (wc_ * dYm - wc_ * est["eta_c"][ks] + s_v) / est["Sc"][ks]
        else:  # dr
            r = dYm - X @ est["beta"][ks].T
            e = (w * (1.0 - d))[:, None] * r
            treat = (wt_ * r - wt_ * est["eta_t"][ks] - e * (X @ est["v_t"][ks].T)) / est["St"][ks]
            ctrl = (wc_ * r - wc_ * est["eta_c"][ks] + s_v - e * (X @ est["v_c"][ks].T)) / est["Sc"][ks]
        psi[np.ix_(m, ks)] = n * (treat - ctrl)
    return psi
