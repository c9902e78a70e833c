"""``honest_did``: sensitivity of an event study to violations of parallel trends (Rambachan & Roth).

Given the event-study estimates ``betahat`` (pre-periods, earliest first, then post-periods; the
reference period excluded) and their covariance ``Sigma``, report for each bound ``M`` a
confidence interval for ``theta = l' tau_post`` that is valid whenever the violation of parallel
trends ``delta`` lies in the restriction set, next to the usual interval that assumes ``delta = 0``.

Restrictions (``restriction``) and methods (``method``), as in R ``HonestDiD``:

========================  ==========================================  =================
restriction               set                                          methods (default)
========================  ==========================================  =================
``"relative_magnitude"``  Delta^RM(Mbar): post first differences       C-LF, Conditional
                          <= Mbar x the largest pre first difference
``"smoothness"``          Delta^SD(M): second differences <= M         FLCI, Conditional,
                                                                        C-F, C-LF
``"combined"``            Delta^SDRM(Mbar): post second differences    C-LF, Conditional
                          <= Mbar x the largest pre second difference
========================  ==========================================  =================

``bias_direction`` ("positive" / "negative") and ``monotonicity_direction`` ("increasing" /
"decreasing") intersect the set with a sign or shape restriction (smoothness then defaults to
C-F: the FLCI ignores them).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from scipy import stats

from dte_dask.checks import CheckResult
from dte_dask.exceptions import SpecError
from dte_dask.sensitivity.intervals import Interval, Problem, robust_interval

Restriction = Literal["relative_magnitude", "smoothness", "combined"]
Method = Literal["FLCI", "Conditional", "C-F", "C-LF"]
_METHODS = {"relative_magnitude": ("C-LF", "Conditional"), "combined": ("C-LF", "Conditional"),
            "smoothness": ("FLCI", "Conditional", "C-F", "C-LF")}
_DELTA = {"relative_magnitude": "DeltaRM", "smoothness": "DeltaSD", "combined": "DeltaSDRM"}
_M_NAME = {"relative_magnitude": "Mbar", "smoothness": "M", "combined": "Mbar"}


@dataclass(frozen=True, repr=False, eq=False)
class HonestDiDResult(CheckResult):
    """Robust confidence intervals by M, the original interval and the breakdown value.

    Attributes
    ----------
    M, lb, ub : (k,) bounds and interval ends (NaN when the confidence set is empty)
    original : (lb, ub) of the interval that assumes exact parallel trends: the result's own
        pointwise interval (its critical value, ``vcov()``) for a result, the normal Wald interval
        (HonestDiD's ``constructOriginalCS``) for raw inputs
    grid_step : (k,) spacing of the theta grid the interval was read from (NaN for the FLCI)
    open_end : (k,) True where the last accepted grid point is an end of the grid
    options : column names and the estimator of the result (axis labels, the report)
    notes : warnings raised while computing (varying base period, binned endpoints, grid ends)
    """

    check_kind: ClassVar[str] = "honest_did"
    save_plots: ClassVar[bool] = True

    restriction: str
    method: str
    M: np.ndarray
    lb: np.ndarray
    ub: np.ndarray
    original: tuple[float, float]
    estimate: float
    l_vec: np.ndarray
    num_pre_periods: int
    num_post_periods: int
    alpha: float
    grid_points: int
    grid_step: np.ndarray
    open_end: np.ndarray
    event_times: np.ndarray | None = None
    bias_direction: str | None = None
    monotonicity_direction: str | None = None
    problem: Problem | None = field(default=None, repr=False)
    options: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def delta(self) -> str:
        name = _DELTA[self.restriction]
        if self.bias_direction:
            name += "B"
        elif self.monotonicity_direction:
            name += "M"
        return name

    def to_frame(self, original: bool = True) -> pd.DataFrame:
        """One row per M (``M, lb, ub, method, delta``), then the original interval (M = NaN)."""
        df = pd.DataFrame({"M": self.M, "lb": self.lb, "ub": self.ub, "method": self.method, "delta": self.delta})
        if original:
            orig = pd.DataFrame({"M": [np.nan], "lb": [self.original[0]], "ub": [self.original[1]],
                                 "method": ["Original"], "delta": [None]})
            df = pd.concat([df, orig], ignore_index=True)
        return df

    @property
    def breakdown(self) -> float:
        """Largest M of the grid up to which every robust interval excludes zero (NaN if none does).

        A lower bound on the exact breakdown value when the last M still excludes zero; see
        :meth:`breakdown_value` to refine between grid values.
        """
        excl = (self.lb > 0) | (self.ub < 0)
        order = np.argsort(self.M)
        ok = np.cumprod(excl[order]).astype(bool)
        return float(self.M[order][ok][-1]) if ok.any() else float("nan")

    def breakdown_value(self, tol: float | None = None, max_iter: int = 40) -> float:
        """Breakdown value refined by bisection on M between the grid values (intervals widen in M)."""
        b = self.breakdown
        if self.problem is None or np.isnan(b):
            return b
        Ms = np.sort(self.M)
        above = Ms[Ms > b]
        if above.size == 0:
            return b
        lo, hi = b, float(above[0])
        tol = (hi - lo) * 1e-3 if tol is None else tol
        for _ in range(max_iter):
            if hi - lo <= tol:
                break
            mid = 0.5 * (lo + hi)
            iv = robust_interval(self.problem, mid, self.method)
            lo, hi = (mid, hi) if (iv.lb > 0 or iv.ub < 0) else (lo, mid)
        return lo

    def summary(self) -> str:
        pct = round(100 * (1 - self.alpha))
        lines = [f"HonestDiD sensitivity analysis ({self.delta}, {self.method}), theta = {self.target}",
                 f"Estimate {self.estimate:.4f}; original {pct}% CI [{self.original[0]:.4f}, {self.original[1]:.4f}]",
                 f"{'M' if self.restriction == 'smoothness' else 'Mbar':>8}  {'lb':>10}  {'ub':>10}  excludes 0"]
        for m, lo, hi in zip(self.M, self.lb, self.ub):
            lines.append(f"{m:8.4f}  {lo:10.4f}  {hi:10.4f}  {'yes' if (lo > 0 or hi < 0) else 'no'}")
        step = np.nanmax(self.grid_step) if np.isfinite(self.grid_step).any() else np.nan
        lines += ["---", f"Breakdown value (grid): {self.breakdown:.4g}; pre-periods {self.num_pre_periods}, "
                  f"post-periods {self.num_post_periods}" + (f"; grid of {self.grid_points} points, step <= {step:.3g}"
                                                             if np.isfinite(step) else "")]
        if self.open_end.any():
            lines.append("Warning: some intervals reach the end of the theta grid (pass grid_lb / grid_ub)")
        lines += [f"Note: {n}" for n in self.notes]
        return "\n".join(lines)

    @property
    def target(self) -> str:
        """What theta is: ``event time e`` or the weights ``l``."""
        if self.event_times is not None and np.count_nonzero(self.l_vec) == 1:
            return f"event time {self.event_times[self.num_pre_periods + int(np.argmax(self.l_vec))]}"
        return f"l = {np.round(self.l_vec, 4).tolist()}"

    def facts(self) -> dict[str, Any]:
        """Scalars for ``summary.json``: the breakdown value, the original interval, the set and method."""
        return {"breakdown": self.breakdown, "original": list(self.original), "estimate": self.estimate,
                "restriction": self.restriction, "method": self.method, "delta": self.delta, "target": self.target,
                "grid_points": self.grid_points, "notes": list(self.notes)}

    def plot(self, *, backend: str = "bokeh") -> Any:
        """Robust intervals against M next to the original one (HonestDiD's ``createSensitivityPlot``)."""
        from dte_dask.plotting import plot_honest_did

        return plot_honest_did(self.to_frame(), breakdown=self.breakdown, backend=backend,  # type: ignore[arg-type]
                               title=f"Sensitivity to parallel-trends violations ({self.delta}, {self.target})",
                               m_name=_M_NAME[self.restriction], outcome=self.options.get("outcome"))


def original_cs(betahat: np.ndarray, sigma: np.ndarray, n_pre: int, l_vec: np.ndarray,
                alpha: float, crit: float | None = None) -> tuple[float, float]:
    """Wald interval for l' beta_post assuming exact parallel trends (HonestDiD ``constructOriginalCS``).

    ``crit``: the critical value (default the normal quantile, as HonestDiD; a result's own
    pointwise critical value, e.g. the t quantile of the regressions, to reproduce its interval).
    """
    est = float(l_vec @ betahat[n_pre:])
    se = float(np.sqrt(l_vec @ sigma[n_pre:, n_pre:] @ l_vec))
    z = stats.norm.ppf(1 - alpha / 2) if crit is None else crit
    return est - z * se, est + z * se


def honest_did(
    result: Any = None, *, event_time: int | None = None, l_vec: Any = None,
    restriction: Restriction = "relative_magnitude", M: Any = None, method: Method | None = None,
    alpha: float | None = None, bias_direction: str | None = None, monotonicity_direction: str | None = None,
    grid_points: int = 1000, grid_lb: float | None = None, grid_ub: float | None = None,
    betahat: Any = None, sigma: Any = None, num_pre_periods: int | None = None,
    num_post_periods: int | None = None, lf_sims: int = 1000, seed: int = 0,
) -> HonestDiDResult:
    """Rambachan–Roth sensitivity analysis of an event study (R ``HonestDiD``).

    Parameters
    ----------
    result : an event-study result of any estimator (its ``event_study()``: the dynamic
        aggregation of ``att_gt``, the coefficients of ``event_study``, ``sun_abraham``,
        ``stacked_did``, ``imputation_did(pretrends=k)``, ``two_stage_did(pretrends=k)``,
        ``etwfe(control_group="never_treated")``, ``triple_did``, ``did_multiplegt(placebo=k)``,
        ``continuous_did(aggregation="eventstudy")``), with
        the full covariance ``vcov()``; or pass
        ``betahat``, ``sigma``, ``num_pre_periods``, ``num_post_periods`` instead (as
        ``createSensitivityResults``), the reference period excluded.
    event_time : the post-period event time of interest (default: the first post-period, event time 0;
        1 for ``did_multiplegt``, whose effects start at 1); with raw inputs, post-periods are
        numbered 0, 1, ... Ignored when ``l_vec`` is given.
    l_vec : weights on the post-period coefficients (theta = l' tau_post).
    restriction : "relative_magnitude" (default), "smoothness", "combined".
    M : bounds (Mbar for relative magnitudes); non-negative. Default: 0, 0.5, ..., 2 (Mbar), or ten
        values from 0 to a pre-period upper bound (smoothness).
    method : "C-LF" (default for relative magnitudes), "FLCI" (default for smoothness),
        "Conditional", "C-F" (smoothness only; default there with a sign/shape restriction).
    alpha : level; default the result's ``alpha`` (0.05 for raw inputs). The original interval of a
        result uses the result's own pointwise critical value at its own ``alpha`` (so it is the
        interval the result reports), the normal quantile otherwise.
    grid_points, grid_lb, grid_ub : the theta grid the conditional/hybrid tests are inverted on.
    lf_sims, seed : draws and seed of the simulated least-favourable critical value (C-LF).

    Returns
    -------
    HonestDiDResult
    """
    from dte_dask.sensitivity.inputs import event_study_inputs, pointwise_crit, validate_inputs

    crit, options = None, {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if result is not None:
            if any(v is not None for v in (betahat, sigma, num_pre_periods, num_post_periods)):
                raise SpecError("pass either result or betahat/sigma/num_pre_periods/num_post_periods, not both")
            betahat, sigma, event_times, num_pre_periods, num_post_periods = event_study_inputs(result)
            r_alpha = float(getattr(result, "alpha", 0.05) or 0.05)
            alpha = r_alpha if alpha is None else alpha
            crit = pointwise_crit(result) if alpha == r_alpha else None
            options = result_axis_names(result)
        else:
            event_times = None
            alpha = 0.05 if alpha is None else alpha
        b, S, n_pre, n_post = validate_inputs(betahat, sigma, num_pre_periods, num_post_periods)
        lv = _l_vec(l_vec, event_time, event_times, n_pre, n_post)
        method = _check_options(restriction, method, bias_direction, monotonicity_direction, alpha, grid_points, n_pre)
        Ms = _m_grid(M, restriction, b, S, n_pre)
        p = Problem(b, S, n_pre, lv, float(alpha), restriction, bias_direction, monotonicity_direction,
                    int(grid_points), grid_lb, grid_ub, int(lf_sims), int(seed))
        ivs: list[Interval] = [robust_interval(p, float(m), method) for m in Ms]
        if any(iv.open_end for iv in ivs):
            warnings.warn("a robust interval reaches the end of the theta grid; widen it with grid_lb / grid_ub",
                          stacklevel=2)
    notes = tuple(dict.fromkeys(str(w.message) for w in caught))
    for w in caught:  # passed on to the caller, recorded on the result too
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return HonestDiDResult(
        restriction=restriction, method=method, M=Ms, lb=np.array([iv.lb for iv in ivs]),
        ub=np.array([iv.ub for iv in ivs]), original=original_cs(b, S, n_pre, lv, alpha, crit),
        estimate=float(lv @ b[n_pre:]), l_vec=lv, num_pre_periods=n_pre, num_post_periods=n_post,
        alpha=float(alpha), grid_points=int(grid_points), grid_step=np.array([iv.step for iv in ivs]),
        open_end=np.array([iv.open_end for iv in ivs]), event_times=event_times,
        bias_direction=bias_direction, monotonicity_direction=monotonicity_direction, problem=p,
        options=options, notes=notes)


def result_axis_names(result: Any) -> dict[str, Any]:
    """Column names and the estimator's label of a result (the plot's axis labels, the report)."""
    from dte_dask.plotting import axis_names, default_label

    return {**axis_names(result), "estimator": default_label(result)}


def _l_vec(l_vec: Any, event_time: int | None, event_times: np.ndarray | None, n_pre: int, n_post: int) -> np.ndarray:
    if l_vec is not None:
        lv = np.asarray(l_vec, dtype=float).ravel()
        if lv.size != n_post or not np.all(np.isfinite(lv)) or not np.any(lv != 0):
            raise SpecError(f"l_vec must be {n_post} finite weights (one per post-period), not all zero; got {lv.tolist()}")
        return lv
    post = np.arange(n_post) if event_times is None else np.asarray(event_times)[n_pre:]
    e = post[0] if event_time is None else event_time
    hits = np.flatnonzero(post == e)
    if hits.size != 1:
        raise SpecError(f"event_time={event_time!r} is not a post-period event time; available: {post.tolist()}")
    lv = np.zeros(n_post)
    lv[hits[0]] = 1.0
    return lv


def _check_options(restriction: str, method: str | None, bias_direction: str | None,
                   monotonicity_direction: str | None, alpha: float, grid_points: int, n_pre: int) -> str:
    if restriction not in _METHODS:
        raise SpecError(f"restriction={restriction!r} is not one of {list(_METHODS)}")
    if bias_direction is not None and bias_direction not in ("positive", "negative"):
        raise SpecError(f"bias_direction={bias_direction!r} must be 'positive', 'negative' or None")
    if monotonicity_direction is not None and monotonicity_direction not in ("increasing", "decreasing"):
        raise SpecError(f"monotonicity_direction={monotonicity_direction!r} must be 'increasing', 'decreasing' or None")
    if bias_direction is not None and monotonicity_direction is not None:
        raise SpecError("bias_direction and monotonicity_direction cannot both be set")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise SpecError(f"alpha={alpha!r} must be in (0, 1)")
    if not (isinstance(grid_points, (int, np.integer)) and grid_points >= 3):
        raise SpecError(f"grid_points={grid_points!r} must be an integer >= 3")
    if restriction == "combined" and n_pre < 3:
        raise SpecError(f"restriction='combined' needs at least 3 pre-periods, the result has {n_pre}")
    shaped = bias_direction is not None or monotonicity_direction is not None
    if method is None:
        return _METHODS[restriction][0] if not (restriction == "smoothness" and shaped) else "C-F"
    if method not in _METHODS[restriction]:
        raise SpecError(f"method={method!r} is not available for restriction={restriction!r}; "
                        f"choose one of {list(_METHODS[restriction])}")
    if method == "FLCI" and shaped:
        warnings.warn("method='FLCI' ignores bias_direction / monotonicity_direction", stacklevel=3)
    return method


def _m_grid(M: Any, restriction: str, b: np.ndarray, S: np.ndarray, n_pre: int) -> np.ndarray:
    if M is None:
        if restriction != "smoothness":
            return np.arange(0.0, 2.01, 0.5)
        if n_pre >= 3:  # HonestDiD's DeltaSD_upperBound_Mpre: one-sided 95% bound on pre second differences
            D = np.zeros((n_pre - 2, n_pre))
            for r in range(n_pre - 2):
                D[r, r:r + 3] = (1.0, -2.0, 1.0)
            ub = float(np.max(D @ b[:n_pre] + stats.norm.ppf(0.95) * np.sqrt(np.diag(D @ S[:n_pre, :n_pre] @ D.T))))
        else:
            ub = float(np.sqrt(S[0, 0]))
        return np.linspace(0.0, max(ub, 0.0), 10)
    Ms = np.atleast_1d(np.asarray(M, dtype=float)).ravel()
    if Ms.size == 0 or not np.all(np.isfinite(Ms)) or np.any(Ms < 0):
        raise SpecError(f"M must be finite non-negative bounds; got {Ms.tolist()}")
    return Ms


def with_pre_diffs(p: Problem, pre_diffs: tuple[int, ...]) -> Problem:
    """The same problem with the relative-magnitude maximum taken over some pre-period differences only."""
    return replace(p, pre_diffs=pre_diffs)
