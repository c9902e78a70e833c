"""From bootstrap draws to standard errors, sup-t critical values and Wald tests (R ``did`` §1.5)."""
from __future__ import annotations

import warnings

import numpy as np

from dte_dask.exceptions import DteDaskWarning
from dte_dask.inference.dist import chi2_sf, norm_ppf, pointwise_z

_ZDIFF = norm_ppf(0.75) - norm_ppf(0.25)
_TINY = np.sqrt(np.finfo(float).eps) * 10


def boot_se(draws: np.ndarray, scale: float) -> np.ndarray:
    """IQR-based bootstrap SEs (type-1 quantiles) of draws on the estimate's scale.

    ``scale`` = sqrt(number of clusters or units): R compares the sqrt(n)-scaled sigma with
    sqrt(eps)*10 and reports NaN below it.
    """
    q75 = np.quantile(draws, 0.75, axis=0, method="inverted_cdf")
    q25 = np.quantile(draws, 0.25, axis=0, method="inverted_cdf")
    se = (q75 - q25) / _ZDIFF
    return np.where(se * scale <= _TINY, np.nan, se)


def sup_t_crit(draws: np.ndarray, se: np.ndarray, alpha: float) -> float:
    """(1 - alpha) type-1 quantile of max_k |draw_k / se_k| over columns with a finite SE."""
    keep = np.isfinite(se) & (se > 0)
    if not keep.any():
        return float("nan")
    t = np.max(np.abs(draws[:, keep] / se[keep]), axis=1)
    return float(np.quantile(t, 1.0 - alpha, method="inverted_cdf"))


def band_crit(draws: np.ndarray | None, se: np.ndarray, alpha: float, uniform: bool, *, fallback: bool) -> float:
    """Critical value for a set of estimates: sup-t if ``uniform`` and draws exist, else normal.

    With ``fallback`` (aggregations, as ``aggte``) a sup-t value that is NaN, infinite or below the
    pointwise normal quantile is replaced by the latter. Values >= 7 trigger R's warning.
    """
    z = pointwise_z(alpha)
    if draws is None or not uniform:
        return z
    crit = sup_t_crit(draws, se, alpha)
    if fallback and (not np.isfinite(crit) or crit < z):
        return z
    if np.isfinite(crit) and crit >= 7:
        warnings.warn("Simultaneous critical value is arguably 'too large' to be reliable. This usually "
                      "happens when the number of observations per group is small and/or there is not "
                      "much variation in outcomes.", DteDaskWarning, stacklevel=3)
    return crit


def wald_test(est: np.ndarray, cov: np.ndarray) -> tuple[float, int, float]:
    """Wald statistic est' cov^-1 est, its degrees of freedom and chi-square p-value."""
    keep = np.isfinite(est)
    est, cov = est[keep], cov[np.ix_(keep, keep)]
    q = int(est.size)
    if q == 0:
        return float("nan"), 0, float("nan")
    if np.linalg.matrix_rank(cov) < q:
        warnings.warn("Not returning the pre-test Wald statistic: its covariance matrix is singular.",
                      DteDaskWarning, stacklevel=3)
        return float("nan"), q, float("nan")
    w = float(est @ np.linalg.solve(cov, est))
    return w, q, float(chi2_sf(w, q))
