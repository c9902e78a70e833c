"""The driver side of the absorbed-effects least squares of :mod:`dte_dask.core.within`: the guarded
solve of the reduced normal equations (collinear columns found and dropped, or named in an error)
and the CRV1 covariance. Pure numpy/scipy; (m x m)-sized inputs only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg

from dte_dask.core.errors import EstimationError

COLLINEAR_TOL = 1e-9  # relative residual variance below which a column counts as collinear


@dataclass(frozen=True)
class Solution:
    """Coefficients of the kept columns (zeros elsewhere) and the inverse Gram of the kept block."""

    beta: np.ndarray  # (m,)
    kept: np.ndarray  # (m,) bool
    inv: np.ndarray  # (m, m) (X~'WX~)^-1 on kept columns, zero elsewhere


def collinear_columns(A: np.ndarray, candidates: np.ndarray, raw: np.ndarray, tol: float = COLLINEAR_TOL) -> np.ndarray:
    """Columns of ``A`` (the demeaned Gram matrix) that are absorbed by the unit effects or are
    linear combinations of earlier kept columns.

    Notes
    -----
    Column ``j`` is absorbed when its within-unit variation :math:`A_{jj}` is at most ``tol`` times
    its raw second moment ``raw[j]`` (rounding leaves a demeaned time-invariant covariate tiny,
    not zero). Otherwise a Cholesky factorisation taken column by column drops it when its
    residual variance after projection on the kept earlier columns, :math:`A_{jj} - v'v` with
    :math:`L v = A_{K j}`, is at most ``tol`` times :math:`A_{jj}`. Only ``candidates`` (columns
    with observations) are considered.
    """
    m = A.shape[0]
    dropped = np.zeros(m, dtype=bool)
    kept: list[int] = []
    L = np.zeros((m, m))  # the factor of the kept columns, grown in place
    for j in np.flatnonzero(candidates):
        d = A[j, j]
        if not d > tol * raw[j]:
            dropped[j] = True
            continue
        k = len(kept)
        v = linalg.solve_triangular(L[:k, :k], A[kept, j], lower=True) if kept else np.zeros(0)
        r = d - v @ v
        if r <= tol * d:
            dropped[j] = True
            continue
        L[k, :k] = v
        L[k, k] = np.sqrt(r)
        kept.append(j)
    return dropped


def solve_dropping_collinear(A: np.ndarray, b: np.ndarray, raw: np.ndarray, names: list[str], nuisance: np.ndarray,
                             present: np.ndarray, what: str = "the unit and time effects") -> Solution:
    """Solve the normal equations; drop collinear nuisance columns, raise on any other.

    Not :func:`dte_dask.core.regression.guarded_solve` (the one guarded solve: an equilibrated
    positive semi-definite system, None when singular, for the nuisance fits of ATT(g,t) cells):
    here the design may be rank-deficient by construction (absorbed fixed-effect dummies), so the
    collinear columns are found by a pivoted Cholesky, nuisance ones dropped and any other reported.

    Parameters
    ----------
    A, b : normal equations (m, m), (m,)
    raw : (m,) raw second moments of the columns (see :func:`collinear_columns`)
    names : column names used in the error message
    nuisance : (m,) bool, fixed-effect dummies (dropped silently when collinear)
    present : (m,) bool, columns with at least one observation (absent ones are left out)

    Raises
    ------
    EstimationError
        Naming every covariate or interest column that is collinear with the others.
    """
    dropped = collinear_columns(A, present, raw)
    bad = dropped & ~nuisance
    if bad.any():
        cols = ", ".join(names[j] for j in np.flatnonzero(bad))
        raise EstimationError(
            f"rank-deficient design: {cols} {'is' if bad.sum() == 1 else 'are'} collinear with {what} "
            "and the other regressors (a covariate constant within units, an event time that only "
            "one cohort reaches without never-treated units, ...); bin the endpoints with window=, "
            "drop the covariate or add never-treated units"
        )
    kept = present & ~dropped
    k = np.flatnonzero(kept)
    m = A.shape[0]
    beta, inv = np.zeros(m), np.zeros((m, m))
    if k.size:
        c = linalg.cho_factor(A[np.ix_(k, k)], lower=True)
        beta[k] = linalg.cho_solve(c, b[k])
        inv[np.ix_(k, k)] = linalg.cho_solve(c, np.eye(k.size))
    return Solution(beta=beta, kept=kept, inv=inv)


def crv1(inv: np.ndarray, meat: np.ndarray, n_obs: float, df_k: int, n_clusters: int) -> tuple[np.ndarray, float]:
    """Cluster-robust covariance with pyfixest's default small-sample factor.

    Notes
    -----
    :math:`V = c \\, A^{-1} \\big(\\sum_g s_g s_g'\\big) A^{-1}` with
    :math:`c = \\frac{N-1}{N-k}\\,\\frac{G}{G-1}` (pyfixest ``ssc(k_adj=True, k_fixef="nonnested",
    G_adj=True, G_df="min")``, fixest's default for clustered SEs): ``k`` counts the estimated
    coefficients plus the fixed-effect levels *not* nested in the clusters, plus one for the nested
    unit effects. With unit (or unit x stack) effects nested in the clusters and time (or time x
    stack) effects, :math:`k = k_{\\beta} + \\#\\text{time levels}`.
    """
    if n_clusters < 2:
        raise EstimationError(f"clustered standard errors need at least 2 clusters, got {n_clusters}")
    c = (n_obs - 1.0) / (n_obs - df_k) * n_clusters / (n_clusters - 1.0)
    V = c * (inv @ meat @ inv)
    return (V + V.T) / 2.0, float(c)
