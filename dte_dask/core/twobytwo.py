"""The 2x2 ATT(g,t) kernels on balanced panels: sufficient statistics and influence functions.

Pure numpy, one call per partition block. Every statistic is a *sum* over the block's units, so
partitions reduce by addition; the driver turns sums into estimates (see ``graph/attgt.py``).

Estimators follow DRDID (Sant'Anna & Zhao 2020) as called by R ``did``: ``drdid_panel`` (dr),
``std_ipw_did_panel`` (ipw) and ``reg_did_panel`` (reg), with the cell influence function rescaled
by n / n_cell and scattered to all n units, as ``did`` does. Written in sums, for unit i of the
cell (w = sampling weight, D = treated, C = control, dY = Y_t - Y_base, X = [1, covariates]):

* dr:  psi = n{ [w_t(dY - X b) - w_t eta_t - e_i'v_t] / S_t
                 - [w_c(dY - X b) - w_c eta_c + s_i'v_ps - e_i'v_c] / S_c }
* ipw: psi = n{ (w_t dY - w_t eta_t) / S_t - (w_c dY - w_c eta_c + s_i'v_ps) / S_c }
* reg: psi = n{ (wD dY - wD eta_t) - (wD X b - wD eta_c + e_i'v_t) } / S_D

with w_t = wD, w_c = w C ps/(1-ps) (trimmed at ps >= 0.995), e_i = wC(dY - X b)X_i (OLS score),
s_i = w(D - ps)X_i (logit score), v = (X'WX)^{-1} M for the matching derivative M. Without
covariates all three reduce to psi = n{wD(dY - mu1)/S_D - wC(dY - mu0)/S_C} (REFERENCE §1.3).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from dte_dask.core.cells import Cells
from dte_dask.core.regression import PS_CAP, TRIM_LEVEL, expit, logit_grad_hess, with_intercept
from dte_dask.panel.blocks import UnitBlock

Stats = dict[str, np.ndarray]


def delta_y(block: UnitBlock, cells: Cells) -> np.ndarray:
    """(n, K) outcome changes Y_t - Y_base."""
    return block.y[:, cells.t] - block.y[:, cells.base]


# ---------------------------------------------------------------------------- no covariates
def uncond_stats(block: UnitBlock, cells: Cells) -> Stats:
    """Weighted counts and outcome-change sums of treated and controls, per cell."""
    D = cells.treated(block.g)
    C = cells.controls(block.g)
    dY = delta_y(block, cells)
    wD = D * block.w[:, None]
    wC = C * block.w[:, None]
    return {
        "SwD": wD.sum(0), "SwDdY": np.einsum("ik,ik->k", wD, np.where(D, dY, 0.0)),
        "SwC": wC.sum(0), "SwCdY": np.einsum("ik,ik->k", wC, np.where(C, dY, 0.0)),
        "nD": D.sum(0).astype(float), "nC": C.sum(0).astype(float),
    }


def uncond_influence(block: UnitBlock, cells: Cells, est: dict[str, Any]) -> np.ndarray:
    """(n_block, K) influence functions; zero outside each cell and for NaN cells.

    Treated and control sets are disjoint, so psi = s (dY - m) with s = n w (D/S_D - C/S_C) and
    m = mu1 on treated, mu0 on controls: a handful of passes over the n x K arrays.
    """
    D = cells.treated(block.g)
    C = cells.controls(block.g)
    ok = est["ok"]
    with np.errstate(invalid="ignore", divide="ignore"):
        sD = np.where(ok, est["n"] / est["SwD"], 0.0)
        sC = np.where(ok, est["n"] / est["SwC"], 0.0)
    mu1 = np.where(ok, est["mu1"], 0.0)
    mu0 = np.where(ok, est["mu0"], 0.0)
    s = D * sD
    s -= C * sC
    s *= block.w[:, None]
    psi = delta_y(block, cells)
    psi -= np.where(D, mu1, mu0)
    psi *= s
    return psi


# ---------------------------------------------------------------------------- covariates
def _cell_rows(block: UnitBlock, cells: Cells, D: np.ndarray, C: np.ndarray, dY: np.ndarray, k: int):
    m = D[:, k] | C[:, k]
    # covariates as of the earlier of the two periods (R did keeps the earlier row of each 2x2 panel)
    X = with_intercept(block.x_at(int(min(cells.base[k], cells.t[k])))[m])
    return m, X, D[m, k].astype(float), block.w[m], dY[m, k]


def _masks(block: UnitBlock, cells: Cells):
    return cells.treated(block.g), cells.controls(block.g), delta_y(block, cells)


def ols_stats(block: UnitBlock, cells: Cells, p: int) -> Stats:
    """Per cell: controls' X'WX and X'W dY (outcome regression), treated sums and X means."""
    K = cells.K
    out = {"XtWX": np.zeros((K, p, p)), "XtWdY": np.zeros((K, p)), "SwDX": np.zeros((K, p)),
           "SwD": np.zeros(K), "SwDdY": np.zeros(K), "nD": np.zeros(K), "nC": np.zeros(K)}
    D, C, dY = _masks(block, cells)
    for k in range(K):
        _, X, d, w, dy = _cell_rows(block, cells, D, C, dY, k)
        wc = w * (1.0 - d)
        out["XtWX"][k] = (X * wc[:, None]).T @ X
        out["XtWdY"][k] = X.T @ (wc * dy)
        wd = w * d
        out["SwDX"][k] = X.T @ wd
        out["SwD"][k] = wd.sum()
        out["SwDdY"][k] = wd @ dy
        out["nD"][k] = d.sum()
        out["nC"][k] = (1.0 - d).sum()
    return out


def logit_stats(block: UnitBlock, cells: Cells, gamma: np.ndarray, active: np.ndarray) -> Stats:
    """Per active cell: gradient, information matrix and log-likelihood of the propensity logit."""
    K, p = gamma.shape
    out = {"grad": np.zeros((K, p)), "hess": np.zeros((K, p, p)), "ll": np.zeros(K)}
    D, C, dY = _masks(block, cells)
    for k in np.flatnonzero(active):
        _, X, d, w, _ = _cell_rows(block, cells, D, C, dY, k)
        out["grad"][k], out["hess"][k], out["ll"][k] = logit_grad_hess(X, d, w, gamma[k])
    return out


def _ps_weights(X, d, w, gamma):
    ps = np.minimum(expit(X @ gamma), PS_CAP)
    trim = (d == 1) | (ps < TRIM_LEVEL)
    wt = trim * w * d
    wc = trim * w * ps * (1.0 - d) / (1.0 - ps)
    return ps, wt, wc


def ps_moments(block: UnitBlock, cells: Cells, gamma: np.ndarray, beta: np.ndarray | None) -> Stats:
    """Per cell, given the logit ``gamma`` (and OLS ``beta`` for dr): the sums the estimate needs."""
    K, p = gamma.shape
    z = np.zeros
    out = {"St": z(K), "Sc": z(K), "At": z(K), "Ac": z(K), "StX": z((K, p)), "ScX": z((K, p)),
           "ScdYX": z((K, p)), "ScXX": z((K, p, p)), "H": z((K, p, p))}
    D, C, dY = _masks(block, cells)
    for k in range(K):
        _, X, d, w, dy = _cell_rows(block, cells, D, C, dY, k)
        ps, wt, wc = _ps_weights(X, d, w, gamma[k])
        out["St"][k], out["Sc"][k] = wt.sum(), wc.sum()
        out["At"][k], out["Ac"][k] = wt @ dy, wc @ dy
        out["StX"][k], out["ScX"][k] = X.T @ wt, X.T @ wc
        out["ScdYX"][k] = X.T @ (wc * dy)
        out["ScXX"][k] = (X * wc[:, None]).T @ X
        out["H"][k] = (X * (w * ps * (1.0 - ps))[:, None]).T @ X
    return out


def cov_influence(block: UnitBlock, cells: Cells, est: dict[str, Any]) -> np.ndarray:
    """(n_block, K) influence functions for reg / ipw / dr with covariates."""
    method = est["method"]
    n = est["n"]
    D, C, dY = _masks(block, cells)
    psi = np.zeros((block.n, cells.K))
    for k in np.flatnonzero(est["ok"]):
        m, X, d, w, dy = _cell_rows(block, cells, D, C, dY, k)
        if method == "reg":
            b = est["beta"][k]
            wd = w * d
            e_v = w * (1.0 - d) * (dy - X @ b) * (X @ est["v_t"][k])
            num = wd * dy - wd * est["eta_t"][k] - (wd * (X @ b) - wd * est["eta_c"][k] + e_v)
            psi[m, k] = n * num / est["St"][k]
            continue
        ps, wt, wc = _ps_weights(X, d, w, est["gamma"][k])
        s_v = w * (d - ps) * (X @ est["v_ps"][k])
        if method == "ipw":
            treat = (wt * dy - wt * est["eta_t"][k]) / est["St"][k]
            ctrl = (wc * dy - wc * est["eta_c"][k] + s_v) / est["Sc"][k]
        else:  # dr
            b = est["beta"][k]
            r = dy - X @ b
            e = w * (1.0 - d) * r
            treat = (wt * r - wt * est["eta_t"][k] - e * (X @ est["v_t"][k])) / est["St"][k]
            ctrl = (wc * r - wc * est["eta_c"][k] + s_v - e * (X @ est["v_c"][k])) / est["Sc"][k]
        psi[m, k] = n * (treat - ctrl)
    return psi
