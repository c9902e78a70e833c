"""Conditional and hybrid moment-inequality tests with nuisance parameters (Andrews, Roth & Pakes 2023).

Used by Rambachan & Roth (2023, section 3.2) to test ``H0: theta = l' tau_post = theta0`` when
``delta`` lies in a polyhedron ``{A delta <= d}``: with ``Gamma`` a basis of the post-period space
whose first direction is ``l``, the moments are

    ``E[Y(theta0) - X tau_tilde] <= 0``,  ``Y(theta0) = A betahat - d - a_1 theta0``,

where ``a_1 = A_post l / (l'l)`` and the columns of ``X`` span ``A_post {tau : l'tau = 0}`` (the
nuisance directions; the test does not depend on the basis chosen).

Notes
-----
The statistic is the LP value :math:`\\hat\\eta = \\min_{\\eta, \\tilde\\tau} \\eta` s.t.
:math:`Y - X\\tilde\\tau \\le \\eta\\, \\sigma_Y` (:math:`\\sigma_Y` the moment standard deviations);
by duality :math:`\\hat\\eta = \\max_{\\gamma \\ge 0,\\ \\gamma'\\sigma_Y = 1,\\ \\gamma' X = 0}
\\gamma' Y`, attained at a vertex :math:`\\hat\\gamma`. Conditional on
:math:`S = Y - b\\,\\hat\\gamma'Y`, :math:`b = \\Sigma_Y\\hat\\gamma / \\hat\\gamma'\\Sigma_Y\\hat\\gamma`,
:math:`\\hat\\eta` is normal truncated to the interval :math:`[v^{lo}, v^{up}]` of values ``c`` for which
:math:`\\hat\\gamma` stays optimal at :math:`S + b c`, i.e. where the convex piecewise-linear
:math:`g(c) = \\max_\\gamma \\gamma'(S + b c)` equals ``c``. We find the interval's ends exactly by
Newton steps on ``g`` (each step lands on a new facet), with bisection as a fallback.

* ``"ARP"`` (conditional): reject when :math:`\\hat\\eta/\\sigma_\\gamma` exceeds the
  :math:`1-\\alpha` quantile of the truncated normal (floored at 0).
* ``"LF"`` (conditional-least-favourable hybrid): first reject when :math:`\\hat\\eta` exceeds the
  :math:`1-\\kappa` quantile of its least-favourable null distribution (simulated, ``lf_sims`` draws
  from ``seed``), then run the conditional test at size :math:`(\\alpha-\\kappa)/(1-\\kappa)` with
  :math:`v^{up}` capped at that critical value.
* ``"FLCI"`` (conditional-FLCI hybrid): first reject when ``theta0`` is outside the level-kappa
  FLCI ``|v'betahat - theta0| <= h``, then the conditional test at the modified size, truncated
  also by the first-stage event.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats
from scipy.optimize import linprog

Array = np.ndarray
_TOL = 1e-9


@dataclass(frozen=True)
class Moments:
    """The moment inequalities for one polyhedron and parameter ``l``, on the rows used by the test."""

    y0: Array  # A betahat - d (rows_for_test)
    a1: Array  # theta direction
    X: Array  # nuisance directions (possibly zero columns)
    sigma_y: Array
    sd: Array
    A: Array  # the rows' A (for the FLCI hybrid's covariance with v' betahat)
    V: Array | None = None  # vertices of the dual polytope, when enumerated (see dual_vertices)


def nuisance_basis(l_vec: Array) -> tuple[Array, Array]:
    """(a, N): ``tau = a theta + N tau_tilde`` spans post-period space with ``l'a = 1``, ``l'N = 0``."""
    a = l_vec / float(l_vec @ l_vec)
    if l_vec.size == 1:
        return a, np.zeros((1, 0))
    _, _, vt = np.linalg.svd(l_vec[None, :])
    return a, vt[1:].T


def build_moments(betahat: Array, sigma: Array, A: Array, d: Array, n_pre: int, l_vec: Array,
                  rows: Array | None = None) -> Moments:
    A_use, d_use = (A, d) if rows is None else (A[rows], d[rows])
    a, N = nuisance_basis(l_vec)
    A_post = A_use[:, n_pre:]
    sigma_y = A_use @ sigma @ A_use.T
    sd = np.sqrt(np.maximum(np.diag(sigma_y), 0.0))
    return Moments(y0=A_use @ betahat - d_use, a1=A_post @ a, X=A_post @ N, sigma_y=sigma_y, sd=sd, A=A_use)


def post_period_rows(A: Array, n_pre: int) -> Array:
    """Rows of ``A`` that involve a post-period coefficient (HonestDiD's ``postPeriodMomentsOnly``)."""
    return np.flatnonzero(np.abs(A[:, n_pre:]).sum(axis=1) > 0)


_MAX_SUBSETS = 200_000


def dual_vertices(m: Moments) -> Array | None:
    """All vertices of the dual polytope {gamma >= 0, gamma' sd = 1, gamma' X = 0}, one per row.

    The polytope is bounded (sd > 0), so the LP value max_gamma gamma'y is the largest of V y.
    Enumerated from the bases (subsets of k + 1 rows); None when there are too many subsets, and
    the caller falls back to linear programs.
    """
    from itertools import combinations
    from math import comb

    c = float(m.sd.max())
    W = np.column_stack([m.sd / c, m.X / max(float(np.abs(m.X).max(initial=0.0)), 1e-300)])
    n, k1 = W.shape
    if comb(n, k1) > _MAX_SUBSETS:
        return None
    subsets = np.array(list(combinations(range(n), k1)), dtype=np.intp)
    WB = W[subsets].transpose(0, 2, 1)  # (S, k1, k1): W_B'
    det = np.linalg.det(WB)
    ok = np.abs(det) > 1e-10
    e1 = np.zeros(k1)
    e1[0] = 1.0
    g = np.linalg.solve(WB[ok], np.broadcast_to(e1, (int(ok.sum()), k1))[..., None])[..., 0]
    feasible = np.all(g >= -1e-10 * np.abs(g).max(axis=1, keepdims=True), axis=1)
    V = np.zeros((int(feasible.sum()), n))
    np.put_along_axis(V, subsets[ok][feasible], np.maximum(g[feasible], 0.0) / c, axis=1)
    if V.shape[0] == 0:
        return None
    _, first = np.unique(np.round(V * np.asarray(m.sd)[None, :], 9), axis=0, return_index=True)
    return V[np.sort(first)]


def with_vertices(m: Moments) -> Moments:
    """``m`` with its dual vertices attached (identity / sd without nuisance parameters)."""
    V = np.diag(1.0 / m.sd) if m.X.shape[1] == 0 else dual_vertices(m)
    return replace(m, V=V)


def statistic(m: Moments, y: Array) -> tuple[float, Array] | None:
    """eta_hat = max over the dual polytope of gamma'y, and a maximising vertex."""
    if m.V is not None:
        vals = m.V @ y
        j = int(np.argmax(vals))
        return float(vals[j]), m.V[j]
    return _primal(y, m.X, m.sd)


def _primal(y: Array, X: Array, sd: Array) -> tuple[float, Array] | None:
    """eta_hat and the dual vertex gamma_hat of min eta s.t. y - X t <= eta sd."""
    if X.shape[1] == 0:
        r = y / sd
        j = int(np.argmax(r))
        g = np.zeros(y.size)
        g[j] = 1.0 / sd[j]
        return float(r[j]), g
    k = X.shape[1]
    res = linprog(np.r_[1.0, np.zeros(k)], A_ub=-np.column_stack([sd, X]), b_ub=-y,
                  bounds=[(None, None)] * (k + 1), method="highs-ds")
    if res.status != 0:
        return None
    return float(res.x[0]), np.maximum(-res.ineqlin.marginals, 0.0)


def _g(c: float, s: Array, b: Array, W: Array) -> tuple[float, Array | None]:
    """g(c) = max gamma'(s + b c) over gamma >= 0, W'gamma = e1, and a maximiser (None: unbounded)."""
    e1 = np.zeros(W.shape[1])
    e1[0] = 1.0
    res = linprog(-(s + b * c), A_eq=W.T, b_eq=e1, bounds=[(0, None)] * s.size, method="highs")
    if res.status != 0:
        return np.inf, None
    return -float(res.fun), res.x


def _one_end(eta: float, s: Array, b: Array, W: Array, direction: float, scale: float) -> float:
    """End of {c : g(c) = c} beyond eta in ``direction`` (+1: v_up, -1: v_lo)."""
    tol = 1e-9 * max(1.0, abs(eta), scale)
    far = eta + direction * max(100.0, 1e4 * scale)
    val, gam = _g(far, s, b, W)
    if val - far <= tol:
        return direction * np.inf
    inside, c = eta, far  # g(inside) = inside, g(c) > c
    for _ in range(200):
        val, gam = _g(c, s, b, W)
        if val - c <= tol:
            inside = c
            break
        outside = c
        slope = float(gam @ b) if gam is not None else np.nan
        nxt = float(gam @ s) / (1.0 - slope) if gam is not None and abs(1.0 - slope) > 1e-14 else np.nan
        if not (np.isfinite(nxt) and min(inside, outside) <= nxt <= max(inside, outside)) or abs(nxt - outside) < tol:
            nxt = 0.5 * (inside + outside)
            if abs(outside - inside) < tol:
                return outside
        c = nxt
    return inside


def truncation(m: Moments, y: Array, eta: float, gamma: Array) -> tuple[float, float, float, Array]:
    """(v_lo, v_up, sigma_gamma, b) for the selected dual vertex."""
    var = float(gamma @ m.sigma_y @ gamma)
    b = m.sigma_y @ gamma / var
    s = y - b * float(gamma @ y)
    if m.V is not None:  # g(c) = max_v V(s + b c) <= c  <=>  V s + (V b - 1) c <= 0 for every vertex
        rhs, slope = m.V @ s, m.V @ b - 1.0
        ok = np.abs(slope) > _TOL
        ratio = -rhs[ok] / slope[ok]
        lo = np.max(ratio[slope[ok] < 0], initial=-np.inf)
        up = np.min(ratio[slope[ok] > 0], initial=np.inf)
        return float(min(lo, eta)), float(max(up, eta)), np.sqrt(var), b
    W = np.column_stack([m.sd, m.X])
    scale = np.sqrt(var)
    return _one_end(eta, s, b, W, -1.0, scale), _one_end(eta, s, b, W, 1.0, scale), np.sqrt(var), b


def truncnorm_quantile(p: float, lo: float, up: float) -> float:
    """Quantile of N(0, 1) truncated to [lo, up]."""
    plo, pup = stats.norm.cdf(lo), stats.norm.cdf(up)
    if pup - plo < 1e-300:
        return lo
    q = plo + p * (pup - plo)
    if q >= 1.0:  # far right tail: use survival functions
        slo, sup = stats.norm.sf(lo), stats.norm.sf(up)
        return float(stats.norm.isf(slo - p * (slo - sup)))
    return float(min(max(stats.norm.ppf(q), lo), up))


def lf_critical_value(m: Moments, kappa: float, sims: int = 1000, seed: int = 0) -> float:
    """1 - kappa quantile of eta under the least-favourable null (mean zero moments), simulated."""
    rng = np.random.default_rng(seed)
    xi = rng.multivariate_normal(np.zeros(m.sigma_y.shape[0]), m.sigma_y, size=sims)
    if m.V is not None:
        etas = np.max(xi @ m.V.T, axis=1)
    else:
        sols = (_primal(x, m.X, m.sd) for x in xi)
        etas = np.array([s[0] for s in sols if s is not None])
    return float(np.quantile(etas, 1.0 - kappa))


@dataclass(frozen=True)
class Hybrid:
    """Which test, and what its first stage needs."""

    kind: str  # "ARP" | "LF" | "FLCI"
    alpha: float
    kappa: float = 0.0
    lf_cv: float = np.inf
    flci_v: Array | None = None  # (T,) the level-kappa FLCI's v, against betahat
    flci_half: float = np.inf


def conditional_test(m: Moments, theta: float, hyb: Hybrid, betahat: Array | None = None,
                     sigma: Array | None = None) -> bool:
    """True when ``theta`` is rejected."""
    y = m.y0 - m.a1 * theta
    sol = statistic(m, y)
    if sol is None:
        return False
    eta, gamma = sol
    size = hyb.alpha
    if hyb.kind != "ARP":
        size = (hyb.alpha - hyb.kappa) / (1.0 - hyb.kappa)
    if hyb.kind == "LF" and eta > hyb.lf_cv:
        return True
    if hyb.kind == "FLCI":
        est = float(hyb.flci_v @ betahat)
        if abs(est - theta) > hyb.flci_half:
            return True
    var = float(gamma @ m.sigma_y @ gamma)
    if var <= np.finfo(float).eps:
        return eta > 0
    vlo, vup, sg, _ = truncation(m, y, eta, gamma)
    if hyb.kind == "LF":
        vup = min(vup, hyb.lf_cv)
    elif hyb.kind == "FLCI":  # first stage accepted: |r + k c - theta| <= h with c = gamma'Y
        gb = m.A.T @ gamma
        k = float(hyb.flci_v @ sigma @ gb) / float(gb @ sigma @ gb)
        r = float(hyb.flci_v @ betahat) - k * eta
        if abs(k) > _TOL:
            ends = sorted(((theta - hyb.flci_half - r) / k, (theta + hyb.flci_half - r) / k))
            vlo, vup = max(vlo, ends[0]), min(vup, ends[1])
    z = eta / sg
    zlo, zup = vlo / sg, vup / sg
    if not (zlo - 1e-9 <= z <= zup + 1e-9):
        return False
    cv = max(0.0, truncnorm_quantile(1.0 - size, zlo, zup))
    return z > cv


def accept_interval(test: Callable[[int], bool], n: int, start: int) -> tuple[int, int] | None:
    """First and last accepted grid indices, by bisection from an accepted seed (interval assumed).

    ``test(i)`` is True when grid point ``i`` is accepted. The seed is searched outward from
    ``start``; None when no grid point is accepted.
    """
    seed = None
    for off in range(n):
        for i in (start - off, start + off) if off else (start,):
            if 0 <= i < n and test(i):
                seed = i
                break
        if seed is not None or (start - off < 0 and start + off >= n):
            break
    if seed is None:
        return None
    lo, hi = 0, seed
    if not test(0):
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if test(mid) else (mid, hi)
        first = hi
    else:
        first = 0
    lo, hi = seed, n - 1
    if not test(n - 1):
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if test(mid) else (lo, mid)
        last = lo
    else:
        last = n - 1
    return first, last
