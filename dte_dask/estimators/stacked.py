"""Stacked DiD with clean controls and corrective weights (Wing, Freedman & Hollingsworth 2024).

One sub-experiment per adoption cohort ``a`` whose whole event window ``[a+K, a+L]`` lies inside the
panel: treated = cohort ``a``, clean controls = units not treated inside the window. The stacked
regression has unit x stack and time x stack effects and one dummy per event time for the treated;
the controls carry the corrective weights Q. Each sub-experiment's statistics are their own tasks
(``stacked_cohort_<a>``: one dashboard progress bar per cohort; underscores because dask's
``key_split`` cuts a task prefix at the first word that is not alphabetic).
"""
from __future__ import annotations

import re
import time as _time
import warnings
from typing import Any

import numpy as np
import pandas as pd

from dte_dask.core.labels import plain
from dte_dask.core.within import NONE, DesignSpec
from dte_dask.estimators.event_study import (
    check_inference,
    clip_window,
    draw_seed,
    make_result,
    period_step,
    resolve_panel,
    treated_cohorts,
)
from dte_dask.estimators.options import (
    StackControl,
    StackedDidOptions,
    StackWeighting,
    control_group_kw,
    parse_options,
)
from dte_dask.exceptions import DteDaskWarning, EstimationError, SpecError
from dte_dask.graph.reduce import compute
from dte_dask.graph.regress import Part, exact_sum, fit_ols
from dte_dask.inference.bootstrap import check_bootstrap_cost
from dte_dask.inference.dist import t_ppf
from dte_dask.panel.panel import Panel
from dte_dask.registry import EstimatorEntry, register
from dte_dask.results.regression import RegressionResult


def stacked_did(
    data: Any,
    *,
    outcome: str | None = None,
    unit: str | None = None,
    time: str | None = None,
    group: str | None = None,
    window: tuple[int, int] = (-3, 3),
    control_group: StackControl = "not_yet_treated",
    weighting: StackWeighting = "aggregate",
    weights: str | None = None,
    cluster: str | None = None,
    allow_unbalanced_panel: bool | None = None,
    bootstrap: bool = False,
    n_boot: int = 999,
    seed: int | None = None,
    alpha: float = 0.05,
    npartitions: int | None = None,
    control: StackControl | None = None,
) -> RegressionResult:
    """Stacked difference-in-differences with corrective weights.

    .. math:: y_{ist} = \\alpha_{is} + \\lambda_{ts} + \\sum_{e \\ne -1} \\gamma_e D_{is} 1\\{t - a_s = e\\}
              + \\varepsilon_{ist}

    by weighted least squares with weights :math:`w_i Q_{s,e}` on the stacked data (unit x stack
    effects absorbed, time x stack effects as dummies), clustered by unit (or ``cluster``) although
    units recur across stacks: a unit's scores are summed over its stacks first.

    Parameters
    ----------
    data, outcome, unit, time, group, weights, cluster, allow_unbalanced_panel : see
        :func:`dte_dask.event_study`
    window : (K, L)
        Event window in the time column's units, with K <= -1 and L >= 0 (one period = the period
        step). The reference is one period before treatment. A window reaching beyond the event
        times of the panel is clipped to them, with a warning.
    control_group : "not_yet_treated" | "strict" | "never_treated"
        Clean controls of sub-experiment a: first treated after a + L (never-treated included);
        after a + L + |K|; never treated (or treated after the last period) only. The old
        spelling ``control=`` is accepted with a DeprecationWarning (and wins when given).
    weighting : "aggregate"
        Target estimand of the corrective weights: the trimmed aggregate ATT. Controls get
        :math:`Q_{a,e} = (N^D_{a,e}/N^D_e) / (N^C_{a,e}/N^C_e)`, with N the *observation* counts of
        treated (D) and control (C) units at event time e in sub-experiment a and over all of them
        (the R reference ``compute_weights`` and diff-diff; equal to unit counts on balanced panels);
        treated observations have Q = 1. Counts are unweighted; sampling weights multiply Q. With
        stack-specific effects the pooled coefficient weights sub-experiment a by
        :math:`W^D_a W^C_a / (W^D_a + W^C_a)`, which Q makes proportional to :math:`N^D_a`: the
        estimand of the trimmed aggregate ATT, and the same point estimates as diff-diff's
        ``D + event_time`` regression. diff-diff's other targets (population, sample share) do not
        carry over to stack-specific effects and are not offered.
    bootstrap, n_boot, seed, alpha : see :func:`dte_dask.event_study`

    Returns
    -------
    RegressionResult
        ``by_cohort()`` holds each sub-experiment's own estimates (its stack alone, same weights).

    Notes
    -----
    Sub-experiments whose window is not fully inside the panel's periods, or that have no clean
    control, are trimmed with a warning. CRV1 small-sample factor as pyfixest's default with
    ``| unit_stack + time_stack`` and ``vcov={"CRV1": unit}``: :math:`k = k_\\gamma + \\#` observed
    time x stack levels; unit x stack singletons are dropped.
    """
    t0 = _time.perf_counter()
    opt = parse_options(StackedDidOptions, window=window, weighting=weighting,
                        **control_group_kw(control_group, control, "stacked_did"),
                        spelled={"control_group": "control"} if control is not None else None)
    window, control, weighting = opt.window, opt.control_group, opt.weighting
    bootstrap, n_boot, seed, alpha = check_inference(bootstrap, n_boot, seed, alpha)
    panel, _ = resolve_panel(data, outcome=outcome, unit=unit, time=time, group=group, covariates=None,
                             weights=weights, cluster=cluster, allow_unbalanced_panel=allow_unbalanced_panel,
                             npartitions=npartitions)
    step = period_step(panel)
    if window[0] > -step or window[1] < 0:
        raise SpecError(f"window={tuple(window)} must contain the reference event time {-step} and event time 0 "
                        f"(K <= {-step} and L >= 0)")
    K, L = clip_window(panel, window)
    stacks = _feasible_stacks(panel, K, L, control, window)
    counts = compute(exact_sum(panel, _stack_counts, [(a, ctrl, a + K, a + L + 1) for a, ctrl in stacks],
                                name="stacked-counts"))[0]
    mult = _q_weights(counts)
    parts, names, nuisance, events = _stacked_design(panel, stacks, K, L, mult, step)
    if bootstrap:
        check_bootstrap_cost(n_boot, n_entities=panel.n_entities, width=len(names), kind="rademacher",
                             block_size=panel.rng_block_size)
    seed = draw_seed(seed, bootstrap)
    fit = fit_ols(panel, parts, names, nuisance, scores_name="stacked-scores", per_part=True,
                  n_boot=n_boot if bootstrap else 0, seed=seed, what="the unit x stack and time x stack effects")
    n_int = len(events)
    idx = len(names) - n_int + np.arange(n_int)
    keep = fit.pooled.kept[idx]
    cohorts = _by_cohort(panel, fit, stacks, counts, events, step, alpha)
    options = dict(estimator="stacked_did", outcome=panel.spec.outcome, unit=panel.spec.unit, time=panel.spec.time,
                   group=panel.spec.group_source, window=tuple(window), control_group=control, weighting=weighting,
                   weights=panel.spec.weights, cluster=panel.spec.cluster, n_boot=n_boot if bootstrap else 0,
                   seed=seed if bootstrap else None, stacks=[plain(panel.group_label(a)) for a, _ in stacks])
    return make_result("stacked_did", panel, fit, np.eye(n_int)[keep], idx, np.array(events)[keep] * step,
                       np.zeros(int(keep.sum()), dtype=bool), -step, alpha, options, t0, cohorts=cohorts)


# ----------------------------------------------------------------------------- sub-experiments
def _clean_controls(panel: Panel, a: int, K: int, L: int, control: str) -> tuple[float, ...]:
    last = panel.n_periods - 1
    out = []
    for g in panel.cohort_sizes:
        never = not np.isfinite(g) or g > last
        if control == "never_treated":
            ok = never
        else:
            ok = g > a + L + (-K if control == "strict" else 0)
        if ok:
            out.append(float(g))
    return tuple(out)


def _feasible_stacks(panel: Panel, K: int, L: int, control: str, window) -> list[tuple[int, tuple[float, ...]]]:
    stacks, outside, no_controls = [], [], []
    for a in treated_cohorts(panel):
        ctrl = _clean_controls(panel, a, K, L, control)
        inside = a + K >= 0 and a + L <= panel.n_periods - 1
        if inside and ctrl:
            stacks.append((a, ctrl))
        else:
            (outside if not inside else no_controls).append(str(plain(panel.group_label(a))))
    trimmed = [f"{', '.join(events)} ({reason})" for events, reason in (
        (outside, f"{'its window is' if len(outside) == 1 else 'their windows are'} not inside the panel's periods "
                  f"{plain(panel.periods.labels[0])}..{plain(panel.periods.labels[-1])}"),
        (no_controls, f"{'it has' if len(no_controls) == 1 else 'they have'} no clean control units")) if events]
    if trimmed:
        warnings.warn(f"stacked_did: trimmed adoption events {'; '.join(trimmed)} for window={tuple(window)}, "
                      f"control_group={control!r}", DteDaskWarning, stacklevel=3)
    if not stacks:
        raise EstimationError(f"stacked_did: no adoption event has its whole window={tuple(window)} inside the "
                              f"panel's periods and clean controls (control_group={control!r}); narrow the window")
    return stacks


def _stack_counts(block, stacks: list[tuple[int, tuple[float, ...], int, int]]) -> dict[str, np.ndarray]:
    """Per stack: observations of treated / control units by event time, and units observed."""
    obs, units = [], []
    for a, ctrl, t0, t1 in stacks:
        seen = ~np.isnan(block.y[:, t0:t1])
        o, u = np.zeros((2, t1 - t0)), np.zeros(2)
        for d, mask in ((0, block.g == a), (1, np.isin(block.g, ctrl))):
            o[d] = seen[mask].sum(axis=0)
            u[d] = np.count_nonzero(seen[mask].any(axis=1))
        obs.append(o)
        units.append(u)
    return {"obs": np.array(obs), "units": np.array(units)}


def _q_weights(counts: dict[str, np.ndarray]) -> np.ndarray:
    """(stacks, 2, window) weight multipliers: 1 for treated, Q per (stack, event time) for controls
    from observation counts; Q = 1 where a count it divides by is zero (diff-diff's guard)."""
    nd, nc = counts["obs"][:, 0], counts["obs"][:, 1]
    mult = np.ones_like(counts["obs"])
    with np.errstate(divide="ignore", invalid="ignore"):
        q = (nd / nd.sum(axis=0)) / (nc / nc.sum(axis=0))
    bad = (nc == 0) | (nd.sum(axis=0) == 0) | (nc.sum(axis=0) == 0)
    mult[:, 1] = np.where(bad, 1.0, q)
    return mult


def _stacked_design(panel: Panel, stacks, K: int, L: int, mult: np.ndarray, step: int):
    Wn = L - K + 1
    events = [e for e in range(K, L + 1) if e != -1]
    code = {e: j for j, e in enumerate(events)}
    n_s, nf = len(stacks), Wn - 1
    names = []
    for a, _ in stacks:
        names += [f"{panel.spec.time}={plain(panel.periods.labels[a + K + j])}@stack={plain(panel.group_label(a))}"
                  for j in range(1, Wn)]
    names += [f"event_time={e * step}" for e in events]
    nuisance = np.arange(len(names)) < n_s * nf
    parts = []
    for s, (a, ctrl) in enumerate(stacks):
        codes = np.full((2, Wn), NONE, dtype=np.int64)
        codes[0] = [code.get(K + j, NONE) for j in range(Wn)]
        spec = DesignSpec(rows=((float(a), 0),) + tuple((g, 1) for g in ctrl), default_row=-1, t0=a + K,
                          t1=a + L + 1, codes=codes, n_int=len(events), mult=mult[s])
        place = np.r_[s * nf + np.arange(nf), n_s * nf + np.arange(len(events))]
        parts.append(Part(spec, place, f"stacked_cohort_{_safe(panel.group_label(a))}"))
    return parts, names, nuisance, events


def _safe(label: Any) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", str(plain(label)))


def _by_cohort(panel: Panel, fit, stacks, counts, events, step, alpha) -> pd.DataFrame:
    rows = []
    nf = len(events)  # a stack's columns: its (window - 1) time effects, then the event-time dummies
    for s, ((a, _), part) in enumerate(zip(stacks, fit.parts)):
        for j, e in enumerate(events):
            coef = se = np.nan
            if part is not None and part.kept[nf + j]:
                coef, se = part.beta[nf + j], float(np.sqrt(part.cov[nf + j, nf + j]))
            c = t_ppf(1 - alpha / 2, part.n_clusters - 1) if part is not None else np.nan
            rows.append({"cohort": plain(panel.group_label(a)), "event_time": e * step, "estimate": coef, "se": se,
                         "ci_lower": coef - c * se, "ci_upper": coef + c * se,
                         "n_treated": int(counts["units"][s, 0]), "n_control": int(counts["units"][s, 1]),
                         "n_obs": part.n_obs if part is not None else 0})
    return pd.DataFrame(rows)


def _compare(panel: Panel, window: tuple[int, int]) -> RegressionResult:
    return stacked_did(panel, window=window)


register(EstimatorEntry(
    name="stacked_did", function=stacked_did, options=StackedDidOptions, label="Stacked DiD",
    title="Stacked DiD (Wing, Freedman & Hollingsworth corrective weights; unit x stack and time x stack effects)",
    compare=_compare, cost="stacks"))
