"""Borusyak, Jaravel & Spiess (2024) imputation estimator: ``imputation_did``."""
from __future__ import annotations

import time as _time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from dte_dask.core.imputation import ImputationSpec, imputation_meat, imputation_stats
from dte_dask.core.labels import plain
from dte_dask.core.normal_equations import solve_dropping_collinear
from dte_dask.core.within import DROP, NONE, DesignSpec, gram_stats
from dte_dask.estimators.event_study import (
    period_step,
    resolve_panel,
    to_periods,
)
from dte_dask.estimators.options import ImputationOptions, parse_options
from dte_dask.exceptions import DteDaskWarning, EstimationError, SpecError
from dte_dask.graph.reduce import compute
from dte_dask.graph.regress import Part, exact_sum, fit_ols
from dte_dask.panel.panel import Panel
from dte_dask.registry import EstimatorEntry, register
from dte_dask.regression_results import RegressionResult


def imputation_did(
    data: Any,
    *,
    outcome: str | None = None,
    unit: str | None = None,
    time: str | None = None,
    group: str | None = None,
    covariates: Sequence[str] | str | None = None,
    weights: str | None = None,
    cluster: str | None = None,
    horizons: Sequence[int] | None = None,
    pretrends: int = 0,
    aux_partition: str = "cohort_horizon",
    leave_out: bool = False,
    estimand_weights: str | None = None,
    allow_unbalanced_panel: bool | None = None,
    alpha: float = 0.05,
    npartitions: int | None = None,
) -> RegressionResult:
    """Imputation estimator of Borusyak, Jaravel & Spiess (2024).

    1. Fit :math:`y_{it} = \\alpha_i + \\lambda_t + x_{it}'\\delta + \\varepsilon_{it}` by (weighted)
       least squares on the untreated observations :math:`\\Omega_0` (never treated, and treated
       units before their first treated period);
    2. impute :math:`\\hat y_{it}(0) = \\hat\\alpha_i + \\hat\\lambda_t + x_{it}'\\hat\\delta` on the
       treated observations :math:`\\Omega_1` and :math:`\\hat\\tau_{it} = y_{it} - \\hat y_{it}(0)`;
    3. average: horizon h effects :math:`\\hat\\tau_h` (treated observations with t - g = h,
       sampling-weighted) and the overall ATT (all treated observations).

    Parameters
    ----------
    data, outcome, unit, time, group, covariates, weights, cluster, allow_unbalanced_panel,
    npartitions : see :func:`dte_dask.event_study` (covariates must vary over time)
    horizons : event times (time column's units) to report; None: every horizon observed
    pretrends : int
        BJS Test 1: regress the outcome on unit and time effects (and covariates) and on dummies
        for the last ``pretrends`` periods before treatment, on the untreated observations only;
        the dummies are reported at negative event times with CRV1 SEs (pyfixest's small-sample
        factor) and ``pretrend_test()`` is their joint Wald test.
    aux_partition : "cohort_horizon" | "cohort" | "horizon"
        Cells of the auxiliary averages :math:`\\tilde\\tau` of the variance (Stata
        ``did_imputation``'s ``avgeffectsby``; default cohort x horizon).
    leave_out : bool
        Leave each unit out of its own auxiliary averages (``did_imputation``'s ``leaveout``).
    estimand_weights : column name, optional
        Weights on the treated observations defining one more estimand
        :math:`\\sum w_{it}\\hat\\tau_{it} / \\sum w_{it}` (``did_imputation``'s ``wtr``; sampling
        weights multiply them; untreated rows are ignored). Reported in ``other`` as ``weighted``.
        For a Panel it must be one of its covariates (it is not a regressor).

    Returns
    -------
    RegressionResult
        Horizon effects (``event_time`` >= 0) with the Theorem 3 covariance, Test 1 coefficients
        at negative event times, and the overall ATT in ``other`` (columns ``term``, ``coef``, ``se``).

    Notes
    -----
    The estimator is linear, :math:`\\hat\\tau_w = \\sum_{it} v_{it} y_{it}`, with
    :math:`v_{it} = w_{it}` on :math:`\\Omega_1` and the imputation weights
    :math:`v_{it} = -s_{it} a_{it}'(A_0'SA_0)^{-1}A_1'w` on :math:`\\Omega_0`. The conservative
    variance (Theorem 3) is :math:`\\sum_c \\big(\\sum_{it \\in c} v_{it}\\tilde\\varepsilon_{it}\\big)^2`
    over clusters c (units by default), with the step-1 residuals on :math:`\\Omega_0` and
    :math:`\\hat\\tau_{it} - \\tilde\\tau_{g(it)}` on :math:`\\Omega_1`, where
    :math:`\\tilde\\tau_g = \\sum_i a_{ig}b_{ig} / \\sum_i a_{ig}^2`, :math:`a_{ig} = \\sum_{t\\in g} v_{it}`,
    :math:`b_{ig} = \\sum_{t\\in g} v_{it}\\hat\\tau_{it}` (BJS eq. 8; at the cohort x horizon cells a
    unit has one observation per cell and this is the :math:`v^2`-weighted mean). No small-sample
    factor is applied (as ``did_imputation``). With unit effects absorbed (Frisch–Waugh–Lovell),
    :math:`v_{it} = -(\\omega_i / n^0_i + s_i \\tilde x_{it}'z)` with :math:`\\omega_i` the unit's
    total weight in the target, :math:`\\tilde x_{it}` the time dummies and covariates minus the
    unit's untreated means and :math:`z` the solution of the within normal equations for
    :math:`\\sum_{\\Omega_1} w_{it}\\tilde x_{it}`: the driver receives (K x m) arrays only.

    Units never observed untreated are dropped with a warning (as ``did_imputation``); treated
    observations in a period without untreated observations cannot be imputed and are dropped with
    a warning.
    """
    t0 = _time.perf_counter()
    opt = parse_options(ImputationOptions, horizons=horizons, pretrends=pretrends, aux_partition=aux_partition,
                        leave_out=leave_out)
    cov = [covariates] if isinstance(covariates, str) else list(covariates or [])
    extra = [estimand_weights] if estimand_weights and estimand_weights not in cov else []
    panel, idx_all = resolve_panel(data, outcome=outcome, unit=unit, time=time, group=group,
                                   covariates=cov + extra, weights=weights, cluster=cluster,
                                   allow_unbalanced_panel=allow_unbalanced_panel, npartitions=npartitions)
    user = panel.spec.covariates.index(estimand_weights) if estimand_weights else -1
    cov_idx = [panel.spec.covariates.index(c) for c in cov]
    options = dict(estimator="imputation_did", outcome=panel.spec.outcome, unit=panel.spec.unit, time=panel.spec.time,
                   group=panel.spec.group_source, covariates=[panel.spec.covariates[j] for j in cov_idx],
                   weights=panel.spec.weights, cluster=panel.spec.cluster, horizons=opt.horizons,
                   pretrends=opt.pretrends, aux_partition=opt.aux_partition, leave_out=opt.leave_out,
                   estimand_weights=estimand_weights)
    return fit_imputation(panel, cov_idx, horizons=opt.horizons, pretrends=opt.pretrends,
                          aux_partition=opt.aux_partition, leave_out=opt.leave_out, alpha=alpha, options=options,
                          t0=t0, user=user)


def fit_imputation(panel: Panel, cov_idx: list[int], *, horizons, pretrends: int, aux_partition: str,
                   leave_out: bool, alpha: float, options: dict, t0: float, two_stage: bool = False,
                   name: str = "imputation_did", user: int = -1, leads: int = 0) -> RegressionResult:
    """The shared passes of ``imputation_did`` and ``two_stage_did`` (``two_stage``: the treated
    residuals are centred at the target's estimate, Gardner's second-stage residuals; ``leads``:
    second-stage dummies for event times -2, ..., -(leads + 1), reference -1)."""
    step = period_step(panel)
    T = panel.n_periods

    # step 1: time effects and slopes on the untreated observations
    spec1, names1 = _untreated_design(panel, cov_idx, 0)
    st = compute(exact_sum(panel, gram_stats, spec1, name="imputation-step1"))[0]
    nuis = np.arange(spec1.m) < spec1.n_fe
    present = st["col_n"] > 0
    present[spec1.n_fe:] = True
    sol = solve_dropping_collinear(st["A"], st["b"], st["raw"], names1, nuis, present,
                        "the unit and time effects on the untreated observations")
    bad = np.zeros(T, dtype=bool)
    bad[1:] = ~sol.kept[:spec1.n_fe]
    cohorts = tuple(float(g) for g in panel.cohort_sizes if np.isfinite(g) and 0 < g <= T - 1)
    if not cohorts:
        raise SpecError(f"column {panel.spec.group_source!r}: no cohort is first treated inside the panel")

    # pass 2: imputed effects by horizon, projection right-hand sides, auxiliary sums
    H = T
    lead_e = tuple(range(-2, -min(leads, T - 2) - 2, -1))  # target columns H, H + 1, ...
    HL = H + len(lead_e)
    all_targets = np.vstack([np.eye(HL), np.ones((1 if user < 0 else 2, HL))])
    all_targets[HL:, H:] = 0.0  # the overall ATT and the user estimand average post-treatment effects only
    user_rows = () if user < 0 else (HL + 1,)
    ispec = ImputationSpec(spec1.n_fe, tuple(cov_idx), bad, cohorts, aux_partition, all_targets, user, user_rows,
                           lead_e)
    s2 = compute(exact_sum(panel, imputation_stats, ispec, sol.beta, name="imputation-effects"))[0]
    _warn_dropped(panel, s2, bad, name)
    observed = np.flatnonzero(s2["N"][:H] > 0)
    lead_rows = [H + j for j in range(len(lead_e))[::-1] if s2["N"][H + j] > 0]  # event time ascending
    if not observed.size:
        raise EstimationError("no treated observation could be imputed")
    if horizons is None:
        hs = [int(h) for h in observed]
    else:
        hs = [to_periods(h, step, "horizons") for h in horizons]
        missing = [h * step for h in hs if h < 0 or h >= H or s2["N"][h] <= 0]
        if missing:
            raise SpecError(f"horizons {missing} have no imputed treated observation (observed: "
                            f"{[int(h) * step for h in observed]})")
    # leads, selected horizons, the overall ATT, the user estimand
    rows = lead_rows + hs + [HL] + ([HL + 1] if user >= 0 else [])
    targets = all_targets[rows]
    Nk, Tk, Rk = targets @ s2["N"], targets @ s2["T"], targets @ s2["R"]
    if user >= 0:
        if not s2["Nu"] > 0:
            raise SpecError("estimand_weights: the weights of the imputed treated observations sum to zero")
        Nk[-1], Tk[-1], Rk[-1] = s2["Nu"], s2["Tu"], s2["Ru"]
    est = Tk / Nk
    Rk = Rk / Nk[:, None]
    Z = (sol.inv @ Rk.T).T
    ispec_k = ImputationSpec(spec1.n_fe, tuple(cov_idx), bad, cohorts, aux_partition, targets, user,
                             () if user < 0 else (len(rows) - 1,), lead_e)

    # pass 3: per-unit terms of the conservative variance, summed over clusters
    mt = compute(exact_sum(panel, imputation_meat, ispec_k, sol.beta, Z, Nk, s2["num"][rows], s2["den"][rows],
                                leave_out, est if two_stage else None, name="imputation-scores"))[0]
    V = (mt["meat"] + mt["meat"].T) / 2.0
    G = int(mt["G"])

    nh = len(lead_rows) + len(hs)
    coef, cov = est[:nh], V[:nh, :nh]
    event_time = np.array([lead_e[r - H] for r in lead_rows] + hs, dtype=np.int64) * step
    if pretrends:
        pc, pv, pe = _pretrend_fit(panel, cov_idx, pretrends)
        coef = np.r_[pc, coef]
        cov = np.block([[pv, np.zeros((len(pc), len(hs)))], [np.zeros((len(hs), len(pc))), cov]])
        event_time = np.r_[pe * step, event_time]
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    terms = ["ATT"] + (["weighted"] if user >= 0 else [])
    other = pd.DataFrame({"term": terms, "coef": est[nh:],
                          "se": np.sqrt(np.clip(np.diag(V)[nh:], 0.0, None))})
    n_t, n_c = panel.event_time_counts(np.asarray(event_time, dtype=np.int64) // step)
    return RegressionResult(
        n_treated=n_t, n_control=n_c,
        estimator=name, event_time=event_time, coef=coef, se=se, cov=cov,
        binned=np.zeros(len(coef), dtype=bool), alpha=alpha, df_t=max(G - 1, 1),
        n_obs=int(s2["n_obs0"] + s2["n_obs1"]), n_units=int(s2["n_units"]), n_clusters=G,
        ref=-(pretrends + 1) * step, ssc=1.0, other=other, options=options,
        timings={"total": _time.perf_counter() - t0}, panel=panel.describe())


def _untreated_design(panel: Panel, cov_idx: list[int], pretrends: int) -> tuple[DesignSpec, list[str]]:
    """Step 1 (and Test 1 with ``pretrends`` > 0): treated observations dropped; dummies for the
    last ``pretrends`` untreated periods of treated units (column j: event time -(pretrends - j))."""
    T = panel.n_periods
    groups = [float(g) for g in panel.cohort_sizes if np.isfinite(g)]
    codes = np.full((len(groups) + 1, T), NONE, dtype=np.int64)
    for r, g in enumerate(groups):
        for t in range(T):
            e = t - g
            if e >= 0:
                codes[r, t] = DROP
            elif pretrends and g <= T - 1 and e >= -pretrends:
                codes[r, t] = int(e + pretrends)
    spec = DesignSpec(rows=tuple((g, r) for r, g in enumerate(groups)), default_row=len(groups), t0=0, t1=T,
                      codes=codes, n_int=pretrends, cov_idx=tuple(cov_idx))
    step = period_step(panel)
    names = [f"{panel.spec.time}={plain(panel.periods.labels[t])}" for t in range(1, T)]
    names += [panel.spec.covariates[j] for j in cov_idx]
    names += [f"pre{(pretrends - j) * step}" for j in range(pretrends)]
    return spec, names


def _pretrend_fit(panel: Panel, cov_idx: list[int], pretrends: int):
    spec, names = _untreated_design(panel, cov_idx, pretrends)
    fit = fit_ols(panel, [Part(spec, np.arange(spec.m), "imputation-test1-stats")], names,
                  np.arange(spec.m) < spec.n_fe, scores_name="imputation-test1-scores",
                  what="the unit and time effects on the untreated observations")
    idx = spec.n_fe + spec.p + np.arange(pretrends)
    keep = fit.pooled.kept[idx]
    idx = idx[keep]
    events = (np.arange(pretrends) - pretrends)[keep]
    return fit.pooled.beta[idx], fit.pooled.cov[np.ix_(idx, idx)], events


def _warn_dropped(panel: Panel, s2: dict, bad: np.ndarray, name: str) -> None:
    n_drop = int(s2["n_no_untreated"])
    if n_drop:
        warnings.warn(f"{name}: dropped {n_drop} units that are never observed untreated (treated in "
                      "every period they are observed); their effects cannot be imputed (as did_imputation)",
                      DteDaskWarning, stacklevel=4)
    if bad.any():
        labels = [plain(panel.periods.labels[t]) for t in np.flatnonzero(bad)]
        warnings.warn(f"{name}: periods {labels} have no untreated observations identifying their time "
                      "effect; treated observations there are not imputed", DteDaskWarning, stacklevel=4)


def for_comparison(panel: Panel, window: tuple[int, int]) -> RegressionResult:
    """In :func:`dte_dask.compare_estimators`: the post-treatment effects (Test 1's pre-period
    coefficients have another reference period and are left out)."""
    return imputation_did(panel, allow_unbalanced_panel=not panel.is_balanced)


register(EstimatorEntry(
    name="imputation_did", function=imputation_did, options=ImputationOptions, label="Imputation (BJS)",
    title="Borusyak, Jaravel & Spiess (2024) imputation estimator", covariates=True, bootstrap=False, compare=for_comparison))
