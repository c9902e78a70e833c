"""Immutable results of the regression estimators: event study, stacked DiD, Sun–Abraham.

A result holds small arrays only: the event-time coefficients, their CRV1 covariance and, with the
bootstrap, the (B x K) draws. Pre-trend tests, pooled post-period effects and intervals are
driver-side algebra on those.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from dte_dask.exceptions import DteDaskWarning, EstimationError, SpecError
from dte_dask.formatting import format_table
from dte_dask.inference.bands import wald_test
from dte_dask.inference.dist import t_ppf
from dte_dask.results.base import Result, no_pretest_reason


@dataclass(frozen=True, repr=False)
class RegressionResult(Result):
    """Event-time coefficients of a regression estimator with CRV1 inference.

    Attributes
    ----------
    estimator : the registry name ("event_study", "stacked_did", "sun_abraham", "imputation_did", "two_stage_did", "etwfe")
    event_time : (K,) event times in the time column's units (period index x step)
    coef, se : (K,) estimates and CRV1 standard errors
    cov : (K, K) CRV1 covariance (pyfixest's default small-sample factor ``ssc``)
    binned : (K,) True for binned endpoints (they pool every event time beyond them)
    df_t : degrees of freedom of the t intervals (clusters - 1, as pyfixest)
    se_boot, band_crit, draws : multiplier bootstrap SEs, sup-t critical value and (B, K) draws,
        when the bootstrap ran
    other : coefficients not indexed by event time (covariates), as a frame
    cohorts : per-cohort estimates (stacked DiD: each sub-experiment; Sun–Abraham: delta(g, e))
    n_treated, n_control : (K,) treated units observed at each event time, and the fewest
        not-yet-treated units observed in the same periods (counted on the workers; for
        disclosure control, :mod:`dte_dask.disclosure`)
    aggregations : results of the other aggregations the estimator computes (``etwfe``: simple, group,
        calendar), by kind; :meth:`aggregate` returns them
    """

    estimator: str
    event_time: np.ndarray
    coef: np.ndarray
    se: np.ndarray
    cov: np.ndarray
    binned: np.ndarray
    alpha: float
    df_t: int
    n_obs: int
    n_units: int
    n_clusters: int
    ref: int
    ssc: float
    se_boot: np.ndarray | None = None
    band_crit: float | None = None
    draws: np.ndarray | None = None
    other: pd.DataFrame | None = None
    cohorts: pd.DataFrame | None = None
    options: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    panel: dict[str, Any] = field(default_factory=dict)
    n_treated: np.ndarray | None = None  # (K,) units behind each estimate (Panel.event_time_counts)
    n_control: np.ndarray | None = None
    aggregations: dict[str, Result] = field(default_factory=dict)

    result_kind: ClassVar[str] = "event_study"

    @property
    def estimates(self) -> np.ndarray:
        return self.coef

    def vcov(self) -> np.ndarray:
        """CRV1 covariance of the event-time coefficients (in ``event_time`` order; pyfixest's ssc)."""
        return np.array(self.cov, dtype=float, copy=True)

    @property
    def crit(self) -> float:
        """Pointwise critical value: the t quantile with ``df_t`` degrees of freedom."""
        return float(t_ppf(1.0 - self.alpha / 2.0, self.df_t))

    def to_frame(self) -> pd.DataFrame:
        """The canonical frame (:mod:`dte_dask.results.base`): event_time, estimate, se (CRV1),
        pointwise t interval, uniform band (sup-t bootstrap; NaN without it), binned (+ se_boot,
        n_treated, n_control)."""
        c = self.crit
        nan = np.full(self.coef.shape, np.nan)
        boot = self.se_boot is not None and self.band_crit is not None
        df = pd.DataFrame({"event_time": self.event_time, "estimate": self.coef, "se": self.se,
                           "ci_lower": self.coef - c * self.se, "ci_upper": self.coef + c * self.se,
                           "band_lower": self.coef - self.band_crit * self.se_boot if boot else nan,
                           "band_upper": self.coef + self.band_crit * self.se_boot if boot else nan,
                           "binned": self.binned})
        if boot:
            df["se_boot"] = self.se_boot
        if self.n_treated is not None and self.n_control is not None:
            df["n_treated"] = np.asarray(self.n_treated, dtype=np.int64)
            df["n_control"] = np.asarray(self.n_control, dtype=np.int64)
        return df

    def pretrend_test(self) -> dict[str, float]:
        """Wald test (chi-square, CRV1 covariance) that every pre-period coefficient is zero."""
        pre = self.event_time < 0
        if not (pre & np.isfinite(self.coef)).any():
            reason = no_pretest_reason(self.event_time, None, self.coef)
            warnings.warn(f"No pre-treatment periods to test: {reason}", DteDaskWarning, stacklevel=2)
            return {"statistic": float("nan"), "df": 0, "p_value": float("nan"), "reason": reason}
        w, q, p = wald_test(self.coef[pre], self.cov[np.ix_(pre, pre)])
        return {"statistic": w, "df": q, "p_value": p}

    def post_average(self) -> dict[str, float]:
        """Pooled post-period effect: the mean of the coefficients with event time >= 0.

        Notes
        -----
        :math:`\\bar\\beta = a'\\beta` with :math:`a_k = 1/|P|` on post event times P (a binned
        upper endpoint counts as one of them); its SE is :math:`\\sqrt{a'Va}` (delta method).
        """
        post = self.event_time >= 0
        if not post.any():
            raise EstimationError("no post-treatment coefficient (event time >= 0) to average")
        a = post / post.sum()
        est = float(a @ self.coef)
        se = float(np.sqrt(a @ self.cov @ a))
        c = self.crit
        return {"estimate": est, "se": se, "ci_lower": est - c * se, "ci_upper": est + c * se,
                "n_event_times": int(post.sum())}

    def aggregate(self, kind: str) -> Result:
        """The aggregation ``kind``: ``"dynamic"`` is this result (the estimates by event time); the
        others are those the estimator computed (``etwfe``: ``simple``, ``group``, ``calendar``)."""
        if kind == "dynamic":
            return self
        if kind not in self.aggregations:
            raise SpecError(f"{self.estimator} offers the aggregations {['dynamic', *self.aggregations]}, not {kind!r}")
        return self.aggregations[kind]

    def by_cohort(self) -> pd.DataFrame:
        """Per-cohort estimates: each sub-experiment (stacked DiD) or each delta(g, e) (Sun–Abraham)."""
        if self.cohorts is None:
            raise SpecError(f"by_cohort() is available for stacked_did and sun_abraham results, not {self.estimator}")
        return self.cohorts.copy()

    def summary(self) -> str:
        df = self.to_frame()
        pct = int(round(100 * (1 - self.alpha)))
        tab = pd.DataFrame({"Event time": df["event_time"], "Estimate": df["estimate"], "Std. Error": df["se"],
                            f"[{pct}% Conf.": df["ci_lower"], "Int.]": df["ci_upper"]})
        if "se_boot" in df:
            tab[f"[{pct}% Simult."] = df["band_lower"]
            tab["Band]"] = df["band_upper"]
        if self.binned.any():
            tab["binned"] = np.where(df["binned"], "yes", "")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DteDaskWarning)
            pt = self.pretrend_test()
        pa = self.post_average() if (self.event_time >= 0).any() else None
        from dte_dask.registry import estimator_title

        lines = [estimator_title(self.estimator), format_table(tab)]
        if self.other is not None and len(self.other):
            lines += ["", format_table(self.other)]
        lines += ["---", f"Reference event time: {self.ref}; standard errors: CRV1 by "
                  f"{self.options.get('cluster') or 'unit'} ({self.n_clusters} clusters, small-sample factor {self.ssc:.6f})",
                  f"Observations: {self.n_obs}, units: {self.n_units}",
                  f"Pre-trend Wald test: chi2({pt['df']}) = {pt['statistic']:.4f}, p = {pt['p_value']:.5f}"
                  if "reason" not in pt else f"Pre-trend Wald test: not available ({pt['reason']})"]
        if pa is not None:
            lines.append(f"Post-period average: {pa['estimate']:.4f} (SE {pa['se']:.4f}) over {pa['n_event_times']} event times")
        if self.band_crit is not None:
            lines.append(f"Simultaneous band: sup-t critical value {self.band_crit:.4f} from "
                         f"{self.options.get('n_boot')} multiplier-bootstrap draws (seed {self.options.get('seed')})")
        return "\n".join(lines)
