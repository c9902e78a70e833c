"""de Chaisemartin & D'Haultfœuille (2024) ``did_multiplegt``: driver-side steps on the small cell
sums of :func:`dte_dask.core.dcdh.cell_stats` (switchers of cells without controls removed, estimate
numerators and observation counts, the demeaning means and degrees of freedom of the variance)."""
from __future__ import annotations

import numpy as np

from dte_dask.core.dcdh import Ctx, cell_ratio

__all__ = ["cell_means", "estimate_sums", "split_cells"]


def split_cells(ctx: Ctx, raw: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Driver side: control and switcher sums of :func:`cell_stats`, switchers in (t, baseline) cells
    without controls (Σ w = 0) removed."""
    T, nd = raw["c_w"].shape[1:]
    ctrl = {"w": raw["c_w"], "wd": raw["c_wd"], "rows": raw["c_rows"].astype(np.int64),
            "n": (raw["c_n"] if ctx.clustered else raw["c_rows"]).astype(np.int64)}
    live = ctrl["w"] > 0
    sw = {k: np.where(live, raw["s_" + k], 0.0) for k in ("w", "wd", "dd", "nz")}
    sw["rows"] = np.where(live, raw["s_rows"], 0).astype(np.int64)
    sw["un_cl"] = raw["un_cl"].astype(np.int64)
    nco = raw["co_w"].shape[1]
    nf = nco // (T * max(nd, 1))
    dsq, F = np.divmod(np.arange(nco) // nf, T)
    for j, ell in enumerate(ctx.horizons):
        t = F - 1 + abs(ell)
        ok = (t >= 0) & (t < T) & live[j][np.clip(t, 0, T - 1), np.minimum(dsq, max(nd - 1, 0))]
        for k in ("co_w", "co_wd", "co_n"):
            raw[k][j] = np.where(ok, raw[k][j], 0.0)
    sw.update({"co_w": raw["co_w"], "co_wd": raw["co_wd"], "co_n": raw["co_n"].astype(np.int64),
               "n_sw": sw["rows"].reshape(len(ctx.horizons), -1).sum(axis=1),
               "dd_num": sw["dd"].reshape(len(ctx.horizons), -1).sum(axis=1),
               "dd_w": sw["w"].reshape(len(ctx.horizons), -1).sum(axis=1)})
    return ctrl, sw


def estimate_sums(ctx: Ctx, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Driver side: estimate numerators Σ coef·ΔY and observations used, from the cell sums."""
    H = len(ctx.horizons)
    num, nobs = np.zeros(H), np.zeros(H, np.int64)
    for j in range(H):
        scale, ratio = cell_ratio(ctx, j)
        if scale == 0:
            continue
        num[j] = np.sum(-scale * ratio * ctx.ctrl["wd"][j]) + scale * ctx.sw["wd"][j].sum()
        # observations used: rows with a first difference and a non-zero term, or a zero difference
        nobs[j] = (raw["ok0"][j] + int(np.sum(np.where(ratio != 0, raw["c_nz"][j], 0)))
                   + int(ctx.sw["nz"][j].sum()))
    return {"num": num, "nobs": nobs}


def cell_means(ctx: Ctx, n_units_dsq: np.ndarray, T: int) -> dict[str, np.ndarray]:
    """Driver side: demeaning means and degrees of freedom of the variance (moderndid's rules:
    switchers' cohort, else the (t, baseline) union; controls' (t, baseline) cell, else the union).

    With clusters the counts are distinct clusters; as in moderndid (polars ``n_unique`` counts the
    missing value of the rows outside the cell's members), one is added when the cell also holds
    other rows: controls and union when some unit of the baseline group is not a member at t,
    placebo cohorts always (their grouping holds every period of the cohort's units)."""
    c, s = ctx.ctrl, ctx.sw
    with np.errstate(invalid="ignore", divide="ignore"):
        c_mean = np.where(c["w"] > 0, c["wd"] / np.where(c["w"] > 0, c["w"], 1.0), 0.0)
        uw, uwd = c["w"] + s["w"], c["wd"] + s["wd"]
        u_mean = np.where(uw > 0, uwd / np.where(uw > 0, uw, 1.0), 0.0)
        co_mean = np.where(s["co_n"] > 0, s["co_wd"] / np.where(s["co_w"] != 0, s["co_w"], 1.0), 0.0)
    if ctx.clustered:
        full = n_units_dsq[None, None, :]
        c_dof = c["n"] + (full > c["rows"])
        u_dof = s["un_cl"] + (full > c["rows"] + s["rows"])
        pl = np.array([ell < 0 for ell in ctx.horizons])[:, None]
        co_dof = s["co_n"] + (pl & (T > 1))
    else:
        c_dof, u_dof, co_dof = c["n"], c["n"] + s["rows"], s["co_n"]
    # controls: their (t, baseline) cell, else the union of the cell when the cell is a singleton
    e_c = np.where(c_dof >= 2, c_mean, np.where((c_dof == 1) & (u_dof >= 2), u_mean, 0.0))
    f_c = np.where(c_dof > 1, _dof_factor(c_dof), np.where((c_dof == 1) & (u_dof >= 2), _dof_factor(u_dof), 1.0))
    # switchers: their cohort, else the union of their (t = F_g - 1 + |l|, baseline) cell
    H, nco = co_dof.shape
    nf = nco // (T * max(ctx.n_groups, 1))
    dsq, F = np.divmod(np.arange(nco) // nf, T)
    e_s, f_s = np.zeros((H, nco)), np.ones((H, nco))
    for j, ell in enumerate(ctx.horizons):
        t = F - 1 + abs(ell)
        ok = (t >= 0) & (t < T)
        tt = np.clip(t, 0, T - 1)
        un, um = np.where(ok, u_dof[j][tt, dsq], 0), u_mean[j][tt, dsq]
        sn = co_dof[j]
        e_s[j] = np.where(sn >= 2, co_mean[j], np.where((sn == 1) & (un >= 2), um, 0.0))
        f_s[j] = np.where(sn > 1, _dof_factor(sn), np.where((sn == 1) & (un >= 2), _dof_factor(un), 1.0))
    return {"e_c": e_c, "f_c": f_c, "e_s": e_s, "f_s": f_s}


def _dof_factor(n: np.ndarray) -> np.ndarray:
    return np.sqrt(n / np.maximum(n - 1, 1))
