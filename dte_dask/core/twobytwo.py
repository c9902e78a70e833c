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

from dte_dask.core.blocks import UnitBlock
from dte_dask.core.cells import Cells

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


def uncond_influence(block: UnitBlock, cells: Cells, est: dict[str, Any], out: np.ndarray | None = None) -> np.ndarray:
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
    if out is not None:
        out[...] = psi
        return out
    return psi
