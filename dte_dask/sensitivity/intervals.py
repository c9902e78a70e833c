"""Robust confidence sets for one restriction set and one M: FLCI or a test inverted on a grid.

Driver-side algebra on (betahat, Sigma) only. The grid conventions follow R ``HonestDiD`` so that
endpoints can be compared grid point for grid point:

* relative magnitudes (and the combined restriction): the identified set at ``betahat`` widened by
  ``20 sd(l' betahat_post)`` on each side;
* smoothness, conditional and C-LF: the identified set at ``beta = 0`` widened the same way;
* smoothness, C-F: the level-kappa FLCI (outside it the first stage rejects).

Each piece of a union (relative magnitudes: which pre-period difference is largest and its sign)
is inverted on the same grid and the accepted sets are united; the reported interval runs from
the first to the last accepted grid point. With the dual vertices enumerated (small problems,
see :func:`dte_dask.sensitivity.arp.dual_vertices`) every grid point is tested, as in R
``HonestDiD``; otherwise the ends are found by bisection from an accepted point, which assumes the
accepted set is an interval (as moderndid's port does).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dte_dask.sensitivity import arp
from dte_dask.sensitivity.flci import compute_flci
from dte_dask.sensitivity.restrictions import (
    Polyhedron,
    identified_set_union,
    pieces_for,
)

Array = np.ndarray


@dataclass(frozen=True)
class Interval:
    lb: float
    ub: float
    grid_lb: float = np.nan
    grid_ub: float = np.nan
    grid_points: int = 0
    open_end: bool = False  # accepted at an end of the grid: the true set may be wider

    @property
    def step(self) -> float:
        return (self.grid_ub - self.grid_lb) / (self.grid_points - 1) if self.grid_points > 1 else np.nan


@dataclass(frozen=True)
class Problem:
    """Everything that does not change with M."""

    betahat: Array
    sigma: Array
    n_pre: int
    l_vec: Array
    alpha: float
    restriction: str
    bias_direction: str | None = None
    monotonicity_direction: str | None = None
    grid_points: int = 1000
    grid_lb: float | None = None
    grid_ub: float | None = None
    lf_sims: int = 1000
    seed: int = 0
    pre_diffs: tuple[int, ...] | None = None  # relative magnitudes: restrict the max to these differences

    @property
    def n_post(self) -> int:
        return self.l_vec.size

    @property
    def sd_theta(self) -> float:
        S = self.sigma[self.n_pre:, self.n_pre:]
        return float(np.sqrt(self.l_vec @ S @ self.l_vec))

    def pieces(self, M: float) -> list[Polyhedron]:
        return pieces_for(self.restriction, self.n_pre, self.n_post, M, bias_direction=self.bias_direction,
                          monotonicity_direction=self.monotonicity_direction,
                          pre_diffs=None if self.pre_diffs is None else list(self.pre_diffs))


def flci_interval(p: Problem, M: float) -> Interval:
    f = compute_flci(p.betahat, p.sigma, p.n_pre, p.l_vec, M, p.alpha)
    return Interval(f.lb, f.ub)


def _default_grid(p: Problem, pieces: list[Polyhedron], method: str, M: float) -> tuple[float, float]:
    if method == "C-F":
        f = compute_flci(p.betahat, p.sigma, p.n_pre, p.l_vec, M, p.alpha / 10.0)
        return f.lb, f.ub
    beta = p.betahat if p.restriction != "smoothness" else np.zeros_like(p.betahat)
    lo, hi = identified_set_union(pieces, beta, p.l_vec, p.n_pre)
    return lo - 20.0 * p.sd_theta, hi + 20.0 * p.sd_theta


def _hybrid(p: Problem, m: arp.Moments, method: str, M: float) -> arp.Hybrid:
    kappa = p.alpha / 10.0
    if method == "Conditional":
        return arp.Hybrid("ARP", p.alpha)
    if method == "C-LF":
        return arp.Hybrid("LF", p.alpha, kappa, lf_cv=arp.lf_critical_value(m, kappa, p.lf_sims, p.seed))
    f = compute_flci(p.betahat, p.sigma, p.n_pre, p.l_vec, M, kappa)
    return arp.Hybrid("FLCI", p.alpha, kappa, flci_v=f.v, flci_half=f.half_length)


def grid_interval(p: Problem, M: float, method: str) -> Interval:
    """Invert the conditional / hybrid test over a grid of theta, piece by piece."""
    pieces = p.pieces(M)
    glo, ghi = _default_grid(p, pieces, method, M)
    glo = glo if p.grid_lb is None else p.grid_lb
    ghi = ghi if p.grid_ub is None else p.grid_ub
    grid = np.linspace(glo, ghi, p.grid_points)
    found = []
    for piece in pieces:
        # HonestDiD's postPeriodMomentsOnly: with several post-periods the test uses the moments that
        # involve them; with one, the relative-magnitude sets drop the pre-period-only moments
        # altogether (the smoothness set keeps them)
        post_only = p.n_post > 1 or p.restriction != "smoothness"
        rows = arp.post_period_rows(piece.A, p.n_pre) if post_only else None
        if rows is not None and rows.size == 0:
            continue
        m = arp.build_moments(p.betahat, p.sigma, piece.A, piece.d, p.n_pre, p.l_vec, rows)
        if np.any(m.sd <= 0):
            m = _drop_degenerate(m)
        m = arp.with_vertices(m)
        hyb = _hybrid(p, m, method, M)
        cache: dict[int, bool] = {}

        def accept(i: int, m: arp.Moments = m, hyb: arp.Hybrid = hyb, cache: dict = cache) -> bool:
            if i not in cache:
                cache[i] = not arp.conditional_test(m, float(grid[i]), hyb, p.betahat, p.sigma)
            return cache[i]

        if m.V is not None:  # cheap closed-form tests: scan the whole grid, as R HonestDiD does
            hits = np.flatnonzero([accept(i) for i in range(p.grid_points)])
            res = (int(hits[0]), int(hits[-1])) if hits.size else None
        else:  # linear programs: bisection from an accepted seed (assumes an interval)
            res = arp.accept_interval(accept, p.grid_points, p.grid_points // 2)
        if res is not None:
            found.append(res)
    if not found:
        return Interval(np.nan, np.nan, glo, ghi, p.grid_points)
    first, last = min(f[0] for f in found), max(f[1] for f in found)
    return Interval(float(grid[first]), float(grid[last]), glo, ghi, p.grid_points,
                    open_end=first == 0 or last == p.grid_points - 1)


def _drop_degenerate(m: arp.Moments) -> arp.Moments:
    """Moments with zero variance are constants; keep the informative ones (deterministic rows are
    checked by the caller's identified-set logic, not by the test)."""
    keep = m.sd > 0
    return arp.Moments(m.y0[keep], m.a1[keep], m.X[keep], m.sigma_y[np.ix_(keep, keep)], m.sd[keep], m.A[keep])


def robust_interval(p: Problem, M: float, method: str) -> Interval:
    if method == "FLCI":
        return flci_interval(p, M)
    return grid_interval(p, M, method)
