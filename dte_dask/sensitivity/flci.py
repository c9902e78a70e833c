"""Fixed-length confidence intervals (FLCI) under smoothness restrictions Delta^SD(M).

Rambachan & Roth (2023, section 4.1), after Armstrong & Kolesar (2018) and Donoho (1994): among
affine estimators ``a + v' betahat`` with ``v = (v_pre, l)``, pick the one whose worst-case
confidence interval over :math:`\\Delta^{SD}(M)` is shortest.

Notes
-----
For :math:`v = (v_{pre}, l)` the bias of :math:`v'\\hat\\beta` for :math:`\\theta = l'\\tau` is
:math:`v'\\delta`. It is bounded over :math:`\\Delta^{SD}(M)` only if :math:`v` kills linear trends,
:math:`\\sum_t t\\, v_t = 0` (periods numbered with the reference period at 0). Writing
:math:`\\delta` through its slope at the reference period and its second differences
:math:`a_k`, :math:`|a_k| \\le M`,

.. math::
    \\bar b(v) = M \\Big( \\sum_{k \\ge 0} \\Big| \\sum_{t > k} (t-k)\\, l_t \\Big|
                 + \\sum_{j \\ge 1} \\Big| \\sum_{m > j} (m-j)\\, v_{-m} \\Big| \\Big),

and the interval :math:`v'\\hat\\beta \\pm h\\, cv_\\alpha(\\bar b / h)`, :math:`h = \\sqrt{v'\\Sigma v}`,
with :math:`cv_\\alpha(t)` the :math:`1-\\alpha` quantile of :math:`|N(t, 1)|`, covers :math:`\\theta`
with probability at least :math:`1-\\alpha` for every :math:`\\delta \\in \\Delta^{SD}(M)`. The
half-length :math:`h\\, cv_\\alpha(\\bar b/h)` is a perspective of the convex, increasing
:math:`cv_\\alpha` composed with the convex :math:`(\\bar b, h)`, hence convex in :math:`v_{pre}`; we
minimise it directly (SLSQP on :math:`(v_{pre}, u)` with :math:`u_j \\ge |c_j(v_{pre})|`) from the
minimum-variance unbiased-under-linear-trends start, rather than HonestDiD's search over :math:`h`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

Array = np.ndarray


@dataclass(frozen=True)
class FLCI:
    """The optimal affine estimator ``v' betahat`` and its half-length."""

    lb: float
    ub: float
    v: Array  # (T_pre + T_post,), the post part is l
    half_length: float
    max_bias: float
    sd: float


def folded_normal_quantile(p: float, t: float) -> float:
    """``q`` with ``P(|N(t, 1)| <= q) = p``."""
    t = abs(float(t))
    if t == 0.0:
        return float(stats.norm.ppf(0.5 + p / 2.0))
    f = lambda q: stats.norm.cdf(q - t) - stats.norm.cdf(-q - t) - p
    return float(optimize.brentq(f, 0.0, t + stats.norm.ppf(p) + 10.0, xtol=1e-14, rtol=4 * np.finfo(float).eps))


def _cv_derivative(q: float, t: float) -> float:
    """d cv_alpha(t) / dt by implicit differentiation of Phi(q - t) - Phi(-q - t) = p."""
    a, b = stats.norm.pdf(q - t), stats.norm.pdf(-q - t)
    return float((a - b) / (a + b))


def _bias_maps(n_pre: int, n_post: int, l_vec: Array) -> tuple[float, Array, Array, float]:
    """Post constant C, the (n_pre - 1, n_pre) map v_pre -> c_j, the trend row, and the trend target."""
    t_post = np.arange(1, n_post + 1, dtype=float)
    C = sum(abs(float(((t_post - k) * l_vec)[t_post > k].sum())) for k in range(n_post))
    m = np.arange(n_pre, 0, -1, dtype=float)  # v_pre[i] is the coefficient of period -m[i]
    P = np.array([np.where(m > j, m - j, 0.0) for j in range(1, n_pre)]).reshape(n_pre - 1, n_pre)
    return C, P, -m, -float(t_post @ l_vec)  # sum_i (-m_i) v_i = -sum_t t l_t


def max_bias(v_pre: Array, l_vec: Array, M: float) -> float:
    """Worst-case |bias| of ``v' betahat`` over Delta^SD(M) (infinite unless v kills linear trends)."""
    n_pre, n_post = v_pre.size, l_vec.size
    C, P, trend, target = _bias_maps(n_pre, n_post, l_vec)
    if abs(trend @ v_pre - target) > 1e-8 * max(1.0, abs(target)) and M > 0:
        return np.inf
    return float(M * (C + np.abs(P @ v_pre).sum()))


def _min_variance_start(sigma: Array, n_pre: int, l_vec: Array, trend: Array, target: float) -> Array:
    """argmin v' Sigma v over v_pre with trend' v_pre = target (closed form, KKT)."""
    S_pp, S_pq = sigma[:n_pre, :n_pre], sigma[:n_pre, n_pre:]
    K = np.block([[2 * S_pp, trend[:, None]], [trend[None, :], np.zeros((1, 1))]])
    rhs = np.concatenate([-2 * S_pq @ l_vec, [target]])
    return np.linalg.lstsq(K, rhs, rcond=None)[0][:n_pre]


def compute_flci(betahat: Array, sigma: Array, n_pre: int, l_vec: Array, M: float, alpha: float = 0.05) -> FLCI:
    """Optimal FLCI for ``theta = l' tau_post`` under Delta^SD(M)."""
    n_post = l_vec.size
    C, P, trend, target = _bias_maps(n_pre, n_post, l_vec)
    v0 = _min_variance_start(sigma, n_pre, l_vec, trend, target)
    S_pp, S_pq = sigma[:n_pre, :n_pre], sigma[:n_pre, n_pre:]
    s_qq = float(l_vec @ sigma[n_pre:, n_pre:] @ l_vec)

    def var(vp: Array) -> float:
        return float(vp @ S_pp @ vp + 2 * vp @ S_pq @ l_vec + s_qq)

    def half(x: Array) -> float:
        vp, u = x[:n_pre], x[n_pre:]
        h = np.sqrt(max(var(vp), 1e-300))
        return h * folded_normal_quantile(1 - alpha, M * (C + u.sum()) / h)

    def grad(x: Array) -> Array:
        vp, u = x[:n_pre], x[n_pre:]
        h = np.sqrt(max(var(vp), 1e-300))
        t = M * (C + u.sum()) / h
        q = folded_normal_quantile(1 - alpha, t)
        dq = _cv_derivative(q, t)
        dh = (S_pp @ vp + S_pq @ l_vec) / h
        return np.concatenate([(q - t * dq) * dh, np.full(u.size, M * dq)])

    if M == 0 or n_pre == 1:
        vp = v0
    else:
        x0 = np.concatenate([v0, np.abs(P @ v0)])
        nu = n_pre - 1
        cons = [
            {"type": "eq", "fun": lambda x: np.array([trend @ x[:n_pre] - target]),
             "jac": lambda x: np.concatenate([trend, np.zeros(nu)])[None]},
            {"type": "ineq", "fun": lambda x: np.concatenate([x[n_pre:] - P @ x[:n_pre], x[n_pre:] + P @ x[:n_pre]]),
             "jac": lambda x: np.block([[-P, np.eye(nu)], [P, np.eye(nu)]])},
        ]
        res = optimize.minimize(half, x0, jac=grad, constraints=cons, method="SLSQP",
                                options={"ftol": 1e-15, "maxiter": 2000})
        vp = res.x[:n_pre] if np.isfinite(res.fun) and res.fun <= half(x0) else v0
    bias = M * (C + np.abs(P @ vp).sum())
    h = np.sqrt(var(vp))
    hl = h * folded_normal_quantile(1 - alpha, bias / h)
    v = np.concatenate([vp, l_vec])
    est = float(v @ betahat)
    return FLCI(lb=est - hl, ub=est + hl, v=v, half_length=float(hl), max_bias=float(bias), sd=float(h))
