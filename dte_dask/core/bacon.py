"""Goodman-Bacon (2021) decomposition from cohort x period sums: block kernel and driver algebra.

Pure numpy (no dask). On a balanced panel with time-invariant sampling weights every 2x2 DiD of
the decomposition, and its weight, is a function of the weighted outcome sums of each timing
group in each period and of the groups' weighted unit counts: a block reduces to an (R, T) table,
R the number of timing groups plus one for the untreated bucket U.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

TREATED_VS_NEVER = "treated_vs_never"
EARLIER_VS_LATER = "earlier_vs_later"
LATER_VS_EARLIER = "later_vs_earlier"
TYPES = (TREATED_VS_NEVER, EARLIER_VS_LATER, LATER_VS_EARLIER)


def group_rows(g: np.ndarray, timing: tuple[float, ...]) -> np.ndarray:
    """Row of each unit: the position of its group among ``timing``, or ``len(timing)`` (bucket U:
    never treated, treated after the last period, or treated in/before the first period)."""
    rows = np.full(g.shape[0], len(timing), dtype=np.int64)
    for r, value in enumerate(timing):
        rows[g == value] = r
    return rows


def cell_sums(block: Any, timing: tuple[float, ...]) -> dict[str, np.ndarray]:
    """Sums of one block: ``sy`` (R, T) weighted outcomes, ``sw`` (R, T) weights of observed cells,
    ``mass`` (R,) weighted units, ``units`` (R,) units (R = len(timing) + 1).

    ``bincount`` adds in row order, so a block's sums do not depend on what else its partition holds.
    """
    R, T = len(timing) + 1, block.y.shape[1]
    rows = group_rows(block.g, timing)
    obs = ~np.isnan(block.y)
    idx = (rows[:, None] * T + np.arange(T)[None, :])[obs]
    w = np.broadcast_to(block.w[:, None], block.y.shape)[obs]
    sy = np.bincount(idx, w * block.y[obs], minlength=R * T).reshape(R, T)
    sw = np.bincount(idx, w, minlength=R * T).reshape(R, T)
    mass = np.bincount(rows, block.w, minlength=R)
    units = np.bincount(rows, minlength=R).astype(float)
    return {"sy": sy, "sw": sw, "mass": mass, "units": units}


@dataclass(frozen=True)
class Comparison:
    kind: str
    treated: int  # row of the treated group
    control: int  # row of the control group (len(timing) = U)
    estimate: float
    weight: float  # unnormalized (Theorem 1 numerator, Eqs. 10e-g)


def decompose(sums: dict[str, np.ndarray], timing: tuple[float, ...], T: int) -> list[Comparison]:
    """Every 2x2 comparison of Goodman-Bacon (2021), Theorem 1, with its weight numerator.

    Notes
    -----
    With :math:`\\bar y_{r}(P)` the mean outcome of group r over the periods P (cell means averaged
    over periods: the panel is balanced), :math:`n_r` the groups' unit shares and
    :math:`\\bar D_k = (T - k) / T` the share of periods timing group k is treated:

    * k vs U over all periods: :math:`\\hat\\beta_{kU} = [\\bar y_k(t\\ge k) - \\bar y_k(t<k)] -
      [\\bar y_U(t\\ge k) - \\bar y_U(t<k)]`, weight :math:`(n_k + n_U)^2 n_{kU}(1-n_{kU})
      \\bar D_k (1 - \\bar D_k)`;
    * early k vs late l before l (PRE t < k, MID k <= t < l): weight
      :math:`((n_k+n_l)(1-\\bar D_l))^2 n_{kl}(1-n_{kl}) \\frac{\\bar D_k-\\bar D_l}{1-\\bar D_l}
      \\frac{1-\\bar D_k}{1-\\bar D_l}`;
    * late l vs early k from k on (MID, POST t >= l): weight
      :math:`((n_k+n_l)\\bar D_k)^2 n_{kl}(1-n_{kl}) \\frac{\\bar D_l}{\\bar D_k}
      \\frac{\\bar D_k-\\bar D_l}{\\bar D_k}`,

    with :math:`n_{kl} = n_k / (n_k + n_l)`. The weights sum to the variance of the two-way
    demeaned treatment dummy (times a constant), so normalized they sum to one and
    :math:`\\sum s \\hat\\beta` is the TWFE coefficient.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        cell = sums["sy"] / sums["sw"]
    n = sums["mass"] / sums["mass"].sum()
    U = len(timing)
    k_of = [int(k) for k in timing]
    Dbar = [(T - k) / T for k in k_of]

    def mean(r: int, lo: int, hi: int) -> float:
        return float(np.mean(cell[r, lo:hi]))

    def did(tr: int, co: int, pre: tuple[int, int], post: tuple[int, int]) -> float:
        return (mean(tr, *post) - mean(tr, *pre)) - (mean(co, *post) - mean(co, *pre))

    out: list[Comparison] = []
    if n[U] > 0:
        for r, k in enumerate(k_of):
            nkU = n[r] / (n[r] + n[U])
            w = (n[r] + n[U]) ** 2 * nkU * (1 - nkU) * Dbar[r] * (1 - Dbar[r])
            out.append(Comparison(TREATED_VS_NEVER, r, U, did(r, U, (0, k), (k, T)), w))
    for a, k in enumerate(k_of):
        for b in range(a + 1, len(k_of)):
            l_ = k_of[b]
            nkl = n[a] / (n[a] + n[b])
            Dk, Dl = Dbar[a], Dbar[b]
            w_early = ((n[a] + n[b]) * (1 - Dl)) ** 2 * nkl * (1 - nkl) * (Dk - Dl) / (1 - Dl) * (1 - Dk) / (1 - Dl)
            out.append(Comparison(EARLIER_VS_LATER, a, b, did(a, b, (0, k), (k, l_)), w_early))
            w_late = ((n[a] + n[b]) * Dk) ** 2 * nkl * (1 - nkl) * Dl / Dk * (Dk - Dl) / Dk
            out.append(Comparison(LATER_VS_EARLIER, b, a, did(b, a, (k, l_), (l_, T)), w_late))
    return out
