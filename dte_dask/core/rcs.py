"""ATT(g,t) on unbalanced panels, the way R ``did`` does it (REFERENCE §1.4).

With ``allow_unbalanced_panel=True`` R ``did`` treats the panel as repeated cross sections: each
cell uses every observed row of periods ``t`` and ``base`` of treated and control units, estimates
the four-means DiD ``(Y_D,t - Y_D,base) - (Y_C,t - Y_C,base)`` and sums the row influence
functions by unit. Written in sums (o_t = 1 if the unit is observed in period t):

    psi_i = n[ wD o_t (Y_t - m_D1)/S_D1 - wD o_b (Y_b - m_D0)/S_D0
               - wC o_t (Y_t - m_C1)/S_C1 + wC o_b (Y_b - m_C0)/S_C0 ]

Without covariates the reg, ipw and dr estimators of DRDID coincide here.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from dte_dask.core.blocks import UnitBlock
from dte_dask.core.cells import Cells

_PARTS = ("D1", "D0", "C1", "C0")


def _parts(block: UnitBlock, cells: Cells):
    D = cells.treated(block.g)
    C = cells.controls(block.g)
    yt, yb = block.y[:, cells.t], block.y[:, cells.base]
    ot, ob = ~np.isnan(yt), ~np.isnan(yb)
    w = block.w[:, None]
    ind = {"D1": D & ot, "D0": D & ob, "C1": C & ot, "C0": C & ob}
    ys = {"D1": yt, "D0": yb, "C1": yt, "C0": yb}
    return ind, ys, w


def rcs_stats(block: UnitBlock, cells: Cells) -> dict[str, np.ndarray]:
    ind, ys, w = _parts(block, cells)
    out: dict[str, np.ndarray] = {}
    for k in _PARTS:
        wi = np.where(ind[k], w, 0.0)
        out["S" + k] = wi.sum(0)
        out["Y" + k] = np.einsum("ik,ik->k", wi, np.where(ind[k], ys[k], 0.0))
    D = cells.treated(block.g)
    C = cells.controls(block.g)
    out["nD"] = D.sum(0).astype(float)
    out["nC"] = C.sum(0).astype(float)
    return out


def rcs_estimate(s: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with np.errstate(invalid="ignore", divide="ignore"):
        means = {k: s["Y" + k] / s["S" + k] for k in _PARTS}
    att = (means["D1"] - means["D0"]) - (means["C1"] - means["C0"])
    ok = np.all([s["S" + k] > 0 for k in _PARTS], axis=0)
    return {"att": np.where(ok, att, np.nan), "ok": ok, "means": means}


def rcs_influence(block: UnitBlock, cells: Cells, est: dict[str, Any], out: np.ndarray | None = None) -> np.ndarray:
    ind, ys, w = _parts(block, cells)
    sign = {"D1": 1.0, "D0": -1.0, "C1": -1.0, "C0": 1.0}
    psi = np.zeros((block.n, cells.K)) if out is None else out
    with np.errstate(invalid="ignore", divide="ignore"):
        for k in _PARTS:
            term = np.where(ind[k], w * (ys[k] - est["means"][k]), 0.0) / est["S" + k]
            psi += sign[k] * term
    psi *= est["n"]
    psi[:, ~est["ok"]] = 0.0
    return psi
