"""TWFE event study with relative-time dummies and binned endpoints: ``event_study``.

Also home of the helpers the regression estimators share (panel resolution, window checks,
result assembly with CRV1 and bootstrap inference).
"""
from __future__ import annotations

import time as _time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dte_dask.core.labels import plain
from dte_dask.core.within import DROP, NONE, DesignSpec
from dte_dask.estimators.cs import as_panel
from dte_dask.estimators.options import EventStudyOptions, InferenceOptions, parse_options
from dte_dask.registry import EstimatorEntry, register
from dte_dask.exceptions import DteDaskWarning, SpecError
from dte_dask.graph.regress import OlsFit, Part, fit_ols
from dte_dask.inference.bands import band_crit, boot_se
from dte_dask.inference.bootstrap import check_bootstrap_cost
from dte_dask.panel.panel import Panel
from dte_dask.results.regression import RegressionResult


def event_study(
    data: Any,
    *,
    outcome: str | None = None,
    unit: str | None = None,
    time: str | None = None,
    group: str | None = None,
    window: tuple[int, int] | None = None,
    ref: int = -1,
    bin_endpoints: bool = True,
    covariates: Sequence[str] | str | None = None,
    weights: str | None = None,
    cluster: str | None = None,
    allow_unbalanced_panel: bool | None = None,
    bootstrap: bool = False,
    n_boot: int = 999,
    seed: int | None = None,
    alpha: float = 0.05,
    npartitions: int | None = None,
) -> RegressionResult:
    """Two-way fixed-effects event study with relative-time dummies.

    .. math:: y_{it} = \\alpha_i + \\lambda_t + \\sum_{k \\ne ref} \\gamma_k D^k_{it}
              + x_{it}'\\beta + \\varepsilon_{it},\\qquad D^k_{it} = 1\\{t - G_i = k\\}

    fitted by weighted least squares with the unit effects absorbed (within-unit demeaning, exact
    on unbalanced panels) and time effects as explicit dummies. Never-treated units (and units first
    treated after the last period) carry no event-time dummy.

    Parameters
    ----------
    data : Panel, or anything :func:`dte_dask.load_panel` accepts
    outcome, unit, time, group : column names (not needed for a Panel)
    window : (K, L), optional
        Event times in the time column's units (period index x step). None: every observed event
        time gets its own dummy. A window reaching beyond the event times the panel has is clipped
        to them (with a warning); a clipped side bins nothing and is not marked as binned.
    ref : int
        The omitted event time (default -1, in the time column's units).
    bin_endpoints : bool
        With ``window``: pool event times <= K into K and >= L into L (True) or drop the
        observations of treated units outside the window (False).
    covariates : column names, optional
        Time-varying covariates entering as regressors (time-invariant ones are absorbed by the unit
        effects and reported as collinear). For a Panel they must be among its covariates.
    weights, cluster : column names, optional
        Sampling weights (constant within unit) and a cluster column holding whole units; clustering
        is by unit otherwise. A Panel loaded with a cluster column is clustered by it.
    allow_unbalanced_panel : bool, optional
        Every observed row is kept by default (None or True), as pyfixest and any two-way fixed
        effects regression: the within transform is exact on unbalanced panels. False balances the
        panel first (drops units not observed in every period), as R ``did``.
    bootstrap, n_boot, seed : multiplier bootstrap (Rademacher, one multiplier per cluster, keyed by
        RNG block) of the per-cluster scores, giving bootstrap SEs and a sup-t uniform band.
    alpha : float
        Level of the t intervals (``G - 1`` degrees of freedom, as pyfixest) and of the band.

    Returns
    -------
    RegressionResult

    Notes
    -----
    Standard errors are CRV1 with pyfixest's default small-sample factor (see
    :func:`dte_dask.core.normal_equations.crv1`):

    .. math:: V = \\frac{N-1}{N-k}\\frac{G}{G-1} A^{-1} \\Big(\\sum_g s_g s_g'\\Big) A^{-1},
              \\qquad k = k_\\beta + T_{obs},

    where the unit effects, nested in the clusters, add one and the T_obs observed time levels add
    T_obs - 1 (fixest's ``fixef.K = "nested"``). As pyfixest's default ``fixef_rm="singleton"``,
    units observed once are dropped and not counted in N or G.
    """
    t0 = _time.perf_counter()
    opt = parse_options(EventStudyOptions, window=window, ref=ref, bin_endpoints=bin_endpoints)
    window, ref, bin_endpoints = opt.window, opt.ref, opt.bin_endpoints
    bootstrap, n_boot, seed, alpha = check_inference(bootstrap, n_boot, seed, alpha)
    panel, cov_idx = resolve_panel(data, outcome=outcome, unit=unit, time=time, group=group,
                                   covariates=covariates, weights=weights, cluster=cluster,
                                   allow_unbalanced_panel=allow_unbalanced_panel, npartitions=npartitions)
    step = period_step(panel)
    K, L = (None, None) if window is None else (to_periods(v, step, "window") for v in window)
    ref_p = to_periods(ref, step, "ref")
    if window is not None:
        _check_ref_in_window(K, L, ref_p, ref, window, bin_endpoints)
    T = panel.n_periods
    cohorts = treated_cohorts(panel)
    events = sorted({t - g for g in cohorts for t in range(T)})
    if ref_p not in events:
        raise SpecError(f"ref={ref} is not an event time of any treated cohort (event times "
                        f"{[e * step for e in events][:3]}...{[e * step for e in events][-3:]})")
    bins = (True, True)
    if window is not None:
        Kc, Lc = clip_window(panel, window)
        bins = (Kc == K, Lc == L)  # a clipped side pools nothing beyond the panel's event times
        K, L = Kc, Lc
    layout = _es_layout(events, K, L, ref_p, bin_endpoints)
    spec, names = _es_design(panel, cohorts, layout, cov_idx, bin_endpoints, bins)
    cov_names = [panel.spec.covariates[j] for j in cov_idx]
    nuisance = np.arange(spec.m) < spec.n_fe
    if bootstrap:
        check_bootstrap_cost(n_boot, n_entities=panel.n_entities, width=spec.m, kind="rademacher",
                             block_size=panel.rng_block_size)
    seed = draw_seed(seed, bootstrap)
    fit = fit_ols(panel, [Part(spec, np.arange(spec.m), "event-study-stats")], names, nuisance,
                  scores_name="event-study-scores", n_boot=n_boot if bootstrap else 0, seed=seed)
    idx = spec.n_fe + spec.p + np.arange(spec.n_int)
    keep = fit.pooled.kept[idx]
    binned = np.array([bin_endpoints and window is not None and ((e == K and bins[0]) or (e == L and bins[1]))
                       for e in layout.events])
    other = _coef_frame(fit, np.arange(spec.n_fe, spec.n_fe + spec.p), cov_names)
    options = dict(estimator="event_study", outcome=panel.spec.outcome, unit=panel.spec.unit, time=panel.spec.time,
                   group=panel.spec.group_source, window=window, ref=ref, bin_endpoints=bin_endpoints,
                   covariates=cov_names, weights=panel.spec.weights, cluster=panel.spec.cluster,
                   n_boot=n_boot if bootstrap else 0, seed=seed if bootstrap else None)
    return make_result("event_study", panel, fit, np.eye(len(idx))[keep], idx,
                       np.array(layout.events)[keep] * step, binned[keep], ref, alpha, options, t0, other=other)


# ----------------------------------------------------------------------------- design
@dataclass(frozen=True)
class _EsLayout:
    events: list[int]  # event time (periods) of each interest column
    lo: int | None
    hi: int | None
    ref: int
    drop_outside: bool

    def code(self, e: int) -> int:
        if self.lo is not None:
            if self.drop_outside and not self.lo <= e <= self.hi:
                return DROP
            e = min(max(e, self.lo), self.hi)
        if e == self.ref:
            return NONE
        return self.events.index(e)


def _es_layout(events: list[int], K: int | None, L: int | None, ref: int, bin_endpoints: bool) -> _EsLayout:
    if K is None:
        cols = [e for e in events if e != ref]
    else:
        cols = [e for e in range(K, L + 1) if e != ref and (bin_endpoints or e in events)]
    return _EsLayout(cols, K, L, ref, K is not None and not bin_endpoints)


def _es_design(panel: Panel, cohorts: list[int], layout: _EsLayout, cov_idx: list[int],
               bin_endpoints: bool, bins: tuple[bool, bool] = (True, True)) -> tuple[DesignSpec, list[str]]:
    """One row of codes per treated cohort (event time t - g of each period), a last row without
    dummies for never-treated units; columns [time effects | covariates | event times]."""
    T, step = panel.n_periods, period_step(panel)
    codes = np.full((len(cohorts) + 1, T), NONE, dtype=np.int64)
    for r, g in enumerate(cohorts):
        codes[r] = [layout.code(t - g) for t in range(T)]
    spec = DesignSpec(rows=tuple((float(g), r) for r, g in enumerate(cohorts)), default_row=len(cohorts),
                      t0=0, t1=T, codes=codes, n_int=len(layout.events), cov_idx=tuple(cov_idx))
    names = [f"{panel.spec.time}={plain(panel.periods.labels[t])}" for t in range(1, T)]
    names += [panel.spec.covariates[j] for j in cov_idx]
    names += [_event_name(e, layout.lo, layout.hi, bin_endpoints, step, bins) for e in layout.events]
    return spec, names


def _event_name(e: int, K: int | None, L: int | None, binned: bool, step: int,
                bins: tuple[bool, bool] = (True, True)) -> str:
    if binned and bins[0] and K is not None and e == K:
        return f"event_time<={e * step}"
    if binned and bins[1] and L is not None and e == L:
        return f"event_time>={e * step}"
    return f"event_time={e * step}"


# ----------------------------------------------------------------------------- shared helpers
def resolve_panel(data: Any, *, outcome, unit, time, group, covariates, weights, cluster,
                  allow_unbalanced_panel, npartitions) -> tuple[Panel, list[int]]:
    """The Panel to fit and the indices of the requested covariates in its spec."""
    cov = [covariates] if isinstance(covariates, str) else list(covariates or [])
    is_panel = isinstance(data, Panel)
    keep_unbalanced = allow_unbalanced_panel is not False  # every observed row by default, as pyfixest
    panel = as_panel(data, outcome=outcome, unit=unit, time=time, group=group, treatment=None,
                      covariates=None if is_panel else cov, weights=weights, cluster=cluster,
                      npartitions=npartitions, allow_unbalanced_panel=keep_unbalanced)
    missing = [c for c in cov if c not in panel.spec.covariates]
    if missing:
        raise SpecError(f"covariates {missing} are not covariates of the panel (it has {list(panel.spec.covariates)}); "
                        "load the panel with them")
    return panel, [panel.spec.covariates.index(c) for c in cov]


def period_step(panel: Panel) -> int:
    return panel.periods.event_step


def to_periods(value: Any, step: int, name: str) -> int:
    """An event time in the time column's units as a number of periods."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise SpecError(f"{name} must hold integers (event times in the time column's units), got {value!r}")
    if int(value) % step:
        raise SpecError(f"{name}: event time {value} is not a multiple of the period step {step} of the time column")
    return int(value) // step


def check_window(window: Any, name: str = "window") -> None:
    """A pair (K, L) of integer event times with K < L (see :class:`EventStudyOptions`)."""
    if window is not None:
        parse_options(EventStudyOptions, window=window)


def event_range(panel: Panel) -> tuple[int, int]:
    """The smallest and largest event time t - g (in periods) of the cohorts treated in the panel."""
    cohorts = treated_cohorts(panel)
    if not cohorts:
        raise SpecError(f"column {panel.spec.group_source!r}: no cohort is treated inside the panel's periods")
    return -max(cohorts), panel.n_periods - 1 - min(cohorts)


def clip_window(panel: Panel, window: Any, name: str = "window") -> tuple[int, int]:
    """``window`` (time column's units) as periods, clipped to the event times the panel has.

    Everything sized by a window (design columns, layouts) is then bounded by the panel's number
    of periods. Warns when the window is clipped; raises :class:`SpecError` naming ``name`` when it
    does not overlap the panel's event times at all.
    """
    step = period_step(panel)
    K, L = (to_periods(v, step, name) for v in window)
    lo, hi = event_range(panel)
    Kc, Lc = max(K, lo), min(L, hi)
    if Kc > Lc:
        raise SpecError(f"{name}={tuple(window)} does not overlap the event times of the panel "
                        f"({lo * step} .. {hi * step} in the time column's units)")
    if (Kc, Lc) != (K, L):
        warnings.warn(f"{name}={tuple(window)} reaches beyond the event times of the panel; clipped to "
                      f"({Kc * step}, {Lc * step})", DteDaskWarning, stacklevel=3)
    return Kc, Lc


def _check_ref_in_window(K: int, L: int, ref_p: int, ref: int, window, binned: bool) -> None:
    if binned and not K < ref_p < L:
        raise SpecError(f"ref={ref} must lie strictly inside window={tuple(window)} when bin_endpoints=True "
                        "(an endpoint pools every event time beyond it and cannot be the reference)")
    if not binned and not K <= ref_p <= L:
        raise SpecError(f"ref={ref} must lie inside window={tuple(window)}")


def check_inference(bootstrap: Any, n_boot: Any, seed: Any, alpha: Any) -> tuple[bool, int, int | None, float]:
    """The shared inference options, validated by :class:`InferenceOptions` (Rademacher multipliers)."""
    inf = parse_options(InferenceOptions, bootstrap=bootstrap, n_boot=n_boot, seed=seed, alpha=alpha)
    if inf.bootstrap:
        check_bootstrap_cost(inf.n_boot, n_entities=None, width=None, kind="rademacher")  # a lower bound, before loading
    return inf.bootstrap, inf.n_boot, inf.seed, inf.alpha


def draw_seed(seed: int | None, bootstrap: bool) -> int:
    if not bootstrap:
        return 0
    return int(np.random.SeedSequence().entropy) if seed is None else int(seed)


def treated_cohorts(panel: Panel) -> list[int]:
    """Cohorts first treated inside the panel's periods (later ones count as never treated)."""
    return [int(g) for g in panel.cohort_sizes if np.isfinite(g) and g <= panel.n_periods - 1]


def make_result(estimator: str, panel: Panel, fit: OlsFit, W: np.ndarray, idx: np.ndarray,
                event_time: np.ndarray, binned: np.ndarray, ref: int, alpha: float,
                options: dict, t0: float, *, other: pd.DataFrame | None = None,
                cohorts: pd.DataFrame | None = None, aggregations: dict | None = None) -> RegressionResult:
    """Result for the linear combinations ``W @ beta[idx]`` of the pooled coefficients."""
    p = fit.pooled
    coef = W @ p.beta[idx]
    cov = W @ p.cov[np.ix_(idx, idx)] @ W.T
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    se_b = crit = draws = None
    if fit.draws is not None:
        draws = fit.coef_draws(idx) @ W.T
        se_b = boot_se(draws, np.sqrt(p.n_clusters))
        crit = band_crit(draws, se_b, alpha, True, fallback=True)
    n_t, n_c = panel.event_time_counts(np.asarray(event_time, dtype=np.int64) // period_step(panel))
    return RegressionResult(
        n_treated=n_t, n_control=n_c,
        estimator=estimator, event_time=np.asarray(event_time, dtype=np.int64), coef=coef, se=se, cov=cov,
        binned=np.asarray(binned, dtype=bool), alpha=alpha, df_t=p.n_clusters - 1, n_obs=p.n_obs,
        n_units=p.n_units, n_clusters=p.n_clusters, ref=int(ref), ssc=p.ssc, se_boot=se_b, band_crit=crit,
        draws=draws, other=other, cohorts=cohorts, options=options, aggregations=dict(aggregations or {}),
        timings={"total": _time.perf_counter() - t0}, panel=panel.describe())


def _coef_frame(fit: OlsFit, idx: np.ndarray, names: list[str]) -> pd.DataFrame | None:
    if not len(idx):
        return None
    p = fit.pooled
    return pd.DataFrame({"covariate": names, "coef": p.beta[idx], "se": np.sqrt(np.diag(p.cov)[idx])})


def _compare(panel: Panel, window: tuple[int, int]) -> RegressionResult:
    return event_study(panel, window=window, bin_endpoints=True)


register(EstimatorEntry(
    name="event_study", function=event_study, options=EventStudyOptions, label="TWFE event study",
    title="TWFE event study (unit and time effects)", covariates=True, compare=_compare, cost="events",
    clip_window=True))
