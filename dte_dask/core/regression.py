"""Small dense linear algebra shared by the kernels: guarded solves and logit pieces (numpy only)."""
from __future__ import annotations

import numpy as np

PS_CAP = 1.0 - 1e-6  # DRDID: ps.fit <- pmin(ps.fit, 1 - 1e-6)
TRIM_LEVEL = 0.995  # DRDID: controls with ps >= trim.level get zero weight
ILL_CONDITIONED = 1e10  # equilibrated condition number above which a solve may lose ~1e-6 relative


def expit(z: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow: ``1 / (1 + exp(-z))`` where ``z >= 0`` and
    ``exp(z) / (1 + exp(z))`` elsewhere. Both branches share ``e = exp(-|z|)``, so it is computed
    for every element at once (whole-array passes, no masked gathers and scatters)."""
    z = np.asarray(z, dtype=float)
    e = np.exp(-np.abs(z))
    num = np.where(z >= 0, 1.0, e)
    return np.divide(num, 1.0 + e, out=num)


def guarded_solve(a: np.ndarray, b: np.ndarray, check: bool = True) -> np.ndarray | None:
    """``solve(a, b)`` for a symmetric positive semi-definite ``a`` (a Gram or information matrix),
    or None when ``a`` is singular or badly conditioned.

    The system is equilibrated first (``a`` scaled to unit diagonal by ``S = sqrt(diag a)``, that is
    every column of the design divided by its root mean square: solve, transform back), and DRDID's
    ``rcond(XpX) < .Machine$double.eps`` check is applied to the equilibrated matrix, so neither the
    solution nor the verdict depends on the units of a covariate. A zero or non-finite diagonal
    (a column that is zero throughout) is singular. ``check=False`` skips the rcond check (for a
    matrix that already passed it).
    """
    if a.size == 0 or not np.all(np.isfinite(a)):
        return None
    d = np.diag(a)
    if not np.all(d > 0):
        return None
    s = np.sqrt(d)
    ae = a / s[:, None] / s[None, :]
    bs = b / (s[:, None] if np.ndim(b) == 2 else s)
    try:
        if check and 1.0 / np.linalg.cond(ae, 1) < np.finfo(float).eps:
            return None
        x = np.linalg.solve(ae, bs)
    except np.linalg.LinAlgError:
        return None
    return x / (s[:, None] if np.ndim(b) == 2 else s)


def equilibrated_cond(a: np.ndarray) -> float:
    """1-norm condition number of ``a`` scaled to unit diagonal (inf when singular or not finite).

    Solutions of the normal equations are accurate to about ``cond * eps`` relative; above
    :data:`ILL_CONDITIONED` the estimate is kept (as R keeps it) but reported.
    """
    if a.size == 0 or not np.all(np.isfinite(a)):
        return np.inf
    d = np.diag(a)
    if not np.all(d > 0):
        return np.inf
    s = np.sqrt(d)
    try:
        return float(np.linalg.cond(a / s[:, None] / s[None, :], 1))
    except np.linalg.LinAlgError:
        return np.inf


def with_intercept(x: np.ndarray) -> np.ndarray:
    """Prepend a column of ones (the design used by DRDID: ``int.cov``)."""
    return np.column_stack([np.ones(x.shape[0]), x])


def logit_grad_hess(X: np.ndarray, d: np.ndarray, w: np.ndarray, gamma: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Gradient, Hessian (information) and log-likelihood of a weighted logit at ``gamma``."""
    return logit_terms(X, d, w, gamma)[:3]


def logit_terms(X: np.ndarray, d: np.ndarray, w: np.ndarray, gamma: np.ndarray, gram=None):
    """:func:`logit_grad_hess` and the linear predictor and fitted probabilities it used.
    ``gram(X, v)``: forms ``(X * v[:, None]).T @ X`` (the caller's, e.g. in a reused buffer)."""
    z = np.dot(X, gamma)
    p = expit(z)
    grad = np.dot(X.T, w * (d - p))
    v = w * p * (1.0 - p)
    hess = np.dot((X * v[:, None]).T, X) if gram is None else gram(X, v)
    # log-likelihood, stable: d*z - log(1+exp(z))
    ll = float(np.sum(w * (d * z - np.logaddexp(0.0, z))))
    return grad, hess, ll, z, p
