"""The ATT(g,t) task graph: statistics passes, influence pass, then small reductions.

pass 1..k  ``attgt-stats`` / ``attgt-logit`` / ``attgt-moments``: kernels map over the blocks,
           their sums are tree-reduced and the driver solves the small per-cell problems;
pass k+1   ``attgt-influence``: each block's influence functions Psi (n_block x K'; K' = cells + one
           cohort column per group, for the aggregation weights) are computed on the worker and
           reduced there, in the same task, to Psi'Psi (cluster sums first) and to the block's
           bootstrap draws; Psi itself is never stored, so memory is one partition's Psi;
reduce     ``attgt-gram-sum`` (K' x K') and ``mboot-merge`` (B x K') along the RNG-block tree.
Only K-, K'xK'- and BxK'-sized arrays ever reach the driver.

Unbalanced panels and repeated cross sections run R's repeated-cross-section estimators: the
four-means DiD without covariates (:mod:`dte_dask.core.rcs`), DRDID's ``reg_did_rc`` /
``std_ipw_did_rc`` / ``drdid_rc`` with them (:mod:`dte_dask.core.rcs_covariates`: one pass for the
four outcome regressions, the logit passes, one pass for the propensity-weighted moments).

Without covariates on a balanced, unclustered panel the same two passes run on cohort moments
instead (:mod:`dte_dask.core.moments`): cohort-by-period sums give the estimates, centred
cohort second moments give Psi'Psi exactly, and Psi is only rebuilt one RNG block at a time for
the bootstrap.
"""
from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass

import dask
import numpy as np

from dte_dask.core import covariates, logit, moments, rcs, rcs_covariates, twobytwo
from dte_dask.core.blocks import UnitBlock
from dte_dask.core.cells import Cells
from dte_dask.core.regression import ILL_CONDITIONED, equilibrated_cond, guarded_solve
from dte_dask.exceptions import DegenerateCellWarning, NuisanceFitWarning
from dte_dask.graph.reduce import by_rng_block, tree_merge
from dte_dask.inference.bootstrap import boot_cover, boot_cover_apply
from dte_dask.inference.variance import gram
from dte_dask.panel.panel import Panel


@dataclass(frozen=True)
class AttgtFit:
    att: np.ndarray  # (K,)
    ok: np.ndarray  # (K,) estimable
    n_treated: np.ndarray
    n_control: np.ndarray
    groups: np.ndarray  # group indices of the cohort columns appended to Psi
    pg: np.ndarray  # P(G = g), weighted, per group
    gram: np.ndarray  # (K', K') Psi'Psi (cluster sums when clustered)
    draws: np.ndarray | None  # (B, K') bootstrap perturbations of the estimates
    n: int
    n_clusters: int


# ----------------------------------------------------------------------------- kernels + groups
def _with_groups(block: UnitBlock, stats_fn, cells: Cells, groups: np.ndarray, *args) -> dict:
    out = stats_fn(block, cells, *args)
    G = cells.effective_g(block.g)
    out["Swg"] = (G[:, None] == groups[None, :]).astype(float).T @ block.w
    return out


def _influence(block: UnitBlock, cells: Cells, est: dict, groups: np.ndarray, path: str) -> np.ndarray:
    fn = {"uncond": twobytwo.uncond_influence, "rcs": rcs.rcs_influence, "cov": covariates.cov_influence,
          "rcs-cov": rcs_covariates.rc_influence}[path]
    psi = fn(block, cells, est)
    G = cells.effective_g(block.g)
    h = (G[:, None] == groups[None, :]) * block.w[:, None] - est["pg"][None, :]
    return np.hstack([psi, h])


def _gram(block: UnitBlock, psi: np.ndarray, clustered: bool) -> np.ndarray:
    return gram(psi, block.rank, clustered)


def _moment_reductions(block: UnitBlock, cells: Cells, cats: np.ndarray, m: np.ndarray, A: np.ndarray,
                       b: np.ndarray, d: np.ndarray, block_size: int, n_blocks: int, boot_kw: dict | None):
    """Cohort moments (for Psi'Psi) and bootstrap draws of one partition, without forming Psi."""
    mom = by_rng_block(block, moments.category_moments, block_size, n_blocks, cells, cats, m)
    if boot_kw is None:
        return mom, None
    apply = moments.boot_apply(block, cells, cats, m, A, b, d)
    return mom, boot_cover_apply(block.rank, apply, A.shape[2], **boot_kw)


def _psi_reductions(block: UnitBlock, cells: Cells, est: dict, groups: np.ndarray, path: str, clustered: bool,
                    block_size: int, n_blocks: int, boot_kw: dict | None):
    """Influence functions of one partition, reduced at once to its Gram and bootstrap covers.

    Psi (n_block x K') lives only inside this task, so memory stays at one partition's Psi.
    """
    psi = _influence(block, cells, est, groups, path)
    g = by_rng_block(block, _gram, block_size, n_blocks, clustered, rows=psi)
    b = boot_cover(psi, block.rank, **boot_kw) if boot_kw is not None else None
    return g, b


def _exact_sum(panel: Panel, func, *args, name: str):
    """Sum ``func(block, *args)`` over the panel, bit-identically for any partitioning."""
    parts = panel.map_blocks(by_rng_block, func, panel.rng_block_size, panel.n_rng_blocks, *args, name=name)
    return tree_merge(parts, name=f"{name}-sum")


# ----------------------------------------------------------------------------- driver side
def _warn_cells(cells: Cells, bad: np.ndarray, reason: str, label) -> None:
    """One warning per reason, naming the cells (as R did, which reports NA for them)."""
    idx = np.flatnonzero(bad)
    if idx.size == 0:
        return
    names = ", ".join(f"ATT(g={label(cells.g[k])}, t={label(cells.t[k])})" for k in idx[:8])
    more = f" and {idx.size - 8} more" if idx.size > 8 else ""
    verb = "is" if idx.size == 1 else "are"
    warnings.warn(f"{names}{more} {verb} NaN: {reason}", DegenerateCellWarning, stacklevel=4)


def _note_cells(cells: Cells, bad: np.ndarray, reason: str, label) -> None:
    """One warning per reason for cells that keep their estimate (R warns and carries on)."""
    idx = np.flatnonzero(bad)
    if idx.size == 0:
        return
    names = ", ".join(f"ATT(g={label(cells.g[k])}, t={label(cells.t[k])})" for k in idx[:8])
    more = f" and {idx.size - 8} more" if idx.size > 8 else ""
    warnings.warn(f"{names}{more}: {reason}", NuisanceFitWarning, stacklevel=4)


def _solve_each(A: np.ndarray, b: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = np.full(b.shape, np.nan)
    good = ok.copy()
    for k in np.flatnonzero(ok):
        x = guarded_solve(A[k], b[k])
        if x is None:
            good[k] = False
        else:
            out[k] = x
    return out, good


def _warn_ill_conditioned(cells: Cells, ok: np.ndarray, label, mats: dict[str, np.ndarray]) -> None:
    """Cells kept although a nuisance design is nearly singular (R keeps them too): say so."""
    for what, A in mats.items():
        c = np.array([equilibrated_cond(A[k]) if ok[k] else 0.0 for k in range(cells.K)])
        bad = ok & (c > ILL_CONDITIONED)
        if bad.any():
            _note_cells(cells, bad, f"nearly collinear covariates: the {what} is ill-conditioned (condition number "
                        f"{np.max(c[bad]):.1e} after equilibrating its columns), so the estimate and its standard "
                        f"error may be accurate to only about {np.max(c[bad]) * np.finfo(float).eps:.0e} relative", label)


def _logit_fit(panel: Panel, cells: Cells, gamma: np.ndarray, active: np.ndarray, dev_scale: np.ndarray | None = None,
               stats_fn=covariates.logit_stats, **kw) -> logit.LogitFit:
    """Propensity-score logit per cell (:class:`dte_dask.core.logit.IrlsLogit`): one reduction over
    the blocks per IRLS iteration (and per halved step).

    ``stats_fn(block, cells, gamma, active, *kw.values())`` returns the blocks' ``grad`` / ``hess`` /
    ``ll`` and, where it counts them, ``n01`` / ``n999`` (:func:`dte_dask.core.covariates.logit_stats`
    on panels, the repeated-cross-section rows of :func:`dte_dask.core.rcs_covariates.logit_stats`)."""
    irls = logit.IrlsLogit(gamma, active, dev_scale)
    while (prop := irls.proposal()) is not None:
        at, mask = prop
        s = _exact_sum(panel, stats_fn, cells, at, mask, *kw.values(), name="attgt-logit").compute()
        irls.update(s["grad"], s["hess"], -2.0 * s["ll"], s.get("n01", np.zeros(cells.K)), s.get("n999"))
    return irls.result()


def _report_logit(cells: Cells, fit: logit.LogitFit, label) -> None:
    """Warnings for cells whose logit failed (they become NaN)."""
    _warn_cells(cells, fit.singular & (fit.iterations == 0),
                "singular propensity-score design, even with equilibrated columns (collinear covariates, "
                "or a covariate constant among the cell's units)", label)
    _warn_cells(cells, fit.singular & (fit.iterations > 0),
                "the propensity-score information matrix became singular during IRLS (quasi-complete separation)", label)
    _warn_cells(cells, fit.separated, "perfect separation in the propensity score: the covariates predict treatment "
                "exactly (the logit deviance fell to ~0), so treated and control units do not overlap", label)


def _note_logit(cells: Cells, fit: logit.LogitFit, ok: np.ndarray, label) -> None:
    """Notes for estimable cells whose logit met a problem R only warns about."""
    _note_cells(cells, ok & ~fit.converged,
                f"the propensity-score logit did not converge in {logit.GLM_MAXIT} IRLS iterations "
                "(glm.fit's rule |dev - dev_old|/(|dev| + 0.1) < 1e-8); its last iterate is used, as R does", label)
    _note_cells(cells, ok & fit.extreme, "fitted propensity scores numerically 0 or 1 occurred (quasi-complete "
                "separation; R: 'glm.fit: fitted probabilities numerically 0 or 1 occurred'); those units are "
                "trimmed or weigh ~0", label)


def _newton(panel: Panel, cells: Cells, gamma: np.ndarray, active: np.ndarray, label,
            dev_scale: np.ndarray | None = None, stats_fn=covariates.logit_stats) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_logit_fit` with every problem reported per cell; returns (gamma, ok)."""
    fit = _logit_fit(panel, cells, gamma, active, dev_scale, stats_fn)
    _report_logit(cells, fit, label)
    _note_logit(cells, fit, fit.ok, label)
    return fit.gamma, fit.ok


def _overlap_violated(panel: Panel, cells: Cells, s: dict, fit: logit.LogitFit, ok: np.ndarray) -> np.ndarray:
    """R did's overlap check: its preliminary, *unweighted* logit has a fitted probability >= 0.999.

    Without sampling weights that logit is the propensity score itself; with weights it is fitted
    once more, unweighted (extra reductions only in that case).
    """
    if panel.spec.weights is None:
        return ok & fit.overlap
    gamma0 = logit.intercept_start(s["nD"], s["nC"], fit.gamma.shape[1])
    pre = _logit_fit(panel, cells, gamma0, ok.copy(), None, covariates.logit_stats, unweighted=True)
    return ok & (pre.overlap | pre.separated)


def fit_cells(panel: Panel, cells: Cells, *, method: str, unbalanced: bool, groups: np.ndarray,
              n_boot: int, seed: int, boot_weights: str, label) -> AttgtFit:
    """Estimate every cell, keep Psi on the workers, return the small reduced arrays."""
    n = panel.n_units
    p = len(panel.spec.covariates) + 1
    clustered = panel.spec.cluster is not None
    if unbalanced and p > 1:
        path = "rcs-cov"
        att, ok, est, s = _fit_rc_covariates(panel, cells, method, p, groups, label)
    elif unbalanced:
        path = "rcs"
        s = _exact_sum(panel, _with_groups, rcs.rcs_stats, cells, groups, name="attgt-stats").compute()
        e = rcs.rcs_estimate(s)
        est = {**s, **e, "n": n}
        ok, att = e["ok"], e["att"]
        _warn_cells(cells, ~ok & ~cells.reference, "no treated or no control observations in one of its two periods", label)
    elif p == 1:
        path = "uncond" if clustered else "moments"
        if path == "moments":
            cats = np.unique(cells.effective_g(np.array(list(panel.cohort_sizes), dtype=float)))
            cs = _exact_sum(panel, moments.category_sums, cells, cats, name="attgt-stats").compute()
            s = moments.estimate(cells, cats, cs)
            s["Swg"] = cs["W"][np.searchsorted(cats, groups)]
        else:
            s = _exact_sum(panel, _with_groups, twobytwo.uncond_stats, cells, groups, name="attgt-stats").compute()
        ok = _uncond_ok(cells, s, method, label)
        with np.errstate(invalid="ignore", divide="ignore"):
            mu1, mu0 = s["SwDdY"] / s["SwD"], s["SwCdY"] / s["SwC"]
        att = np.where(ok, mu1 - mu0, np.nan)
        est = {**s, "mu1": mu1, "mu0": mu0, "ok": ok, "n": n}
    else:
        path = "cov"
        att, ok, est, s = _fit_covariates(panel, cells, method, p, groups, label)
    ok = ok & ~cells.reference
    att = np.where(cells.reference, 0.0, att)
    pg = s["Swg"] / n
    est = {**est, "ok": ok, "pg": pg}

    boot_kw = None
    if n_boot > 0:
        boot_kw = dict(seed=seed, n_boot=n_boot, block_size=panel.rng_block_size, n_blocks=panel.n_rng_blocks,
                       n=n, kind=boot_weights)
    if path == "moments":
        A, b, d = moments.coefficients(cells, cats, est, groups, n)
        parts = panel.map_blocks(_moment_reductions, cells, cats, s["m"], A, b, d, panel.rng_block_size,
                                 panel.n_rng_blocks, boot_kw, name="attgt-influence")
    else:
        parts = panel.map_blocks(_psi_reductions, cells, est, groups, path, clustered, panel.rng_block_size,
                                 panel.n_rng_blocks, boot_kw, name="attgt-influence")
    pick = dask.delayed(operator.getitem, pure=True)
    todo = [tree_merge([pick(p, 0, dask_key_name=f"attgt-gram-{p.key}") for p in parts], name="attgt-gram-sum")]
    if boot_kw is not None:
        todo.append(tree_merge([pick(p, 1, dask_key_name=f"mboot-{p.key}") for p in parts], name="mboot-merge"))
    results = dask.compute(*todo)
    gram_total = moments.gram(results[0], A, b, d) if path == "moments" else results[0]
    return AttgtFit(att=att, ok=ok, n_treated=s["nD"], n_control=s["nC"], groups=groups, pg=pg,
                    gram=gram_total, draws=results[1] if n_boot > 0 else None, n=n,
                    n_clusters=panel.n_clusters if clustered else n)


def _uncond_ok(cells: Cells, s: dict, method: str, label) -> np.ndarray:
    """Estimable cells without covariates (DRDID trims controls when ps >= 0.995 for dr / ipw)."""
    ok = (s["SwD"] > 0) & (s["SwC"] > 0)
    if method in ("dr", "ipw"):
        with np.errstate(invalid="ignore", divide="ignore"):
            trimmed = np.minimum(s["SwD"] / (s["SwD"] + s["SwC"]), 1 - 1e-6) >= 0.995
        _warn_cells(cells, ok & trimmed, "every control has a propensity score >= 0.995 and is trimmed", label)
        ok &= ~trimmed
    _warn_cells(cells, ~ok & (s["SwC"] <= 0), "no control units", label)
    return ok


def _fit_covariates(panel: Panel, cells: Cells, method: str, p: int, groups: np.ndarray, label):
    s = _exact_sum(panel, _with_groups, covariates.ols_stats, cells, groups, p, name="attgt-stats").compute()
    ok = (s["SwD"] > 0) & (s["nC"] > 0)
    _warn_cells(cells, ~ok, "no control units", label)
    beta = None
    if method in ("reg", "dr"):
        beta, good = _solve_each(s["XtWX"], s["XtWdY"], ok)
        _warn_cells(cells, ok & ~good, "singular outcome-regression design among controls (collinear covariates?)", label)
        ok = good
    if method == "reg":
        v_t, _ = _solve_each(s["XtWX"], s["SwDX"], ok)
        with np.errstate(invalid="ignore", divide="ignore"):
            eta_t = s["SwDdY"] / s["SwD"]
            eta_c = np.einsum("kp,kp->k", s["SwDX"], beta) / s["SwD"]
        _warn_ill_conditioned(cells, ok, label, {"outcome-regression design among controls": s["XtWX"]})
        att = np.where(ok, eta_t - eta_c, np.nan)
        return att, ok, {"method": "reg", "n": panel.n_units, "beta": beta, "v_t": v_t, "eta_t": eta_t, "eta_c": eta_c, "St": s["SwD"]}, s
    # propensity score: IRLS from the intercept-only MLE; deviances on R's scale (weights of mean 1)
    swc = s["XtWX"][:, 0, 0]
    gamma = logit.intercept_start(s["SwD"], swc, p)
    gamma[~ok] = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        dev_scale = (s["nD"] + s["nC"]) / (s["SwD"] + swc)
    fit = _logit_fit(panel, cells, gamma, ok.copy(), dev_scale)
    _report_logit(cells, fit, label)
    gamma, ok = fit.gamma, fit.ok
    bad = _overlap_violated(panel, cells, s, fit, ok)
    _warn_cells(cells, bad, "overlap condition violated: a fitted propensity score is >= 0.999 (R did's check on "
                "its preliminary unweighted logit)", label)
    ok &= ~bad
    _note_logit(cells, fit, ok, label)
    m = _exact_sum(panel, covariates.ps_moments, cells, gamma, beta, name="attgt-moments").compute()
    ok &= (m["Sc"] > 0)
    b = beta if beta is not None else np.zeros((cells.K, p))
    with np.errstate(invalid="ignore", divide="ignore"):
        if method == "dr":
            eta_t = (m["At"] - np.einsum("kp,kp->k", m["StX"], b)) / m["St"]
            eta_c = (m["Ac"] - np.einsum("kp,kp->k", m["ScX"], b)) / m["Sc"]
            M2 = m["ScdYX"] - np.einsum("kpq,kq->kp", m["ScXX"], b) - eta_c[:, None] * m["ScX"]
        else:
            eta_t, eta_c = m["At"] / m["St"], m["Ac"] / m["Sc"]
            M2 = m["ScdYX"] - eta_c[:, None] * m["ScX"]
    v_ps, good = _solve_each(m["H"], M2, ok)
    _warn_cells(cells, ok & ~good, "singular propensity-score information matrix", label)
    ok = good
    mats = {"propensity-score information matrix": m["H"]}
    if method == "dr":
        mats["outcome-regression design among controls"] = s["XtWX"]
    _warn_ill_conditioned(cells, ok, label, mats)
    est = {"method": method, "n": panel.n_units, "beta": b, "gamma": gamma, "eta_t": eta_t, "eta_c": eta_c,
           "St": m["St"], "Sc": m["Sc"], "v_ps": v_ps}
    if method == "dr":
        est["v_t"], _ = _solve_each(s["XtWX"], m["StX"], ok)
        est["v_c"], _ = _solve_each(s["XtWX"], m["ScX"], ok)
    att = np.where(ok, eta_t - eta_c, np.nan)
    return att, ok, est, s


# ----------------------------------------------------------------------------- repeated cross sections
def _ps_logit(panel: Panel, cells: Cells, gamma: np.ndarray, active: np.ndarray, label, stats_fn):
    """The one call into the propensity-score fit of the repeated-cross-section route."""
    return _newton(panel, cells, gamma, active, label, stats_fn=stats_fn)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("kp,kp->k", a, b)


def _fit_rc_covariates(panel: Panel, cells: Cells, method: str, p: int, groups: np.ndarray, label):
    """DRDID's repeated-cross-section estimators per cell (formulas in core/rcs_covariates.py)."""
    K = cells.K
    active = ~cells.reference
    s = _exact_sum(panel, _with_groups, rcs_covariates.or_stats, cells, groups, p, active, name="attgt-stats").compute()
    S = s["SX"][:, :, 0]  # weights of c1, c0, t1, t0
    ok = active & (S[:, 2] > 0) & (S[:, 3] > 0) & (s["rows"][:, 0] > 0) & (s["rows"][:, 1] > 0)
    _warn_cells(cells, active & ~ok, "no treated or no control observations in one of its two periods", label)
    SD, SDX = S[:, 2] + S[:, 3], s["SX"][:, 2] + s["SX"][:, 3]
    beta = np.zeros((K, 4, p))
    for j in {"reg": (0, 1), "ipw": (), "dr": (0, 1, 2, 3)}[method]:
        beta[:, j], good = _solve_each(s["A"][:, j], s["b"][:, j], ok)
        who = "controls" if j < 2 else "treated"
        _warn_cells(cells, ok & ~good, f"singular outcome-regression design among {who} (collinear covariates?)", label)
        ok = good
    beta[~ok] = 0.0
    n = panel.n_units
    with np.errstate(invalid="ignore", divide="ignore"):
        sdx = SDX / SD[:, None]
        if method == "reg":
            eta_c = _dot(SDX, beta[:, 0] - beta[:, 1]) / SD
            a_t = s["b"][:, 2:, 0] / S[:, 2:]
            att = np.where(ok, a_t[:, 0] - a_t[:, 1] - eta_c, np.nan)
            u = np.stack([_solve_each(s["A"][:, j], sdx, ok)[0] for j in (0, 1)], axis=1)
            a = np.column_stack([np.zeros((K, 2)), a_t])
            est = {"method": "reg", "n": n, "S": S, "SD": SD, "a": a, "eta_c": eta_c, "beta": beta, "u": u}
            return att, ok, est, s
        gamma = np.zeros((K, p))
        gamma[:, 0] = np.log(SD / (S[:, 0] + S[:, 1]))
    gamma[~ok] = 0.0
    gamma, ok = _ps_logit(panel, cells, gamma, ok.copy(), label, rcs_covariates.logit_stats)
    m = _exact_sum(panel, rcs_covariates.ps_stats, cells, gamma, ok, name="attgt-moments").compute()
    Sc = m["ScX"][:, :, 0]  # ps-weighted controls, post and pre
    bad = ok & ~((Sc[:, 0] > 0) & (Sc[:, 1] > 0))
    _warn_cells(cells, bad, "every control has a propensity score >= 0.995 and is trimmed", label)
    ok &= ~bad
    bc = beta[:, :2]
    with np.errstate(invalid="ignore", divide="ignore"):
        a_c = (m["ScyX"][:, :, 0] - np.einsum("ksp,ksp->ks", m["ScX"], bc)) / Sc
        a_t = (s["b"][:, 2:, 0] - np.einsum("ksp,ksp->ks", s["SX"][:, 2:], bc)) / S[:, 2:]
        M2 = (m["ScyX"] - np.einsum("kspq,ksq->ksp", m["ScXX"], bc) - a_c[:, :, None] * m["ScX"]) / Sc[:, :, None]
        att = (a_t[:, 0] - a_t[:, 1]) - (a_c[:, 0] - a_c[:, 1])
        a_eff = None
        if method == "dr":
            f1, f0 = beta[:, 2] - beta[:, 0], beta[:, 3] - beta[:, 1]
            a_eff = np.column_stack([_dot(SDX, f1) / SD, _dot(s["SX"][:, 2], f1) / S[:, 2],
                                     _dot(SDX, f0) / SD, _dot(s["SX"][:, 3], f0) / S[:, 3]])
            att = att + (a_eff[:, 0] - a_eff[:, 1]) - (a_eff[:, 2] - a_eff[:, 3])
    v_ps, good = _solve_each(m["H"], M2[:, 0] - M2[:, 1], ok)
    _warn_cells(cells, ok & ~good, "singular propensity-score information matrix", label)
    ok = good
    est = {"method": method, "n": n, "S": S, "SD": SD, "a": np.column_stack([a_c, a_t]), "beta": beta,
           "gamma": gamma, "Sc": Sc, "v_ps": v_ps}
    if method == "dr":
        with np.errstate(invalid="ignore", divide="ignore"):
            rhs = (m["ScX"][:, 0] / Sc[:, 0:1] - sdx, sdx - m["ScX"][:, 1] / Sc[:, 1:2],
                   sdx - s["SX"][:, 2] / S[:, 2:3], sdx - s["SX"][:, 3] / S[:, 3:4])
        est["u"] = np.stack([_solve_each(s["A"][:, j], rhs[j], ok)[0] for j in range(4)], axis=1)
        est["a_eff"] = a_eff
    return np.where(ok, att, np.nan), ok, est, s
