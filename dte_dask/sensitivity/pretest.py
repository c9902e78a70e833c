"""Power of pre-trend tests against linear violations, and the bias they leave (Roth 2022).

Roth, J. (2022), "Pretest with Caution: Event-Study Estimates after Testing for Parallel Trends",
AER: Insights 4(3), 305–322; R package ``pretrends``. The pre-test "passes" when no pre-period
coefficient is individually significant at level ``alpha`` (two-sided z-tests with the diagonal
of Sigma). Under a linear violation :math:`\\delta_t = s\\, t` (periods numbered relative to the
reference period: pre ``-T_pre .. -1``, post ``1 .. T_post``) this module reports the probability
that the pre-test rejects (its power), the slopes it detects with given power, and the bias of
the post-period estimates, unconditionally (:math:`\\delta_{post}`) and conditional on passing.

Notes
-----
With :math:`\\hat\\beta \\sim N(\\beta + \\delta, \\Sigma)`, passing is the event
:math:`\\hat\\beta_{pre} \\in B = \\prod_j [-z\\,\\sigma_j, z\\,\\sigma_j]`, so

.. math::
    E[\\hat\\beta_{post} - \\tau \\mid pass] = \\delta_{post}
      + \\Sigma_{post,pre}\\Sigma_{pre}^{-1}\\,(E[\\hat\\beta_{pre} \\mid \\hat\\beta_{pre} \\in B]
      - \\delta_{pre}),

the mean of a truncated multivariate normal, computed with the Tallis (1961) formula (marginal
densities at the truncation points times lower-dimensional normal rectangle probabilities; see
Manjunath & Wilhelm 2012). Rectangle probabilities use scipy's Genz algorithm with a fixed seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy import optimize, stats

from dte_dask.checks import CheckResult
from dte_dask.exceptions import SpecError

Array = np.ndarray


def _box_prob(lo: Array, hi: Array, cov: Array, seed: int, eps: float = 1e-6) -> float:
    if lo.size == 0:
        return 1.0
    if lo.size == 1:
        s = float(np.sqrt(cov[0, 0]))
        return float(stats.norm.cdf(hi[0] / s) - stats.norm.cdf(lo[0] / s))
    mvn = stats.multivariate_normal(mean=np.zeros(lo.size), cov=cov, seed=seed,
                                    maxpts=int(0.02 / eps) * lo.size, abseps=eps, releps=eps)
    return float(mvn.cdf(hi, lower_limit=lo))


def truncated_normal_mean(mu: Array, cov: Array, lo: Array, hi: Array, seed: int = 0) -> tuple[Array, float]:
    """Mean of N(mu, cov) truncated to the box [lo, hi], and the box's probability (Tallis 1961)."""
    a, b = lo - mu, hi - mu
    d = mu.size
    P = _box_prob(a, b, cov, seed)
    F = np.zeros((d, 2))
    for k in range(d):
        s2 = cov[k, k]
        others = np.delete(np.arange(d), k)
        c = cov[others, k] / s2
        cond = cov[np.ix_(others, others)] - np.outer(cov[others, k], cov[k, others]) / s2
        for j, x in enumerate((a[k], b[k])):
            if not np.isfinite(x):
                continue
            dens = stats.norm.pdf(x, scale=np.sqrt(s2))
            F[k, j] = dens * _box_prob(a[others] - c * x, b[others] - c * x, cond, seed)
    return mu + cov @ (F[:, 0] - F[:, 1]) / P, P


@dataclass(frozen=True, repr=False, eq=False)
class PretestPowerResult(CheckResult):
    """Power and bias of the pre-test at each hypothesised slope; detectable slopes."""

    check_kind: ClassVar[str] = "pretest_power"
    save_plots: ClassVar[bool] = True

    slopes: Array
    power: Array  # probability that some pre-period coefficient is significant
    bias: Array  # (k, T_post) unconditional bias delta_post
    conditional_bias: Array  # (k, T_post) bias given that the pre-test passes
    slope_for_power: dict[float, float]
    post_labels: Array
    alpha: float
    l_vec: Array
    sigma_pre: Array = field(repr=False, default_factory=lambda: np.empty((0, 0)))
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def curve(self, points: int = 41) -> pd.DataFrame:
        """Power against the slope, from 0 to 1.5 x the largest slope of ``slope_for_power`` (or of
        ``slopes``), to 1e-5 (the precision of a plot)."""
        if points == 41 and "power_curve" in self.__dict__:
            return self.__dict__["power_curve"].copy()
        n_pre = self.sigma_pre.shape[0]
        t_pre = -np.arange(n_pre, 0, -1, dtype=float)
        crit = stats.norm.ppf(1 - self.alpha / 2) * np.sqrt(np.diag(self.sigma_pre))
        top = max([*self.slope_for_power.values(), *np.abs(self.slopes)], default=0.0) * 1.5
        grid = np.linspace(0.0, top if top > 0 else float(np.max(crit)), points)
        df = pd.DataFrame({"slope": grid, "power": [_power(s, t_pre, crit, self.sigma_pre, self.seed, 1e-5)
                                                    for s in grid]})
        if points == 41:  # cached (the dataclass is frozen: written to the instance dict directly)
            self.__dict__["power_curve"] = df.copy()
        return df

    def frames(self) -> dict[str, pd.DataFrame]:
        return {"table": self.to_frame(), "curve": self.curve()}

    def facts(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "slope_for_power": {f"{p:g}": s for p, s in self.slope_for_power.items()}}

    def plot(self, *, backend: str = "bokeh") -> Any:
        """Power of the pre-test against the slope of a linear violation, the detectable slopes marked."""
        from dte_dask.plotting import plot_pretest_power

        return plot_pretest_power(self.curve(), self.slope_for_power, backend=backend)  # type: ignore[arg-type]

    def to_frame(self) -> pd.DataFrame:
        """One row per (slope, post-period): power, pass probability, bias, conditional bias."""
        k, T = self.bias.shape
        return pd.DataFrame({
            "slope": np.repeat(self.slopes, T), "power": np.repeat(self.power, T),
            "pass_prob": np.repeat(1 - self.power, T), "event_time": np.tile(self.post_labels, k),
            "bias": self.bias.ravel(), "conditional_bias": self.conditional_bias.ravel()})

    def summary(self) -> str:
        lines = [f"Pre-test power against linear violations (Roth 2022), alpha = {self.alpha:g}"]
        lines += [f"  slope detected with {round(100 * p)}% power: {s:.4g}" for p, s in self.slope_for_power.items()]
        for s, pw, b, cb in zip(self.slopes, self.power, self.bias @ self.l_vec, self.conditional_bias @ self.l_vec):
            lines.append(f"  slope {s:.4g}: power {pw:.3f}; bias of l'beta_post {b:.4g}, given the pre-test passes {cb:.4g}")
        return "\n".join(lines)


def _power(slope: float, t_pre: Array, crit: Array, S_pre: Array, seed: int, eps: float = 1e-6) -> float:
    mu = slope * t_pre
    return 1.0 - _box_prob(-crit - mu, crit - mu, S_pre, seed, eps)


def slope_for_power(target: float, t_pre: Array, S_pre: Array, alpha: float = 0.05, seed: int = 0) -> float:
    """Smallest positive slope of a linear violation that the pre-test detects with probability ``target``."""
    crit = stats.norm.ppf(1 - alpha / 2) * np.sqrt(np.diag(S_pre))
    f = lambda s: _power(s, t_pre, crit, S_pre, seed) - target
    if f(0.0) >= 0:
        return 0.0
    hi = float(np.max(crit))
    while f(hi) < 0:
        hi *= 2
    return float(optimize.brentq(f, 0.0, hi, xtol=1e-10 * hi, rtol=1e-10))


def pretest_power(result: Any = None, *, slope: Any = None, powers: tuple[float, ...] = (0.5, 0.8),
                  alpha: float = 0.05, l_vec: Any = None, betahat: Any = None, sigma: Any = None,
                  num_pre_periods: int | None = None, num_post_periods: int | None = None,
                  seed: int = 0) -> PretestPowerResult:
    """Power of the "no significant pre-period coefficient" pre-test and the bias it leaves.

    Parameters
    ----------
    result : an event-study result (as :func:`honest_did`), or raw ``betahat``/``sigma``/
        ``num_pre_periods``/``num_post_periods`` (only ``sigma`` and the counts are used).
    slope : hypothesised slope(s) of the linear violation, per period. Default: the slopes
        detected with probability ``powers``.
    powers : target powers for :attr:`PretestPowerResult.slope_for_power`.
    l_vec : weights for the summary's ``l' beta_post`` (default: the average post-period effect).
    """
    from dte_dask.sensitivity.honest import result_axis_names
    from dte_dask.sensitivity.inputs import event_study_inputs, validate_inputs

    labels = None
    if result is not None:
        betahat, sigma, labels, num_pre_periods, num_post_periods = event_study_inputs(result)
    elif betahat is None and sigma is not None and num_pre_periods is not None and num_post_periods is not None:
        betahat = np.zeros(int(num_pre_periods) + int(num_post_periods))
    _, S, n_pre, n_post = validate_inputs(betahat, sigma, num_pre_periods, num_post_periods)
    if not 0 < alpha < 1:
        raise SpecError(f"alpha={alpha!r} must be in (0, 1)")
    if any(not 0 < p < 1 for p in powers):
        raise SpecError(f"powers={powers!r} must lie in (0, 1)")
    t_pre = -np.arange(n_pre, 0, -1, dtype=float)
    t_post = np.arange(1, n_post + 1, dtype=float)
    S_pre, S_po = S[:n_pre, :n_pre], S[n_pre:, :n_pre]
    found = {float(p): slope_for_power(p, t_pre, S_pre, alpha, seed) for p in powers}
    slopes = np.array(list(found.values()) if slope is None else np.atleast_1d(np.asarray(slope, dtype=float)))
    if not np.all(np.isfinite(slopes)):
        raise SpecError(f"slope must be finite; got {slopes.tolist()}")
    lv = np.full(n_post, 1.0 / n_post) if l_vec is None else np.asarray(l_vec, dtype=float).ravel()
    if lv.size != n_post:
        raise SpecError(f"l_vec must have {n_post} weights (one per post-period)")
    crit = stats.norm.ppf(1 - alpha / 2) * np.sqrt(np.diag(S_pre))
    reg = S_po @ np.linalg.inv(S_pre)
    power, bias, cbias = [], [], []
    for s in slopes:
        mu = s * t_pre
        m, P = truncated_normal_mean(mu, S_pre, -crit, crit, seed)
        power.append(1.0 - P)
        bias.append(s * t_post)
        cbias.append(s * t_post + reg @ (m - mu))
    post_labels = np.asarray(labels)[n_pre:] if labels is not None else np.arange(n_post)
    return PretestPowerResult(slopes=slopes, power=np.array(power), bias=np.array(bias),
                              conditional_bias=np.array(cbias), slope_for_power=found, post_labels=post_labels,
                              alpha=float(alpha), l_vec=lv, sigma_pre=S_pre, seed=seed,
                              options={} if result is None else result_axis_names(result))
