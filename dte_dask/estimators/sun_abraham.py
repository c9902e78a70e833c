"""Sun & Abraham (2021) interaction-weighted event study: ``sun_abraham``."""
from __future__ import annotations

import time as _time
from typing import Any

import numpy as np
import pandas as pd

from dte_dask.core.labels import plain
from dte_dask.core.within import DROP, NONE, DesignSpec
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
    SaControl,
    SunAbrahamOptions,
    control_group_kw,
    parse_options,
)
from dte_dask.exceptions import EstimationError, SpecError
from dte_dask.graph.regress import Part, fit_ols
from dte_dask.inference.bootstrap import check_bootstrap_cost
from dte_dask.inference.dist import t_ppf
from dte_dask.panel.panel import Panel
from dte_dask.registry import EstimatorEntry, register
from dte_dask.results.regression import RegressionResult


def sun_abraham(
    data: Any,
    *,
    outcome: str | None = None,
    unit: str | None = None,
    time: str | None = None,
    group: str | None = None,
    window: tuple[int, int] | None = None,
    control_group: SaControl = "never_treated",
    weights: str | None = None,
    cluster: str | None = None,
    allow_unbalanced_panel: bool | None = None,
    bootstrap: bool = False,
    n_boot: int = 999,
    seed: int | None = None,
    alpha: float = 0.05,
    npartitions: int | None = None,
    control: SaControl | None = None,
) -> RegressionResult:
    """Interaction-weighted event study of Sun & Abraham (2021).

    Step 1, the saturated regression (unit and time effects, reference event time -1):

    .. math:: y_{it} = \\alpha_i + \\lambda_t + \\sum_{g} \\sum_{e \\ne -1} \\delta_{g,e}
              1\\{G_i = g\\} 1\\{t - g = e\\} + \\varepsilon_{it};

    step 2, :math:`\\beta_e = \\sum_g w_{g,e} \\delta_{g,e}` with
    :math:`w_{g,e} = n_{g,e} / \\sum_{g'} n_{g',e}`, the (sampling-weighted) observations of cohort g
    at event time e in the estimation sample; :math:`V(\\beta) = W V(\\delta) W'` (the shares are
    treated as fixed, as fixest's ``aggregate`` and diff-diff do).

    Parameters
    ----------
    data, outcome, unit, time, group, weights, cluster, allow_unbalanced_panel : see
        :func:`dte_dask.event_study`
    window : (K, L), optional
        Keep the interactions with event times in [K, L] (time column's units); observations of
        treated units outside the window are dropped. None: every event time. A window reaching
        beyond the event times of the panel is clipped to them, with a warning.
    control_group : "never_treated" | "last_treated"
        Control cohort: never-treated units (and units treated after the last period), or in
        addition the last-treated cohort, with the periods from its first treatment on dropped.
        The old spelling ``control=`` is accepted with a DeprecationWarning (and wins when given).
    bootstrap, n_boot, seed, alpha : see :func:`dte_dask.event_study`

    Returns
    -------
    RegressionResult
        ``by_cohort()`` gives delta(g, e), its SE and the share w(g, e).

    Notes
    -----
    With never-treated controls, no covariates and a balanced panel, beta_e equals the
    Callaway–Sant'Anna dynamic aggregation with never-treated controls and the **universal** base
    period g - 1 for every event time (``att_gt(..., base_period="universal").aggregate("dynamic")``):
    delta(g, e) is then the 2x2 DiD of cohort g against the never treated between g - 1 and g + e, and
    both weight cohorts by their size. With the ``varying`` base period only the post-treatment
    (e >= 0) effects coincide; pre-period CS effects are then short differences.
    """
    t0 = _time.perf_counter()
    opt = parse_options(SunAbrahamOptions, window=window, **control_group_kw(control_group, control, "sun_abraham"),
                        spelled={"control_group": "control"} if control is not None else None)
    window, control = opt.window, opt.control_group
    bootstrap, n_boot, seed, alpha = check_inference(bootstrap, n_boot, seed, alpha)
    panel, _ = resolve_panel(data, outcome=outcome, unit=unit, time=time, group=group, covariates=None,
                             weights=weights, cluster=cluster, allow_unbalanced_panel=allow_unbalanced_panel,
                             npartitions=npartitions)
    step = period_step(panel)
    if window is not None and not window[0] <= -step <= window[1]:
        raise SpecError(f"window={tuple(window)} must contain the reference event time {-step}")
    K, L = (None, None) if window is None else clip_window(panel, window)
    cohorts, t1 = _sa_cohorts(panel, control)
    cells = [(g, t - g) for g in cohorts for t in range(t1) if t - g != -1 and (K is None or K <= t - g <= L)]
    spec, names = _sa_design(panel, cohorts, cells, t1, K, L)
    if bootstrap:
        check_bootstrap_cost(n_boot, n_entities=panel.n_entities, width=spec.m, kind="rademacher",
                             block_size=panel.rng_block_size)
    seed = draw_seed(seed, bootstrap)
    fit = fit_ols(panel, [Part(spec, np.arange(spec.m), "sun-abraham-stats")], names,
                  np.arange(spec.m) < spec.n_fe, scores_name="sun-abraham-scores",
                  n_boot=n_boot if bootstrap else 0, seed=seed)
    idx = spec.n_fe + np.arange(len(cells))
    kept = fit.pooled.kept[idx]
    share = fit.stats[0]["int_w"]
    events = sorted({e for (g, e), k in zip(cells, kept) if k})
    W = np.zeros((len(events), len(cells)))
    for j, ((g, e), k) in enumerate(zip(cells, kept)):
        if k:
            W[events.index(e), j] = share[j]
    W /= W.sum(axis=1, keepdims=True)
    by_cohort = _cohort_table(panel, fit, cells, idx, W, events, step, alpha)
    options = dict(estimator="sun_abraham", outcome=panel.spec.outcome, unit=panel.spec.unit, time=panel.spec.time,
                   group=panel.spec.group_source, window=window, control_group=control, weights=panel.spec.weights,
                   cluster=panel.spec.cluster, n_boot=n_boot if bootstrap else 0, seed=seed if bootstrap else None)
    return make_result("sun_abraham", panel, fit, W, idx, np.array(events, dtype=np.int64) * step,
                       np.zeros(len(events), dtype=bool), -step, alpha, options, t0, cohorts=by_cohort)


def _sa_cohorts(panel: Panel, control: str) -> tuple[list[int], int]:
    """Treated cohorts and the end of the periods used."""
    cohorts = treated_cohorts(panel)
    T = panel.n_periods
    if control == "never_treated":
        if not any(not np.isfinite(g) or g > T - 1 for g in panel.cohort_sizes):
            raise SpecError(f"control_group='never_treated': column {panel.spec.group_source!r} has no never-treated "
                            "units; use control_group='last_treated'")
        return cohorts, T
    if len(cohorts) < 2:
        raise SpecError(f"control_group='last_treated' needs at least two cohorts treated inside the panel, "
                        f"column {panel.spec.group_source!r} has {len(cohorts)}")
    return cohorts[:-1], cohorts[-1]


def _sa_design(panel: Panel, cohorts: list[int], cells: list[tuple[int, int]], t1: int,
               K: int | None, L: int | None) -> tuple[DesignSpec, list[str]]:
    code = {c: j for j, c in enumerate(cells)}
    codes = np.full((len(cohorts) + 1, t1), NONE, dtype=np.int64)
    for r, g in enumerate(cohorts):
        for t in range(t1):
            e = t - g
            codes[r, t] = DROP if K is not None and not K <= e <= L else code.get((g, e), NONE)
    spec = DesignSpec(rows=tuple((float(g), r) for r, g in enumerate(cohorts)), default_row=len(cohorts),
                      t0=0, t1=t1, codes=codes, n_int=len(cells))
    step = period_step(panel)
    names = [f"{panel.spec.time}={plain(panel.periods.labels[t])}" for t in range(1, t1)]
    names += [f"cohort={plain(panel.group_label(g))}:event_time={e * step}" for g, e in cells]
    return spec, names


def _cohort_table(panel: Panel, fit, cells, idx, W, events, step, alpha) -> pd.DataFrame:
    p = fit.pooled
    if not p.kept[idx].any():
        raise EstimationError("no cohort x event-time interaction has observations")
    c = t_ppf(1 - alpha / 2, p.n_clusters - 1)
    rows = []
    for j, ((g, e), i) in enumerate(zip(cells, idx)):
        if not p.kept[i]:
            continue
        se = float(np.sqrt(p.cov[i, i]))
        rows.append({"cohort": plain(panel.group_label(g)), "event_time": e * step, "estimate": p.beta[i], "se": se,
                     "ci_lower": p.beta[i] - c * se, "ci_upper": p.beta[i] + c * se,
                     "weight": W[events.index(e), j]})
    return pd.DataFrame(rows)


def _compare(panel: Panel, window: tuple[int, int]) -> RegressionResult:
    return sun_abraham(panel)


register(EstimatorEntry(
    name="sun_abraham", function=sun_abraham, options=SunAbrahamOptions, label="Sun-Abraham",
    title="Sun & Abraham (2021) interaction-weighted event study", compare=_compare, cost="cells",
    clip_window=True))
