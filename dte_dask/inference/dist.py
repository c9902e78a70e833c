"""Normal and Student t quantiles and chi-square tail probabilities from ``scipy.special``.

These are the functions ``scipy.stats`` itself evaluates for ``norm.ppf``, ``t.ppf`` and ``chi2.sf``
(``ndtri``, ``stdtrit``, ``chdtrc``), with its handling
of the edges (degrees of freedom that are not positive, probabilities 0 and 1, statistics below
zero), so the values are the same bits. Importing ``scipy.stats`` costs a process about 0.35 s
(its distributions are built at import), which every job, CLI call and service worker paid for
three functions; the estimators, results and checks on a job's path import this module instead.
"""
from __future__ import annotations

import numpy as np
from scipy import special

__all__ = ["chi2_sf", "norm_ppf", "pointwise_z", "t_ppf"]


def norm_ppf(q):
    """``scipy.stats.norm.ppf(q)``: the standard normal quantile (NaN outside [0, 1])."""
    return special.ndtri(q)


def pointwise_z(alpha: float) -> float:
    """The normal quantile of a pointwise ``1 - alpha`` interval."""
    return float(norm_ppf(1.0 - alpha / 2.0))


def t_ppf(q, df):
    """``scipy.stats.t.ppf(q, df)``: NaN unless ``df > 0`` and ``0 <= q <= 1``; -inf at 0, inf at 1."""
    q, df = np.asarray(q, dtype=float), np.asarray(df, dtype=float)
    with np.errstate(invalid="ignore"):
        inner = special.stdtrit(np.where(df > 0, df, 1.0), np.clip(q, 0.0, 1.0))
        out = np.where(q == 0, -np.inf, np.where(q == 1, np.inf, inner))
        return np.where((df > 0) & (q >= 0) & (q <= 1), out, np.nan)[()]


def chi2_sf(x, df):
    """``scipy.stats.chi2.sf(x, df)``: NaN unless ``df > 0``; 1 below zero, 0 at infinity."""
    x, df = np.asarray(x, dtype=float), np.asarray(df, dtype=float)
    with np.errstate(invalid="ignore"):
        inner = special.chdtrc(np.where(df > 0, df, 1.0), np.maximum(x, 0.0))
        return np.where(df > 0, np.where(x < 0, 1.0, np.where(x == np.inf, 0.0, inner)), np.nan)[()]
