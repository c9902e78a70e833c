"""Repeated-cross-section kernels with covariates: DRDID's ``reg_did_rc``, ``std_ipw_did_rc`` and
the locally efficient ``drdid_rc`` (Sant'Anna & Zhao 2020), per partition block.

R ``did`` runs these when ``panel=FALSE`` (true repeated cross sections: every row is its own
unit) and when ``allow_unbalanced_panel=TRUE`` on an unbalanced panel (each unit contributes a
*post* row if observed in period t and a *pre* row if observed in the base period; the row
influence functions are rescaled by n / n_rows and summed by unit). Here a repeated cross
section is a panel whose units are observed in one period each, so both cases are one kernel.

A cell's sample is the rows of periods t (post = 1) and base (post = 0) of treated (D) and
control (C) units, with each row's covariates of its own period, X = [1, covariates]. With
w the sampling weight, the four subsets are t1 = D&post, t0 = D&pre, c1 = C&post, c0 = C&pre;
``S_s`` is the weight of subset s, ``SX_s = sum_s w X``, ``A_s = sum_s w X X'``, beta_s the WLS
fit of y on X in subset s, p the logit propensity score (capped at 1 - 1e-6, controls with
p >= 0.995 trimmed) and wc = w p / (1 - p) on controls. DRDID normalises weights to mean one
inside a cell; every formula below is invariant to that scale, and its n1 (rows in the cell)
cancels against R did's rescaling by n / n1, so the influence function of unit i is
``psi_i = n * sum over its rows r of phi_r`` with, in sums (SD = S_t1 + S_t0, SDX = SX_t1 + SX_t0):

* reg: att = a_t1 - a_t0 - SDX'(b_c1 - b_c0)/SD with a_ts = sum_ts w y / S_ts;
  phi = w_t1(y - a_t1)/S_t1 - w_t0(y - a_t0)/S_t0 - wD(X(b_c1 - b_c0) - eta_c)/SD
        - w_c1 e_c1 X'A_c1^{-1}SDX/SD + w_c0 e_c0 X'A_c0^{-1}SDX/SD   (e_s = y - X b_s)
* ipw: att = (a_t1 - a_t0) - (a_c1 - a_c0), a_cs = sum wc_cs y / Sc_cs;
  phi = w_t1(y - a_t1)/S_t1 - w_t0(y - a_t0)/S_t0 - wc_1(y - a_c1)/Sc_1 + wc_0(y - a_c0)/Sc_0
        - w(D - p)X'v_ps,  v_ps = H^{-1}(M2_1 - M2_0),  M2_s = sum wc_s (y - a_cs) X / Sc_s,
        H = sum w p(1 - p) X X'
* dr: residuals r = y - X b_c(post) in every a_s and M2_s, plus the efficiency terms
  a_d1 - a_dt1 - (a_d0 - a_dt0) with a_d. = SDX'(b_t. - b_c.)/SD, a_dt. = SX_t.'(b_t. - b_c.)/S_t.;
  its influence function adds the four OLS estimation effects, collected per subset into one
  vector each: u_c1 = A_c1^{-1}(Sc_1X/Sc_1 - SDX/SD), u_c0 = A_c0^{-1}(SDX/SD - Sc_0X/Sc_0),
  u_t1 = A_t1^{-1}(SDX/SD - SX_t1/S_t1), u_t0 = A_t0^{-1}(SDX/SD - SX_t0/S_t0).

The signs are the delta method's (the influence function is the derivative of the estimate in
a row's weight; tests check this numerically), as in csdid. R DRDID's ``drdid_rc`` source (and
moderndid 0.2, a port of it) *adds* the pre-period outcome-regression effects of the control
regression instead of subtracting them, so its dr standard errors differ (~1e-4 on mpdta).

Kernels loop over cells (a cell's rows depend on which units are observed in its two periods);
every statistic is a sum over rows, so partitions reduce by addition.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from dte_dask.core.blocks import UnitBlock
from dte_dask.core.cells import Cells
from dte_dask.core.regression import (
    PS_CAP,
    TRIM_LEVEL,
    expit,
    logit_grad_hess,
    with_intercept,
)

Stats = dict[str, np.ndarray]
SUBSETS = ("c1", "c0", "t1", "t0")  # index 0..3 in the stacked statistics
_CELL_KEYS = ("S", "SD", "a", "eta_c", "beta", "u", "gamma", "Sc", "v_ps", "a_eff")  # (K, ...) arrays of est


class _Rows:
    """The stacked rows of one cell in one block: post rows first, then pre rows."""

    __slots__ = ("X", "y", "d", "post", "w", "unit")

    def __init__(self, block: UnitBlock, k: int, cells: Cells, D: np.ndarray, C: np.ndarray) -> None:
        t, b = int(cells.t[k]), int(cells.base[k])
        m = D[:, k] | C[:, k]
        yt, yb = block.y[:, t], block.y[:, b]
        it = np.flatnonzero(m & ~np.isnan(yt))
        ib = np.flatnonzero(m & ~np.isnan(yb))
        self.unit = np.concatenate([it, ib])
        self.X = with_intercept(np.concatenate([block.x_at(t)[it], block.x_at(b)[ib]]))
        self.y = np.concatenate([yt[it], yb[ib]])
        self.d = D[self.unit, k].astype(float)
        self.post = np.concatenate([np.ones(it.size), np.zeros(ib.size)])
        self.w = block.w[self.unit]

    def masks(self) -> tuple[np.ndarray, ...]:
        """Row weights of the subsets c1, c0, t1, t0."""
        c, pre = 1.0 - self.d, 1.0 - self.post
        return (self.w * c * self.post, self.w * c * pre, self.w * self.d * self.post, self.w * self.d * pre)


def _treated_controls(block: UnitBlock, cells: Cells) -> tuple[np.ndarray, np.ndarray]:
    return cells.treated(block.g), cells.controls(block.g)


def or_stats(block: UnitBlock, cells: Cells, p: int, active: np.ndarray) -> Stats:
    """Per cell and subset (c1, c0, t1, t0): X'WX, X'Wy, X'W and row counts; unit counts."""
    K = cells.K
    out = {"A": np.zeros((K, 4, p, p)), "b": np.zeros((K, 4, p)), "SX": np.zeros((K, 4, p)),
           "rows": np.zeros((K, 4)), "nD": np.zeros(K), "nC": np.zeros(K)}
    D, C = _treated_controls(block, cells)
    out["nD"] += D.sum(0)
    out["nC"] += C.sum(0)
    for k in np.flatnonzero(active):
        r = _Rows(block, int(k), cells, D, C)
        for s, ws in enumerate(r.masks()):
            out["A"][k, s] = (r.X * ws[:, None]).T @ r.X
            out["b"][k, s] = r.X.T @ (ws * r.y)
            out["SX"][k, s] = r.X.T @ ws
            out["rows"][k, s] = np.count_nonzero(ws)
    return out


def logit_stats(block: UnitBlock, cells: Cells, gamma: np.ndarray, active: np.ndarray) -> Stats:
    """Per active cell: gradient, information and log-likelihood of the propensity logit on the
    cell's rows (the same keys as :func:`dte_dask.core.covariates.logit_stats`)."""
    K, p = gamma.shape
    out = {"grad": np.zeros((K, p)), "hess": np.zeros((K, p, p)), "ll": np.zeros(K)}
    D, C = _treated_controls(block, cells)
    for k in np.flatnonzero(active):
        r = _Rows(block, int(k), cells, D, C)
        out["grad"][k], out["hess"][k], out["ll"][k] = logit_grad_hess(r.X, r.d, r.w, gamma[k])
    return out


def or_and_logit_stats(block: UnitBlock, cells: Cells, p: int, active: np.ndarray, gamma: np.ndarray,
                       warm: np.ndarray) -> Stats:
    """:func:`or_stats` and :func:`logit_stats` at ``gamma`` for the ``warm`` cells, in one pass (a
    warm-started logit's first evaluation rides along with the outcome regressions' sums)."""
    return {**or_stats(block, cells, p, active), **logit_stats(block, cells, gamma, warm)}


def _ps(r: _Rows, gamma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Capped propensity scores and the control weights w p/(1-p) (trimmed, zero on treated)."""
    ps = np.minimum(expit(r.X @ gamma), PS_CAP)
    wc = np.where(ps < TRIM_LEVEL, r.w * ps * (1.0 - r.d) / (1.0 - ps), 0.0)
    return ps, wc


def logit_and_ps_stats(block: UnitBlock, cells: Cells, gamma: np.ndarray, active: np.ndarray,
                       candidates: np.ndarray) -> Stats:
    """:func:`logit_stats` for the ``active`` cells and :func:`ps_stats` for the ``candidates`` (the
    cells the logit may end usable for) at the same ``gamma``, in one pass: the logit's likely last
    evaluation also sums what the estimates need, should it be the last."""
    return {**logit_stats(block, cells, gamma, active), **ps_stats(block, cells, gamma, candidates)}


def ps_stats(block: UnitBlock, cells: Cells, gamma: np.ndarray, active: np.ndarray) -> Stats:
    """Per cell, given the logit: sums of the ps-weighted controls (post, pre) and the information."""
    K, p = gamma.shape
    out = {"ScX": np.zeros((K, 2, p)), "ScyX": np.zeros((K, 2, p)), "ScXX": np.zeros((K, 2, p, p)),
           "H": np.zeros((K, p, p))}
    D, C = _treated_controls(block, cells)
    for k in np.flatnonzero(active):
        r = _Rows(block, int(k), cells, D, C)
        ps, wc = _ps(r, gamma[k])
        for s, ws in enumerate((wc * r.post, wc * (1.0 - r.post))):
            out["ScX"][k, s] = r.X.T @ ws
            out["ScyX"][k, s] = r.X.T @ (ws * r.y)
            out["ScXX"][k, s] = (r.X * ws[:, None]).T @ r.X
        out["H"][k] = (r.X * (r.w * ps * (1.0 - ps))[:, None]).T @ r.X
    return out


def rc_influence(block: UnitBlock, cells: Cells, est: dict[str, Any], out: np.ndarray | None = None) -> np.ndarray:
    """(n_block, K) influence functions, row terms summed by unit (zero for NaN cells)."""
    method, n, ok = est["method"], est["n"], est["ok"]
    psi = np.zeros((block.n, cells.K)) if out is None else out
    D, C = _treated_controls(block, cells)
    for k in np.flatnonzero(ok):
        r = _Rows(block, int(k), cells, D, C)
        if r.y.size == 0:
            continue
        e = {key: est[key][k] for key in _CELL_KEYS if key in est}
        wc1, wc0, wt1, wt0 = r.masks()
        S = e["S"]  # (4,) weights of c1, c0, t1, t0
        if method == "reg":
            bc1, bc0 = e["beta"][0], e["beta"][1]
            wD = r.w * r.d
            phi = (wt1 * (r.y - e["a"][2]) / S[2] - wt0 * (r.y - e["a"][3]) / S[3]
                   - wD * (r.X @ (bc1 - bc0) - e["eta_c"]) / e["SD"]
                   - wc1 * (r.y - r.X @ bc1) * (r.X @ e["u"][0])
                   + wc0 * (r.y - r.X @ bc0) * (r.X @ e["u"][1]))
        else:
            ps, wc = _ps(r, e["gamma"])
            pc1, pc0 = wc * r.post, wc * (1.0 - r.post)
            Sc = e["Sc"]
            score = r.w * (r.d - ps) * (r.X @ e["v_ps"])
            if method == "ipw":
                res = r.y
            else:
                bc1, bc0 = e["beta"][0], e["beta"][1]
                res = r.y - np.where(r.post == 1.0, r.X @ bc1, r.X @ bc0)
            a = e["a"]  # a_c1, a_c0, a_t1, a_t0
            phi = (wt1 * (res - a[2]) / S[2] - wt0 * (res - a[3]) / S[3]
                   - pc1 * (res - a[0]) / Sc[0] + pc0 * (res - a[1]) / Sc[1] - score)
            if method == "dr":
                bt1, bt0 = e["beta"][2], e["beta"][3]
                wD = r.w * r.d
                f1, f0 = r.X @ (bt1 - bc1), r.X @ (bt0 - bc0)
                ad = e["a_eff"]  # a_d1, a_dt1, a_d0, a_dt0
                phi += (wD * (f1 - ad[0]) / e["SD"] - wt1 * (f1 - ad[1]) / S[2]
                        - wD * (f0 - ad[2]) / e["SD"] + wt0 * (f0 - ad[3]) / S[3])
                u = e["u"]  # u_c1, u_c0, u_t1, u_t0
                phi += (wc1 * (r.y - r.X @ bc1) * (r.X @ u[0]) + wc0 * (r.y - r.X @ bc0) * (r.X @ u[1])
                        + wt1 * (r.y - r.X @ bt1) * (r.X @ u[2]) - wt0 * (r.y - r.X @ bt0) * (r.X @ u[3]))
        psi[:, k] = np.bincount(r.unit, weights=n * phi, minlength=block.n)
    return psi
