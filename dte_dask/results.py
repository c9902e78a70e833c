"""Immutable result objects: ATT(g,t) and its aggregations.

Results hold only small arrays: estimates, the augmented covariance (K' x K') and, with the
bootstrap, the draws (B x K'). Every derived quantity is driver-side algebra on those.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dte_dask.estimators.aggregate import AggKind, aggregate_map
from dte_dask.exceptions import DteDaskWarning, EstimationError
from dte_dask.inference.bands import band_crit, boot_se, wald_test
from dte_dask.inference.variance import analytic_se

_METHOD_NAMES = {"dr": "Doubly Robust", "ipw": "Inverse Probability Weighting", "reg": "Outcome Regression"}


def _fmt_table(df: pd.DataFrame, floatfmt: str = "{:.4f}") -> str:
    cols = list(df.columns)
    rows = [[floatfmt.format(v) if isinstance(v, (float, np.floating)) else str(v) for v in r]
            for r in df.itertuples(index=False)]
    widths = [max(len(str(c)), *(len(r[i]) for r in rows)) if rows else len(str(c)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(str(v).rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(cols), *(line(r) for r in rows)])


def no_pretest_reason(event_time: np.ndarray, reference: np.ndarray | None, est: np.ndarray) -> str:
    """Why a set of estimates has no usable pre-treatment estimate (for the pre-test's warning)."""
    ref = np.zeros(event_time.size, dtype=bool) if reference is None else reference
    before = event_time < 0
    if not before.any():
        return "no estimate has a negative event time (no cohort is observed before its base period)"
    if not (before & ~ref).any():
        return "the only pre-treatment estimates are reference periods (fixed at 0)"
    return f"all {int((before & ~ref).sum())} pre-treatment estimates are NaN"


def _interval(att, se, crit):
    return att - crit * se, att + crit * se


@dataclass(frozen=True)
class AggregateResult:
    """One aggregation of ATT(g,t) (R ``aggte``)."""

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
    cov: np.ndarray | None = field(default=None, repr=False)  # analytic (influence-function) covariance of att

    def vcov(self) -> np.ndarray:
        """Analytic covariance of the estimates by key, from the influence functions (c' Sigma c)."""
        if self.cov is None:
            raise EstimationError("this aggregation holds no covariance; recompute it with AttgtResult.aggregate()")
        return self.cov.copy()

    def to_frame(self) -> pd.DataFrame:
        lo, hi = _interval(self.att, self.se, self.crit)
        df = pd.DataFrame({self.key_name: self.keys, "att": self.att, "se": self.se,
                           "ci_lower": lo, "ci_upper": hi, "se_analytic": self.se_analytic})
        return df

    @property
    def overall_ci(self) -> tuple[float, float]:
        from scipy import stats
        z = stats.norm.ppf(1 - self.alpha / 2)
        return self.overall_att - z * self.overall_se, self.overall_att + z * self.overall_se

    def summary(self) -> str:
        lo, hi = self.overall_ci
        title = {"simple": "Overall ATT (simple weighted average of post-treatment ATT(g,t))",
                 "dynamic": "Overall summary of ATT's based on event-study/dynamic aggregation",
                 "group": "Overall summary of ATT's based on group/cohort aggregation",
                 "calendar": "Overall summary of ATT's based on calendar time aggregation"}[self.kind]
        pct = int(round(100 * (1 - self.alpha)))
        out = [title, _fmt_table(pd.DataFrame({"ATT": [self.overall_att], "Std. Error": [self.overall_se],
                                               f"[{pct}% Conf.": [lo], "Int.]": [hi]}))]
        if self.keys.size:
            df = self.to_frame()
            band = "Simult. " if self.bootstrap and self.crit else ""
            tab = pd.DataFrame({self.key_name: df[self.key_name], "Estimate": df["att"], "Std. Error": df["se"],
                                f"[{pct}% {band}Conf.": df["ci_lower"], "Band]": df["ci_upper"]})
            sig = np.where((df["ci_lower"] > 0) | (df["ci_upper"] < 0), "*", "")
            tab[""] = sig
            out += ["", _fmt_table(tab), "---", "Signif. codes: `*' confidence band does not cover 0"]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        return f"<pre>{self.summary()}</pre>"

    def plot(self, *, backend: str = "bokeh", **kwargs: Any) -> Any:
        """Event study (dynamic) or estimates by key; see :func:`dte_dask.plotting.plot_aggregate`."""
        from dte_dask.plotting import plot_result

        return plot_result(self, backend=backend, **kwargs)


@dataclass(frozen=True)
class AttgtResult:
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

    def to_frame(self) -> pd.DataFrame:
        lo, hi = _interval(self.att, self.se, self.crit)
        return pd.DataFrame({
            "group": self.group, "time": self.time, "event_time": self.event_time, "att": self.att,
            "se": self.se, "ci_lower": lo, "ci_upper": hi, "n_treated": self.n_treated.astype(np.int64),
            "n_control": self.n_control.astype(np.int64), "se_analytic": self.se_analytic,
        })

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
        return AggregateResult(kind=kind, key_name=key_name, keys=keys, att=m.att, se=se, se_analytic=se_a,
                               crit=crit, overall_att=m.overall_att, overall_se=o_se, alpha=alpha,
                               bootstrap=self.draws_aug is not None, cov=m.coef.T @ cov @ m.coef)

    def _key_labels(self, kind: str, keys: np.ndarray) -> np.ndarray:
        if kind == "dynamic":
            return (keys * self.step).astype(np.int64)
        if kind in ("group", "calendar"):
            lookup = dict(zip(self.g_index.tolist() + self.t_index.tolist(), list(self.group) + list(self.time)))
            return np.array([lookup[int(k)] for k in keys])
        return keys

    def summary(self) -> str:
        df = self.to_frame()
        pct = int(round(100 * (1 - self.alpha)))
        band = "Simult. " if self.se_boot is not None and self.options.get("uniform_bands", True) else "Pointwise "
        tab = pd.DataFrame({"Group": df["group"], "Time": df["time"], "ATT(g,t)": df["att"], "Std. Error": df["se"],
                            f"[{pct}% {band}Conf.": df["ci_lower"], "Band]": df["ci_upper"]})
        tab[""] = np.where((df["ci_lower"] > 0) | (df["ci_upper"] < 0), "*", "")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DteDaskWarning)
            pt = self.pretrend_test()
        ptext = f"{pt['p_value']:.5f}" if "reason" not in pt else f"not available ({pt['reason']})"
        o = self.options
        lines = ["Group-Time Average Treatment Effects:", _fmt_table(tab), "---",
                 "Signif. codes: `*' confidence band does not cover 0", "",
                 f"P-value for pre-test of parallel trends assumption:  {ptext}",
                 f"Control Group:  {str(o.get('control_group', '')).replace('_', ' ').title()},  "
                 f"Anticipation Periods:  {o.get('anticipation', 0)}",
                 f"Estimation Method:  {_METHOD_NAMES.get(o.get('est_method', ''), o.get('est_method'))}",
                 f"Units: {self.n_units}" + (f", clusters: {self.n_clusters}" if o.get("cluster") else "")
                 + (f", bootstrap draws: {o.get('n_boot')} ({o.get('boot_weights')}), seed: {self.seed}" if self.se_boot is not None else "")]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        return f"<pre>{self.summary()}</pre>"

    def plot(self, kind: str = "attgt", *, backend: str = "bokeh", **kwargs: Any) -> Any:
        """ATT(g,t) by cohort (``"attgt"``, as R ``ggdid``), ``"dynamic"``, ``"cohorts"``, ``"group"``,
        ``"calendar"``; see :func:`dte_dask.plotting.plot_result`."""
        from dte_dask.plotting import plot_result

        return plot_result(self, kind, backend=backend, **kwargs)
