"""Immutable results of ``att_gt``: ATT(g,t) cells and their aggregations.

Results hold only small arrays: estimates, the augmented covariance (K' x K') and, with the
bootstrap, the draws (B x K'). Every derived quantity is driver-side algebra on those. Both follow
the result protocol and its ``to_frame()`` schema (:mod:`dte_dask.results.base`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from dte_dask.exceptions import DteDaskWarning, EstimationError, SpecError
from dte_dask.formatting import format_table
from dte_dask.inference.bands import band_crit, boot_se, wald_test
from dte_dask.inference.dist import t_ppf
from dte_dask.inference.variance import analytic_se
from dte_dask.results.aggregate import AggKind, aggregate_map
from dte_dask.results.base import Result, no_pretest_reason, pointwise_z

_METHOD_NAMES = {"dr": "Doubly Robust", "ipw": "Inverse Probability Weighting", "reg": "Outcome Regression"}




def cell_counts(used: np.ndarray, group: np.ndarray, n_treated: np.ndarray, n_control: np.ndarray,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Units behind estimates built from ATT(g,t) cells: ``used`` (K, m) marks the cells of each.

    ``n_treated``: the units of the cohorts involved (each cohort counted once, at its largest
    cell); ``n_control``: the smallest comparison group of any cell involved. Zero where no cell is.
    """
    m = used.shape[1]
    n_t, n_c = np.zeros(m, dtype=np.int64), np.zeros(m, dtype=np.int64)
    for j in range(m):
        cells = used[:, j]
        if cells.any():
            n_t[j] = sum(int(n_treated[cells & (group == g)].max()) for g in np.unique(group[cells]))
            n_c[j] = int(n_control[cells].min())
    return n_t, n_c


def _interval(att, se, crit):
    return att - crit * se, att + crit * se


def _canonical(keys: dict[str, Any], est: np.ndarray, se: np.ndarray, alpha: float, crit: float,
               uniform: bool, z: float | None = None) -> dict[str, Any]:
    """Key columns + estimate, se, pointwise CI (normal, or the quantile ``z``) and the uniform band (NaN if none)."""
    lo, hi = _interval(est, se, pointwise_z(alpha) if z is None else z)
    blo, bhi = _interval(est, se, crit) if uniform else (np.full(est.shape, np.nan), np.full(est.shape, np.nan))
    return {**keys, "estimate": est, "se": se, "ci_lower": lo, "ci_upper": hi, "band_lower": blo, "band_upper": bhi}


@dataclass(frozen=True, repr=False)
class AggregateResult(Result):
    """One aggregation of ATT(g,t) (R ``aggte``).

    ``crit`` is the critical value of the reported intervals: the sup-t value when ``uniform``
    (bootstrapped with uniform bands, as R ``aggte``'s ``cband``), else the pointwise quantile.
    ``df_t``: the pointwise intervals use the t quantile with these degrees of freedom (aggregations of
    a regression's coefficients, e.g. ``etwfe``); None: the normal quantile.
    """

    result_kind: ClassVar[str] = "aggregate"

    kind: str
    key_name: str
    keys: np.ndarray
    att: np.ndarray
    se: np.ndarray
    se_analytic: np.ndarray
    crit: float
    overall_att: float
    overall_se: float
    alpha: float
    bootstrap: bool
    uniform: bool = False  # the intervals at ``crit`` are a uniform band
    cov: np.ndarray | None = field(default=None, repr=False)  # analytic (influence-function) covariance of att
    boot_draws: np.ndarray | None = None  # (B, m) bootstrap draws of ``att``
    estimator: str = "att_gt"
    options: dict[str, Any] = field(default_factory=dict)
    n_treated: np.ndarray | None = None  # (m,) units behind each estimate (see cell_counts)
    n_control: np.ndarray | None = None
    overall_n_treated: int | None = None  # the same for the overall estimate
    overall_n_control: int | None = None
    df_t: int | None = None

    @property
    def estimates(self) -> np.ndarray:
        return self.att

    @property
    def _z(self) -> float:
        return pointwise_z(self.alpha) if self.df_t is None else float(t_ppf(1.0 - self.alpha / 2.0, self.df_t))

    @property
    def draws(self) -> np.ndarray | None:
        return self.boot_draws

    def vcov(self) -> np.ndarray:
        """Analytic covariance of the estimates by key, from the influence functions (c' Sigma c)."""
        if self.cov is None:
            raise EstimationError("this aggregation holds no covariance; recompute it with AttgtResult.aggregate()")
        return self.cov.copy()

    def to_frame(self) -> pd.DataFrame:
        """The canonical frame (:mod:`dte_dask.results.base`): key, estimate, se, pointwise CI,
        uniform band (bootstrap with uniform bands), n_treated, n_control (see :func:`cell_counts`),
        se_analytic."""
        cols = _canonical({self.key_name: self.keys}, self.att, self.se, self.alpha, self.crit, self.uniform, self._z)
        counts = {} if self.n_treated is None or self.n_control is None else {
            "n_treated": np.asarray(self.n_treated, dtype=np.int64), "n_control": np.asarray(self.n_control, dtype=np.int64)}
        return pd.DataFrame({**cols, **counts, "se_analytic": self.se_analytic})

    def event_study(self) -> Result:
        if self.kind != "dynamic":
            raise SpecError(f"an event study needs the dynamic aggregation, got kind={self.kind!r}")
        return self

    @property
    def overall_ci(self) -> tuple[float, float]:
        z = self._z
        return self.overall_att - z * self.overall_se, self.overall_att + z * self.overall_se

    def summary(self) -> str:
        lo, hi = self.overall_ci
        title = {"simple": "Overall ATT (simple weighted average of post-treatment ATT(g,t))",
                 "dynamic": "Overall summary of ATT's based on event-study/dynamic aggregation",
                 "group": "Overall summary of ATT's based on group/cohort aggregation",
                 "calendar": "Overall summary of ATT's based on calendar time aggregation"}[self.kind]
        pct = int(round(100 * (1 - self.alpha)))
        out = [title, format_table(pd.DataFrame({"ATT": [self.overall_att], "Std. Error": [self.overall_se],
                                                 f"[{pct}% Conf.": [lo], "Int.]": [hi]}))]
        if self.keys.size:
            blo, bhi = _interval(self.att, self.se, self.crit)
            band = "Simult. " if self.bootstrap and self.crit else ""
            tab = pd.DataFrame({self.key_name: self.keys, "Estimate": self.att, "Std. Error": self.se,
                                f"[{pct}% {band}Conf.": blo, "Band]": bhi})
            tab[""] = np.where((blo > 0) | (bhi < 0), "*", "")
            out += ["", format_table(tab), "---", "Signif. codes: `*' confidence band does not cover 0"]
        return "\n".join(out)


@dataclass(frozen=True, repr=False)
class AttgtResult(Result):
    """Callaway–Sant'Anna ATT(g,t) estimates with their influence-function inference."""

    group: np.ndarray  # labels
    time: np.ndarray
    event_time: np.ndarray
    att: np.ndarray
    se_analytic: np.ndarray
    se_boot: np.ndarray | None
    crit: float
    n_treated: np.ndarray
    n_control: np.ndarray
    cov_aug: np.ndarray  # (K', K') covariance of [cells, cohort shares]
    draws_aug: np.ndarray | None
    groups: np.ndarray  # group labels of the cohort columns
    pg: np.ndarray
    reference: np.ndarray
    n_units: int
    n_clusters: int
    g_index: np.ndarray  # period indices of group and time (labels above are for output)
    t_index: np.ndarray
    group_index: np.ndarray  # period indices of ``groups``
    n_periods: int
    step: int  # event time per period, in the time column's units (1 for dates)
    alpha: float
    options: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    panel: dict[str, Any] = field(default_factory=dict)
    estimator: str = "att_gt"

    result_kind: ClassVar[str] = "cells"

    @property
    def K(self) -> int:
        return int(self.att.size)

    @property
    def se(self) -> np.ndarray:
        """Reported standard errors: bootstrap if it was run (as R ``did``), else analytic."""
        return self.se_boot if self.se_boot is not None else self.se_analytic

    @property
    def cov(self) -> np.ndarray:
        """Analytic covariance of the ATT(g,t) estimates."""
        return self.cov_aug[: self.K, : self.K]

    @property
    def estimates(self) -> np.ndarray:
        return self.att

    @property
    def draws(self) -> np.ndarray | None:
        """(B, K) bootstrap draws of the ATT(g,t) estimates."""
        return None if self.draws_aug is None else self.draws_aug[:, : self.K]

    @property
    def uniform(self) -> bool:
        """The reported intervals (at ``crit``) are the sup-t uniform band."""
        return self.se_boot is not None and bool(self.options.get("uniform_bands", True))

    def vcov(self) -> np.ndarray:
        """Analytic (influence-function) covariance of the ATT(g,t) estimates."""
        return np.array(self.cov, dtype=float, copy=True)

    def to_frame(self) -> pd.DataFrame:
        """The canonical frame (:mod:`dte_dask.results.base`): group, time, event_time, estimate, se,
        pointwise CI, uniform band (bootstrap with uniform bands), n_treated, n_control, se_analytic."""
        keys = {"group": self.group, "time": self.time, "event_time": self.event_time}
        cols = _canonical(keys, self.att, self.se, self.alpha, self.crit, self.uniform)
        return pd.DataFrame({**cols, "n_treated": self.n_treated.astype(np.int64),
                             "n_control": self.n_control.astype(np.int64), "se_analytic": self.se_analytic})

    def event_study(self) -> Result:
        """The dynamic aggregation (with ``na_rm=True`` when some cell is NaN)."""
        try:
            return self.aggregate("dynamic")
        except EstimationError:
            return self.aggregate("dynamic", na_rm=True)

    def pretrend_test(self) -> dict[str, Any]:
        """Wald test that all pre-treatment ATT(g,t) are zero (R ``att_gt``'s pre-test).

        With no usable pre-treatment cell there is nothing to test: as R ``did`` ("No
        pre-treatment periods to test") this warns, with the reason, and returns NaN statistics
        and ``reason``; it does not raise, so summaries and reports of such designs still work.
        """
        pre = (self.event_time < 0) & ~self.reference & np.isfinite(self.att)
        if not pre.any():
            reason = no_pretest_reason(self.event_time, self.reference, self.att)
            warnings.warn(f"No pre-treatment periods to test: {reason}", DteDaskWarning, stacklevel=2)
            return {"statistic": float("nan"), "df": 0, "p_value": float("nan"), "reason": reason}
        w, q, p = wald_test(self.att[pre], self.cov[np.ix_(pre, pre)])
        return {"statistic": w, "df": q, "p_value": p}

    def aggregate(self, kind: AggKind = "dynamic", *, min_e: float | None = None, max_e: float | None = None,
                  balance_e: float | None = None, na_rm: bool = False, alpha: float | None = None,
                  uniform_bands: bool | None = None) -> AggregateResult:
        """Aggregate ATT(g,t) like R ``aggte(type=kind)``; no new pass over the data."""
        alpha = self.alpha if alpha is None else alpha
        uniform = self.options.get("uniform_bands", True) if uniform_bands is None else uniform_bands
        e = (lambda v: None if v is None else v / self.step)
        m = aggregate_map(kind, att=self.att, group=self.g_index.astype(float), time=self.t_index.astype(float),
                          event=(self.t_index - self.g_index).astype(float), groups=self.group_index.astype(float),
                          pg=self.pg, last_time=float(self.n_periods - 1), first_time=0.0, min_e=e(min_e),
                          max_e=e(max_e), balance_e=e(balance_e), na_rm=na_rm,
                          cell_labels=list(zip(self.group, self.time)))
        keys = self._key_labels(kind, m.keys)
        cov = self.cov_aug
        se_a = analytic_se(m.coef.T @ cov @ m.coef) if m.coef.shape[1] else np.empty(0)
        o_se = float(analytic_se(np.atleast_2d(m.overall_coef @ cov @ m.overall_coef))[0])
        draws = None
        se = se_a
        scale = np.sqrt(self.n_clusters)
        if self.draws_aug is not None:
            draws = self.draws_aug @ m.coef
            se = boot_se(draws, scale) if m.coef.shape[1] else se_a
            if np.isfinite(m.overall_att):
                o_se = float(boot_se((self.draws_aug @ m.overall_coef)[:, None], scale)[0])
        crit = band_crit(draws, se, alpha, uniform, fallback=True) if m.keys.size else float("nan")
        key_name = {"simple": "key", "dynamic": "event_time", "group": "group", "calendar": "time"}[kind]
        agg_cov = m.coef.T @ cov @ m.coef if m.coef.shape[1] else np.empty((0, 0))
        used = np.column_stack([m.coef[: self.K] != 0, np.nan_to_num(m.overall_coef[: self.K]) != 0])
        n_t, n_c = cell_counts(used, self.g_index, self.n_treated, self.n_control)
        return AggregateResult(kind=kind, key_name=key_name, keys=keys, att=m.att, se=se, se_analytic=se_a,
                               crit=crit, overall_att=m.overall_att, overall_se=o_se, alpha=alpha,
                               bootstrap=self.draws_aug is not None, uniform=bool(uniform and draws is not None),
                               cov=agg_cov, boot_draws=draws, estimator=self.estimator,
                               n_treated=n_t[:-1], n_control=n_c[:-1], overall_n_treated=int(n_t[-1]),
                               overall_n_control=int(n_c[-1]),
                               options={k: self.options[k] for k in ("outcome", "time", "unit") if k in self.options})

    def _key_labels(self, kind: str, keys: np.ndarray) -> np.ndarray:
        if kind == "dynamic":
            return (keys * self.step).astype(np.int64)
        if kind in ("group", "calendar"):
            lookup = dict(zip(self.g_index.tolist() + self.t_index.tolist(), list(self.group) + list(self.time)))
            return np.array([lookup[int(k)] for k in keys])
        return keys

    def summary(self) -> str:
        pct = int(round(100 * (1 - self.alpha)))
        band = "Simult. " if self.uniform else "Pointwise "
        lo, hi = _interval(self.att, self.se, self.crit)
        tab = pd.DataFrame({"Group": self.group, "Time": self.time, "ATT(g,t)": self.att, "Std. Error": self.se,
                            f"[{pct}% {band}Conf.": lo, "Band]": hi})
        tab[""] = np.where((lo > 0) | (hi < 0), "*", "")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DteDaskWarning)
            pt = self.pretrend_test()
        ptext = f"{pt['p_value']:.5f}" if "reason" not in pt else f"not available ({pt['reason']})"
        o = self.options
        lines = ["Group-Time Average Treatment Effects:", format_table(tab), "---",
                 "Signif. codes: `*' confidence band does not cover 0", "",
                 f"P-value for pre-test of parallel trends assumption:  {ptext}",
                 f"Control Group:  {str(o.get('control_group', '')).replace('_', ' ').title()},  "
                 f"Anticipation Periods:  {o.get('anticipation', 0)}",
                 f"Estimation Method:  {_METHOD_NAMES.get(o.get('est_method', ''), o.get('est_method'))}",
                 f"Units: {self.n_units}" + (f", clusters: {self.n_clusters}" if o.get("cluster") else "")
                 + (f", bootstrap draws: {o.get('n_boot')} ({o.get('boot_weights')}), seed: {self.seed}" if self.se_boot is not None else "")]
        return "\n".join(lines)
