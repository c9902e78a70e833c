"""Weights of the two-way fixed-effects coefficient on the treated (group, period) cells
(de Chaisemartin & D'Haultfœuille 2020, Theorem 1; R/Stata ``twowayfeweights``): numpy kernels.

With ε_{gt} the residual of the regression of D_{gt} on group and period effects,
:math:`\\hat\\beta_{fe} = \\sum_{g,t} ε_{gt} Y_{gt} / \\sum_{g,t} ε_{gt} D_{gt}` (Frisch–Waugh–Lovell) and,
under parallel trends, :math:`E[\\hat\\beta_{fe}] = E[\\sum_{D_{gt} \\neq 0} w_{gt} Δ_{gt}]` with
:math:`w_{gt} = ε_{gt} D_{gt} / \\sum ε D` (they sum to one) and Δ_{gt} the cell's effect per unit of
treatment. Cells are (unit, period); unit effects are removed by demeaning within unit (local to a
block), period effects are explicit columns (period 0 dropped), so only a (T-1)×(T-1) Gram matrix and
sums cross blocks.
"""
from __future__ import annotations

import numpy as np

from dte_dask.core.dcdh import DcdhBlock

__all__ = ["gram_stats", "residuals", "weight_stats"]


def _within(block: DcdhBlock) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Observed cells, within-unit demeaned D, Y and period dummies (n, T, T-1)."""
    obs = block.present & ~np.isnan(block.y) & ~np.isnan(block.d)
    n_i = obs.sum(axis=1, keepdims=True)
    safe = np.maximum(n_i, 1)
    d = np.where(obs, block.d, 0.0)
    y = np.where(obs, block.y, 0.0)
    dd = np.where(obs, d - d.sum(axis=1, keepdims=True) / safe, 0.0)
    yy = np.where(obs, y - y.sum(axis=1, keepdims=True) / safe, 0.0)
    T = obs.shape[1]
    share = obs[:, 1:] / safe                                  # (n, T-1) mean of dummy s within unit
    X = np.where(obs[:, :, None], np.eye(T)[None, :, 1:] - share[:, None, :], 0.0)
    return obs, dd, yy, X


def gram_stats(block: DcdhBlock) -> dict[str, np.ndarray]:
    """Σ X̃'X̃ and Σ X̃'D̃ over the block's cells."""
    _, dd, _, X = _within(block)
    Xf = X.reshape(-1, X.shape[2])
    return {"xx": Xf.T @ Xf, "xd": Xf.T @ dd.ravel()}


def residuals(block: DcdhBlock, gamma: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ε (n, T) of D on unit and period effects (0 outside the observed cells), observed mask, Y."""
    obs, dd, yy, X = _within(block)
    eps = np.where(obs, dd - X @ gamma, 0.0)
    return eps, obs, yy


def weight_stats(block: DcdhBlock, gamma: np.ndarray) -> dict[str, np.ndarray]:
    """Sums over the block's treated cells (D != 0): Σ εD, Σ εY, Σ ε, Σ ε², count, negatives, Σ εD
    of negative cells, and Σ εD by period."""
    eps, obs, yy = residuals(block, gamma)
    d = np.where(obs, block.d, 0.0)
    tr = obs & (d != 0)
    ed = eps * d
    neg = tr & (ed < 0)
    return {"ed": np.sum(ed), "ey": np.sum(eps * yy), "e_tr": np.sum(eps[tr]), "e2_tr": np.sum(eps[tr] ** 2),
            "n_tr": np.int64(tr.sum()), "n_neg": np.int64(neg.sum()), "ed_neg": np.sum(ed[neg]),
            "ed_t": ed.sum(axis=0), "n_tr_t": tr.sum(axis=0).astype(np.int64)}
