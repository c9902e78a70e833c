"""Shared machinery of the data-based checks: panel preparation and pure ATT(g,t) kernels.

The placebo and randomization checks re-estimate ATT(g,t) many times on modified data (shifted
adoption dates, permuted cohort labels). Each re-estimation is a set of pure numpy calls on one
partition's :class:`~dte_dask.panel.blocks.UnitBlock` — the same 2x2 kernels as
:func:`dte_dask.att_gt` (:mod:`dte_dask.core.twobytwo`) — wired as ``dask.delayed`` tasks and
computed with whatever scheduler is active (the user's ``Client`` if there is one; none is ever
created). No task calls ``compute`` itself, so nothing nests.

Estimator: without covariates, the unconditional 2x2 DiD (``att_gt``'s numbers for every
``est_method``); with covariates, the outcome-regression estimator (``est_method="reg"``,
:mod:`dte_dask.core.covariates`), whose
sufficient statistics are sums and therefore reduce across partitions in one pass.

The panel is prepared exactly as ``att_gt`` prepares it (balanced, units treated in the first period
dropped, the same cells for the given ``control_group`` and ``base_period``); anticipation is not
modelled by the checks.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dte_dask.core import covariates as cov_kernels
from dte_dask.core import twobytwo
from dte_dask.core.cells import Cells
from dte_dask.core.regression import guarded_solve
from dte_dask.exceptions import SpecError
from dte_dask.panel.blocks import UnitBlock
from dte_dask.panel.panel import Panel

Stats = dict[str, np.ndarray]


@dataclass(frozen=True)
class Prepared:
    """A panel ready for the checks, with the cells ``att_gt`` would estimate on it."""

    panel: Panel
    cells: Cells
    groups: np.ndarray  # group indices of the treated cohorts (sorted)
    p: int  # 1 + number of covariates
    options: dict[str, Any]


def prepare(data: Any, *, outcome: str | None, unit: str | None, time: str | None, group: str | None,
            treatment: str | None = None, covariates: Sequence[str] | str | None = None,
            weights: str | None = None, cluster: str | None = None, control_group: str = "never_treated",
            base_period: str = "varying", npartitions: int | None = None) -> Prepared:
    """Load (or take) the panel, balance it and drop early-treated units exactly as ``att_gt`` does."""
    from dte_dask.estimators.cs import _as_panel, _cells, _check_literal
    from dte_dask.core.cells import BasePeriod, ControlGroup

    _check_literal("control_group", control_group, ControlGroup)
    _check_literal("base_period", base_period, BasePeriod)
    panel = _as_panel(data, outcome=outcome, unit=unit, time=time, group=group, treatment=treatment,
                      covariates=covariates, weights=weights, cluster=cluster, npartitions=npartitions,
                      allow_unbalanced_panel=False)
    panel = panel.drop_early_treated(0)
    cells, groups = _cells(panel, control_group, 0, base_period)
    spec = panel.spec
    options = dict(outcome=spec.outcome, unit=spec.unit, time=spec.time, group=spec.group_source,
                   covariates=list(spec.covariates), weights=spec.weights, cluster=spec.cluster,
                   control_group=control_group, base_period=base_period,
                   estimator="reg" if spec.covariates else "unconditional 2x2")
    return Prepared(panel, cells, groups, 1 + len(spec.covariates), options)


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise SpecError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_alpha(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise SpecError(f"alpha must be in (0, 1), got {alpha}")
    return float(alpha)


# ----------------------------------------------------------------------------- pure kernels
def with_g(block: UnitBlock, g: np.ndarray) -> UnitBlock:
    """The block with its cohorts replaced by ``g`` (same units, same order)."""
    return UnitBlock(block.ids, block.rank, np.asarray(g, dtype=float), block.w, block.cluster, block.y, block.x)


def truncate(block: UnitBlock, keep: np.ndarray, n_periods: int, g: np.ndarray) -> UnitBlock:
    """Units ``keep`` only, periods ``0..n_periods-1`` only, cohorts replaced by ``g`` (for the kept units)."""
    b = block.take(keep)
    x = b.x
    if x is not None and x.ndim == 3:
        x = x[:, :n_periods, :]
    return UnitBlock(b.ids, b.rank, np.asarray(g, dtype=float), b.w, b.cluster, b.y[:, :n_periods], x)


def cell_stats(block: UnitBlock, cells: Cells, p: int, groups: np.ndarray | None = None) -> Stats:
    """Additive per-cell sums (and weighted cohort sizes ``Swg`` when ``groups`` is given)."""
    s = twobytwo.uncond_stats(block, cells) if p == 1 else cov_kernels.ols_stats(block, cells, p)
    if groups is not None:
        G = cells.effective_g(block.g)
        s["Swg"] = (G[:, None] == groups[None, :]).astype(float).T @ block.w
    return s


def estimates(s: Stats, p: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Cell estimates from the summed statistics, and what the influence kernel needs (n = 1)."""
    if p == 1:
        ok = (s["SwD"] > 0) & (s["SwC"] > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mu1, mu0 = s["SwDdY"] / s["SwD"], s["SwCdY"] / s["SwC"]
        att = np.where(ok, mu1 - mu0, np.nan)
        return att, {**s, "mu1": mu1, "mu0": mu0, "ok": ok, "n": 1.0}
    K = s["SwD"].shape[0]
    ok = (s["SwD"] > 0) & (s["nC"] > 0)
    beta, v_t = np.full((K, p), np.nan), np.full((K, p), np.nan)
    for k in np.flatnonzero(ok):
        b = guarded_solve(s["XtWX"][k], s["XtWdY"][k])
        v = guarded_solve(s["XtWX"][k], s["SwDX"][k]) if b is not None else None
        if b is None or v is None:
            ok[k] = False
        else:
            beta[k], v_t[k] = b, v
    with np.errstate(invalid="ignore", divide="ignore"):
        eta_t = s["SwDdY"] / s["SwD"]
        eta_c = np.einsum("kp,kp->k", np.nan_to_num(s["SwDX"]), np.nan_to_num(beta)) / s["SwD"]
    att = np.where(ok, eta_t - eta_c, np.nan)
    est = {"method": "reg", "n": 1.0, "beta": beta, "v_t": v_t, "eta_t": eta_t, "eta_c": eta_c, "St": s["SwD"], "ok": ok}
    return att, est


def influence(block: UnitBlock, cells: Cells, est: dict[str, Any], p: int) -> np.ndarray:
    """(n_block, K) influence functions on the estimate's scale (covariance = sum of outer products)."""
    if p == 1:
        return twobytwo.uncond_influence(block, cells, est)
    return cov_kernels.cov_influence(block, cells, est)


def compute(*tasks: Any) -> tuple[Any, ...]:
    """``dask.compute`` with the active scheduler (a ``Client`` if one is active; never creates one)."""
    import dask

    return dask.compute(*tasks)
