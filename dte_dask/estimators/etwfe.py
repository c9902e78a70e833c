"""Wooldridge (2021) extended two-way fixed effects: ``etwfe``."""
from __future__ import annotations

import time as _time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from dte_dask.core.etwfe import augment, cell_shifts, cell_x_sums, covariate_design
from dte_dask.core.labels import plain
from dte_dask.core.within import DROP, NONE, DesignSpec
from dte_dask.estimators.event_study import (
    make_result,
    period_step,
    resolve_panel,
    treated_cohorts,
)
from dte_dask.estimators.options import EtwfeOptions, parse_options
from dte_dask.exceptions import SpecError
from dte_dask.graph.reduce import compute
from dte_dask.graph.regress import Part, exact_sum, fit_ols
from dte_dask.inference.dist import t_ppf
from dte_dask.panel.panel import Panel
from dte_dask.registry import EstimatorEntry, register
from dte_dask.regression_results import RegressionResult
from dte_dask.results import AggregateResult


def etwfe(
    data: Any,
    *,
    outcome: str | None = None,
    unit: str | None = None,
    time: str | None = None,
    group: str | None = None,
    control_group: str = "not_yet_treated",
    covariates: Sequence[str] | str | None = None,
    weights: str | None = None,
    cluster: str | None = None,
    allow_unbalanced_panel: bool | None = None,
    alpha: float = 0.05,
    npartitions: int | None = None,
    convention: str = "jwdid",
) -> RegressionResult:
    """Extended TWFE of Wooldridge (2021): cohort x period treatment interactions.

    .. math:: y_{it} = \\alpha_i + \\lambda_t + \\sum_{g}\\sum_{t \\in P_g} \\delta_{g,t}
              1\\{G_i = g\\}1\\{t = s\\} + \\varepsilon_{it}

    with :math:`P_g = \\{t \\ge g\\}` (``control_group="not_yet_treated"``: never- and not-yet-treated
    observations are the controls) or :math:`P_g = \\{t \\ne g - 1\\}` (``"never_treated"``: only the
    never treated are controls; pre-period cells are placebo effects), unit effects absorbed.
    Without never-treated units (not-yet-treated controls) the periods from the last cohort's first
    treated period on are dropped and that cohort serves as a control only.

    Returns
    -------
    RegressionResult
        Event-time aggregation at ``event_time`` (cells with t - g = e, weighted by their
        observations); ``by_cohort()`` gives every :math:`\\delta_{g,t}`; ``other`` holds the simple
        ATT (post cells), the group (per cohort, post cells) and calendar (per period, post cells)
        aggregations, columns ``type``, ``label``, ``coef``, ``se``. Every aggregation is
        :math:`W\\hat\\delta` with cell-count weights (Stata ``jwdid_estat``; diff-diff's "cell" weights)
        and covariance :math:`WVW'`, V the CRV1 covariance (pyfixest's small-sample factor).
        ``aggregate("simple" | "group" | "calendar")`` returns them as results of the protocol
        (``vcov()`` is their block of :math:`WVW'`); ``aggregate("dynamic")`` is the result itself.

    Notes
    -----
    With not-yet-treated controls and no covariates, :math:`\\hat\\delta_{g,t}` is the mean imputed
    effect of cell (g, t) of :func:`dte_dask.imputation_did` (Wooldridge 2021, Borusyak et al. 2024),
    so every aggregation coincides with the imputation estimates.
    Covariates (time-varying) follow Stata ``jwdid`` / diff-diff's ``WooldridgeDiD(xtvar=...)``: x
    demeaned within cohort x period cells (:math:`\\dot x`), every treatment cell interacted with
    :math:`\\dot x`, cohort- and period-specific slopes :math:`1\\{G=g\\}x`, :math:`1\\{t=s\\}x`, and
    :math:`\\dot x` itself (:mod:`dte_dask.core.etwfe`); :math:`\\delta_{g,t}` is then the cell's
    effect at its mean covariates.

    ``convention="r_etwfe"`` reproduces R ``etwfe(y ~ x, ..., ivar = unit, cgroup = ...)`` followed by
    ``emfx``: x demeaned by cohort (unweighted, over all observed rows of the cohort) and interacted
    with every treatment cell; the raw x with cohort- and period-specific slopes as controls (for a
    covariate constant within units only the period slopes: the unit effects absorb the rest); a
    cell's effect is its dummy's coefficient plus its slopes times the cell's mean demeaned x
    (``emfx``'s average over the cell's rows; the dummy's own coefficient is ``by_cohort()``'s
    ``dummy_coef``), and every aggregation weights cells by their observed rows, unweighted (``emfx``
    averages over rows whatever the regression weights). R ``etwfe`` without ``ivar`` has cohort
    instead of unit fixed effects: the same point estimates on a balanced panel with covariates
    constant within units, not with time-varying ones. See ``docs/robust-did.md``.
    """
    t0 = _time.perf_counter()
    opt = parse_options(EtwfeOptions, control_group=control_group, convention=convention)
    panel, cov_idx = resolve_panel(data, outcome=outcome, unit=unit, time=time, group=group, covariates=covariates,
                                   weights=weights, cluster=cluster, allow_unbalanced_panel=allow_unbalanced_panel,
                                   npartitions=npartitions)
    step = period_step(panel)
    spec, names, cells, t_end = _design(panel, opt.control_group)
    cov_names = [panel.spec.covariates[j] for j in cov_idx]
    r_etwfe = opt.convention == "r_etwfe"
    sums = None
    if cov_idx or r_etwfe:
        groups = tuple(float(g) for g in panel.cohort_sizes if np.isfinite(g))
        sums = compute(exact_sum(panel, cell_x_sums, groups, tuple(cov_idx), name="etwfe-xmeans"))[0]
    shifts = None
    if cov_idx:
        panel, spec, names, shifts = _with_covariates(panel, spec, names, cells, cov_idx, sums, t_end, opt.convention)
    fit = fit_ols(panel, [Part(spec, np.arange(spec.m), "etwfe-stats")], names, np.arange(spec.m) < spec.n_fe,
                  scores_name="etwfe-scores")
    idx = spec.n_fe + spec.p + np.arange(len(cells))
    kept = fit.pooled.kept[idx]
    p = fit.pooled
    if r_etwfe:  # emfx: a cell's mean effect over its rows, cells weighted by their rows
        L = _cell_effects(spec, idx, shifts)
        delta, V = L @ p.beta, L @ p.cov @ L.T
        row = {float(g): r for g, r in spec.rows}
        n_gt = np.where(kept, [sums["n"][row[float(g)], t] for g, t in cells], 0.0)
    else:
        n_gt = np.where(kept, fit.stats[0]["int_w"], 0.0)
        delta, V = p.beta[idx], p.cov[np.ix_(idx, idx)]

    def agg(mask: np.ndarray) -> np.ndarray:
        w = np.where(mask & kept, n_gt, 0.0)
        return w / w.sum()

    events = sorted({t - g for (g, t), k in zip(cells, kept) if k})
    W = np.array([agg(np.array([t - g == e for g, t in cells])) for e in events])
    post = np.array([t >= g for g, t in cells])
    rows, Wo = [], []
    rows.append(("simple", "ATT"))
    Wo.append(agg(post))
    for g in sorted({g for g, _ in cells}):
        m = post & np.array([c[0] == g for c in cells])
        if (m & kept).any():
            rows.append(("group", plain(panel.group_label(g))))
            Wo.append(agg(m))
    for t in sorted({t for _, t in cells}):
        m = post & np.array([c[1] == t for c in cells])
        if (m & kept).any():
            rows.append(("calendar", plain(panel.periods.labels[t])))
            Wo.append(agg(m))
    Wo = np.array(Wo)
    oc = Wo @ delta
    Vo = Wo @ V @ Wo.T
    ose = np.sqrt(np.clip(np.diag(Vo), 0.0, None))
    other = pd.DataFrame({"type": [r[0] for r in rows], "label": [r[1] for r in rows], "coef": oc, "se": ose})
    cse = np.sqrt(np.clip(np.diag(V), 0.0, None))
    by_cell = pd.DataFrame({"cohort": [plain(panel.group_label(g)) for g, _ in cells],
                            "period": [plain(panel.periods.labels[t]) for _, t in cells],
                            "event_time": [(t - g) * step for g, t in cells], "coef": delta, "se": cse,
                            "n": n_gt})
    if r_etwfe:
        by_cell["dummy_coef"] = p.beta[idx]
    by_cell = by_cell[kept].reset_index(drop=True)
    options = dict(estimator="etwfe", outcome=panel.spec.outcome, unit=panel.spec.unit, time=panel.spec.time,
                   group=panel.spec.group_source, control_group=opt.control_group, convention=opt.convention,
                   covariates=cov_names, weights=panel.spec.weights, cluster=panel.spec.cluster)
    aggs = _aggregations([r[0] for r in rows], [r[1] for r in rows], oc, ose, Vo, alpha, p.n_clusters - 1, options)
    if r_etwfe:
        W, idx = W @ L, np.arange(spec.m)
    return make_result("etwfe", panel, fit, W, idx, np.array(events, dtype=np.int64) * step,
                       np.zeros(len(events), dtype=bool), -step, alpha, options, t0, other=other, cohorts=by_cell,
                       aggregations=aggs)


def _aggregations(kinds: list[str], labels: list[Any], est: np.ndarray, se: np.ndarray, cov: np.ndarray,
                  alpha: float, df_t: int, options: dict) -> dict[str, AggregateResult]:
    """The simple, group and calendar aggregations as results of the protocol (``result.aggregate(kind)``):
    CRV1 covariance ``W V W'``, t intervals with ``df_t`` degrees of freedom; their overall
    estimate is the simple ATT (``jwdid_estat``'s cell-count weights)."""
    crit = float(t_ppf(1.0 - alpha / 2.0, df_t))
    out = {}
    for kind, key_name in (("simple", "key"), ("group", "group"), ("calendar", "time")):
        m = np.array([k == kind for k in kinds]) & (kind != "simple")
        out[kind] = AggregateResult(
            kind=kind, key_name=key_name, keys=np.array([lab for lab, k in zip(labels, m) if k], dtype=object),
            att=est[m], se=se[m], se_analytic=se[m], crit=crit, overall_att=float(est[0]),
            overall_se=float(se[0]), alpha=alpha, bootstrap=False, cov=cov[np.ix_(m, m)], estimator="etwfe",
            options={k: options[k] for k in ("outcome", "time", "unit")}, df_t=df_t)
    return out


def _with_covariates(panel: Panel, spec: DesignSpec, names: list[str], cells, cov_idx: list[int],
                     sums: dict, t_end: int, convention: str):
    """The panel with the derived covariate columns of :mod:`dte_dask.core.etwfe`, the design reading
    them, their names and the cells' mean demeaned covariates (R etwfe's ``emfx`` shifts)."""
    groups = tuple(float(g) for g in panel.cohort_sizes if np.isfinite(g))
    codes = spec.codes[:, :t_end]
    in_reg = (codes != DROP).any(axis=1) & (np.where(codes != DROP, sums["n"][:, :t_end], 0.0).sum(axis=1) > 0)
    last = len(groups)
    reference = last if in_reg[last] else int(np.flatnonzero(in_reg)[-1])
    cspec = covariate_design(convention, sums, groups, tuple(cells), tuple(cov_idx), tuple(range(1, t_end)),
                             in_reg, reference)
    blocks = panel.map_blocks(augment, cspec, name="etwfe-covariates")
    aug = replace(panel, blocks=tuple(blocks))
    cv = [panel.spec.covariates[j] for j in cov_idx]
    sv = [cv[j] for j in cspec.slope_cov]
    cn = [f"{names[spec.n_fe + j]}:{c}_dm" for j in range(len(cells)) for c in cv]
    cn += [f"cohort={plain(panel.group_label(g))}:{c}" for g in cspec.slope_cohorts for c in sv]
    cn += [f"{panel.spec.time}={plain(panel.periods.labels[t])}:{c}" for t in cspec.periods for c in cv]
    cn += list(sv) if cspec.raw_main else [f"{c}_dm" for c in cv]
    spec = replace(spec, cov_idx=tuple(range(cspec.width)))
    return aug, spec, names[:spec.n_fe] + cn + names[spec.n_fe:], cell_shifts(cspec, sums)


def _cell_effects(spec: DesignSpec, idx: np.ndarray, shifts: np.ndarray | None) -> np.ndarray:
    """(cells, m): each cell's mean effect as a linear map of the coefficients, its dummy plus (with
    covariates) its demeaned-covariate slopes times the cell's mean demeaned covariates."""
    L = np.zeros((idx.size, spec.m))
    L[np.arange(idx.size), idx] = 1.0
    if shifts is not None:
        p = shifts.shape[1]
        for c in range(idx.size):
            L[c, spec.n_fe + c * p + np.arange(p)] = shifts[c]
    return L


def _design(panel: Panel, control: str) -> tuple[DesignSpec, list[str], list[tuple[int, int]], int]:
    T = panel.n_periods
    cohorts = treated_cohorts(panel)
    cohorts = [g for g in cohorts if g > 0]
    has_never = any(not np.isfinite(g) or g > T - 1 for g in panel.cohort_sizes)
    if not cohorts:
        raise SpecError(f"column {panel.spec.group_source!r}: no cohort is first treated inside the panel")
    t_end = T
    if control == "never_treated":
        if not has_never:
            raise SpecError("control_group='never_treated' needs never-treated units")
        cells = [(g, t) for g in cohorts for t in range(T) if t != g - 1]
    else:
        if not has_never:
            t_end = cohorts[-1]  # the last cohort is a control only; later periods have no control
            cohorts = cohorts[:-1]
            if not cohorts:
                raise SpecError("control_group='not_yet_treated' without never-treated units needs two cohorts")
        cells = [(g, t) for g in cohorts for t in range(g, t_end)]
    code = {c: j for j, c in enumerate(cells)}
    groups = [float(g) for g in panel.cohort_sizes if np.isfinite(g)]
    codes = np.full((len(groups) + 1, T), NONE, dtype=np.int64)
    for r, g in enumerate(groups):
        for t in range(T):
            codes[r, t] = code.get((int(g), t), NONE) if float(g).is_integer() else NONE
        if g <= 0:
            codes[r] = DROP  # always treated: no untreated period (R did's rule)
    codes[:, t_end:] = DROP
    spec = DesignSpec(rows=tuple((g, r) for r, g in enumerate(groups)), default_row=len(groups), t0=0, t1=T,
                      codes=codes, n_int=len(cells))
    names = [f"{panel.spec.time}={plain(panel.periods.labels[t])}" for t in range(1, T)]
    names += [f"cohort={plain(panel.group_label(g))}:{panel.spec.time}={plain(panel.periods.labels[t])}"
              for g, t in cells]
    return spec, names, cells, t_end


def for_comparison(panel: Panel, window: tuple[int, int]) -> RegressionResult:
    """In :func:`dte_dask.compare_estimators`: not-yet-treated controls, the event-time aggregation
    (post-treatment event times)."""
    return etwfe(panel, allow_unbalanced_panel=not panel.is_balanced)


register(EstimatorEntry(
    name="etwfe", function=etwfe, options=EtwfeOptions, label="ETWFE", title="Wooldridge (2021) extended TWFE",
    covariates=True, bootstrap=False, compare=for_comparison, aggregations=("simple", "dynamic", "group", "calendar"),
    cost="cells"))
