"""Linear restrictions on the parallel-trends violation delta (Rambachan & Roth 2023).

Every restriction set here is a polyhedron ``{delta : A delta <= d}`` (or a finite union of them) in
the event-study coordinates used throughout :mod:`dte_dask.sensitivity`: ``delta`` stacks the
``T_pre`` pre-period violations (earliest first) and the ``T_post`` post-period ones; the reference
period, normalised to zero, sits between them and is not a coordinate (its column is dropped after
the differences are built on the full ``T_pre + 1 + T_post`` vector).

Notes
-----
* :math:`\\Delta^{SD}(M)`: :math:`|\\delta_{t+1} - 2\\delta_t + \\delta_{t-1}| \\le M` at every
  interior period, the reference period included.
* :math:`\\Delta^{RM}(\\bar M)`: :math:`|\\delta_{t+1}-\\delta_t| \\le \\bar M \\max_{s<0}
  |\\delta_{s+1}-\\delta_s|` for :math:`t \\ge 0`. It is the union over which pre-period first
  difference ``k`` attains the maximum and its sign; each piece ``(k, sign)`` is a polyhedron.
* :math:`\\Delta^{SDRM}(\\bar M)`: the same with second differences (post-period second differences,
  from the reference period on, bounded by :math:`\\bar M` times the largest pre-period one).
* Sign (``bias_direction``): :math:`\\delta_{post} \\ge 0` (positive) or :math:`\\le 0`.
* Monotonicity: :math:`\\delta_t` weakly increasing (or decreasing) over all periods, through the
  reference period's zero.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog

Array = np.ndarray


@dataclass(frozen=True)
class Polyhedron:
    """``{delta : A delta <= d}``; ``label`` names the piece of a union (e.g. ``"k=1,+"``)."""

    A: Array
    d: Array
    label: str = ""


def _drop_reference(full: Array, n_pre: int) -> Array:
    return np.delete(full, n_pre, axis=1)


def _nonzero_rows(A: Array, d: Array) -> tuple[Array, Array]:
    keep = np.abs(A).sum(axis=1) > 1e-12
    return A[keep], d[keep]


def first_differences(n_pre: int, n_post: int) -> Array:
    """(T, T+1) first differences delta_{r+1} - delta_r on the full vector (reference included)."""
    T = n_pre + n_post
    D = np.zeros((T, T + 1))
    idx = np.arange(T)
    D[idx, idx], D[idx, idx + 1] = -1.0, 1.0
    return D


def second_differences(n_pre: int, n_post: int) -> Array:
    """(T-1, T+1) second differences centred at each interior period of the full vector."""
    T = n_pre + n_post
    D = np.zeros((T - 1, T + 1))
    for r in range(T - 1):
        D[r, r:r + 3] = (1.0, -2.0, 1.0)
    return D


def delta_sd(n_pre: int, n_post: int, M: float) -> Polyhedron:
    """Smoothness: every second difference in ``[-M, M]``."""
    D = _drop_reference(second_differences(n_pre, n_post), n_pre)
    A = np.vstack([D, -D])
    return Polyhedron(A, np.full(A.shape[0], float(M)), "SD")


def delta_rm_pieces(n_pre: int, n_post: int, Mbar: float, pre_diffs: list[int] | None = None) -> list[Polyhedron]:
    """Relative magnitudes as a union of polyhedra, one per (max pre-period difference k, sign).

    ``k`` indexes the pre-period first differences on the full vector, ``0`` (earliest, between the
    first two pre-periods) to ``n_pre - 1`` (between the last pre-period and the reference period).
    """
    D = first_differences(n_pre, n_post)
    pieces = []
    for k in (range(n_pre) if pre_diffs is None else pre_diffs):
        for sign in (1.0, -1.0):
            bound = np.vstack([np.repeat(sign * D[k][None], n_pre, axis=0),
                               np.repeat(Mbar * sign * D[k][None], n_post, axis=0)])
            A = np.vstack([D - bound, -D - bound])
            A, d = _nonzero_rows(A, np.zeros(A.shape[0]))
            pieces.append(Polyhedron(_drop_reference(A, n_pre), d, f"k={k},{'+' if sign > 0 else '-'}"))
    return pieces


def delta_sdrm_pieces(n_pre: int, n_post: int, Mbar: float) -> list[Polyhedron]:
    """Second-difference relative magnitudes: pieces over (max pre-period second difference k, sign).

    Pre-period second differences are those centred at periods before the reference period (rows
    ``0 .. n_pre - 2``); the ones centred at the reference period and later are bounded.
    """
    D = second_differences(n_pre, n_post)
    n_pre_sd = n_pre - 1
    pieces = []
    for k in range(n_pre_sd):
        for sign in (1.0, -1.0):
            bound = np.vstack([np.repeat(sign * D[k][None], n_pre_sd, axis=0),
                               np.repeat(Mbar * sign * D[k][None], D.shape[0] - n_pre_sd, axis=0)])
            A = np.vstack([D - bound, -D - bound])
            A, d = _nonzero_rows(A, np.zeros(A.shape[0]))
            pieces.append(Polyhedron(_drop_reference(A, n_pre), d, f"k={k},{'+' if sign > 0 else '-'}"))
    return pieces


def sign_restriction(n_pre: int, n_post: int, direction: str) -> Polyhedron:
    """``delta_post >= 0`` (``"positive"``) or ``<= 0`` (``"negative"``)."""
    A = np.zeros((n_post, n_pre + n_post))
    A[np.arange(n_post), n_pre + np.arange(n_post)] = -1.0 if direction == "positive" else 1.0
    return Polyhedron(A, np.zeros(n_post), f"bias {direction}")


def monotone_restriction(n_pre: int, n_post: int, direction: str) -> Polyhedron:
    """``delta`` weakly increasing (``"increasing"``) or decreasing over every period."""
    D = _drop_reference(-first_differences(n_pre, n_post), n_pre)  # delta_r - delta_{r+1} <= 0
    A = D if direction == "increasing" else -D
    return Polyhedron(A, np.zeros(A.shape[0]), f"monotone {direction}")


def intersect(base: Polyhedron, extra: Polyhedron | None) -> Polyhedron:
    if extra is None:
        return base
    return Polyhedron(np.vstack([base.A, extra.A]), np.concatenate([base.d, extra.d]), base.label)


def pieces_for(restriction: str, n_pre: int, n_post: int, M: float, *, bias_direction: str | None = None,
               monotonicity_direction: str | None = None, pre_diffs: list[int] | None = None) -> list[Polyhedron]:
    """The polyhedra whose union is the restriction set (one for ``smoothness``)."""
    if restriction == "smoothness":
        base = [delta_sd(n_pre, n_post, M)]
    elif restriction == "relative_magnitude":
        base = delta_rm_pieces(n_pre, n_post, M, pre_diffs)
    else:
        base = delta_sdrm_pieces(n_pre, n_post, M)
    extra = None
    if bias_direction is not None:
        extra = sign_restriction(n_pre, n_post, bias_direction)
    elif monotonicity_direction is not None:
        extra = monotone_restriction(n_pre, n_post, monotonicity_direction)
    return [intersect(p, extra) for p in base]


def identified_set(piece: Polyhedron, beta: Array, l_vec: Array, n_pre: int) -> tuple[float, float] | None:
    """Bounds on theta = l' tau_post when the population event study is ``beta``.

    ``theta = l' beta_post - l' delta_post`` with ``delta_pre = beta_pre`` and ``A delta <= d``;
    two linear programs. None when the piece is empty for these pre-period coefficients.
    """
    T = beta.size
    f = np.concatenate([np.zeros(n_pre), l_vec])
    A_eq = np.eye(T)[:n_pre]
    bounds = [(None, None)] * T
    lo = linprog(f, A_ub=piece.A, b_ub=piece.d, A_eq=A_eq, b_eq=beta[:n_pre], bounds=bounds, method="highs")
    hi = linprog(-f, A_ub=piece.A, b_ub=piece.d, A_eq=A_eq, b_eq=beta[:n_pre], bounds=bounds, method="highs")
    if lo.status != 0 or hi.status != 0:
        return None
    point = float(l_vec @ beta[n_pre:])
    return point + hi.fun, point - lo.fun  # theta_lb = point - max bias, theta_ub = point - min bias


def identified_set_union(pieces: list[Polyhedron], beta: Array, l_vec: Array, n_pre: int) -> tuple[float, float]:
    """Hull of the identified sets of the pieces (the point estimate when all are empty)."""
    sets = [s for s in (identified_set(p, beta, l_vec, n_pre) for p in pieces) if s is not None]
    if not sets:
        point = float(l_vec @ beta[n_pre:])
        return point, point
    return min(s[0] for s in sets), max(s[1] for s in sets)
