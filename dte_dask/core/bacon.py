"""Goodman-Bacon (2021) decomposition from cohort x period sums: block kernel and driver algebra.

Pure numpy (no dask). On a balanced panel with time-invariant sampling weights every 2x2 DiD of
the decomposition, and its weight, is a function of the weighted outcome sums of each timing
group in each period and of the groups' weighted unit counts: a block reduces to an (R, T) table,
R the number of timing groups plus one for the untreated bucket U. The TWFE coefficient is a closed
form in the same table (:func:`twfe_fit`); its clustered standard error needs one more pass that
reduces per-cluster scores to their sum of squares (:func:`cluster_meat`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dte_dask.core.blocks import entity_sums
from dte_dask.core.errors import EstimationError
from dte_dask.core.normal_equations import crv1

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
    ``mass`` (R,) weighted units, ``units`` (R,) units, ``positive`` (R,) units of positive weight,
    ``obs`` (R,) observed cells (R = len(timing) + 1).

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
    positive = np.bincount(rows, block.w > 0, minlength=R).astype(float)
    cells = np.bincount(rows, obs.sum(axis=1), minlength=R).astype(float)
    return {"sy": sy, "sw": sw, "mass": mass, "units": units, "positive": positive, "obs": cells}


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


# ----------------------------------------------------------------------------- the TWFE regression
@dataclass(frozen=True)
class TwfeFit:
    """The static TWFE regression :math:`y_{it} = \\alpha_i + \\lambda_t + \\beta D_{it}` in closed form."""

    beta: float
    dt: np.ndarray  # (R, T) the two-way demeaned treatment dummy of each row's units
    shift: np.ndarray  # (R,) per row: sum_t dt (ybar_t + beta dt), the part of a unit's score it shares
    den: float  # sum_it w_i dt^2
    n_obs: float  # observations of positive weight


def twfe_fit(sums: dict[str, np.ndarray], timing: tuple[float, ...], T: int) -> TwfeFit:
    """The TWFE coefficient on the treatment dummy from the cohort x period sums of a balanced panel.

    Notes
    -----
    With weights constant within unit and every unit observed in every period, the weighted two-way
    within transform of the dummy depends on the unit's row r only:
    :math:`\\tilde D_{rt} = D_{rt} - \\bar D_{r\\cdot} - \\bar D_{\\cdot t} + \\bar D` with
    :math:`\\bar D_{\\cdot t} = \\sum_r n_r D_{rt}` (weighted unit shares :math:`n_r`) and
    :math:`\\bar D` its mean over periods. It is orthogonal to the unit and period dummies, so by
    Frisch-Waugh-Lovell :math:`\\hat\\beta = \\sum_{rt} \\tilde D_{rt} S^y_{rt} / \\sum_{rt} m_r
    \\tilde D_{rt}^2` (:math:`S^y` the weighted outcome sums, :math:`m_r` the weighted unit counts).
    The score of unit i in row r is :math:`w_i \\sum_t \\tilde D_{rt} \\hat e_{it} = w_i (\\sum_t
    \\tilde D_{rt} y_{it} - \\sum_t \\tilde D_{rt} (\\bar y_{\\cdot t} + \\hat\\beta \\tilde D_{rt}))`:
    unit and period effects drop out because :math:`\\tilde D_{r\\cdot}` sums to zero over periods.
    """
    R = len(timing) + 1
    if not np.array_equal(sums["obs"], sums["units"] * T):
        raise EstimationError("the Bacon decomposition needs a balanced panel: some unit misses a period")
    D = np.zeros((R, T))
    for r, k in enumerate(timing):
        D[r, int(k):] = 1.0
    m = sums["mass"]
    M = float(m.sum())
    if M <= 0:
        raise EstimationError("every unit has zero weight")
    n = m / M
    col = n @ D
    dt = D - D.mean(axis=1)[:, None] - col[None, :] + col.mean()
    den = float(np.sum(m[:, None] * dt * dt))
    if not den > 1e-12 * M * T:
        raise EstimationError("the treatment dummy is collinear with the unit and period effects (one timing "
                              "group and no untreated units): the TWFE coefficient is not identified")
    beta = float(np.sum(dt * sums["sy"])) / den
    ybar = sums["sy"].sum(axis=0) / M
    shift = dt @ ybar + beta * np.sum(dt * dt, axis=1)
    return TwfeFit(beta=beta, dt=dt, shift=shift, den=den, n_obs=float(sums["positive"].sum()) * T)


def cluster_meat(block: Any, timing: tuple[float, ...], dt: np.ndarray, shift: np.ndarray) -> dict[str, np.ndarray]:
    """Sum of squared cluster scores of the TWFE coefficient over one block (clusters are its entities,
    contiguous by ``rank``), ``meat``, and the clusters with a unit of positive weight, ``G``."""
    rows = group_rows(block.g, timing)
    s = block.w * (np.einsum("it,it->i", block.y, dt[rows]) - shift[rows])
    pos = (block.w > 0).astype(float)
    S = entity_sums(np.column_stack([s, pos]), block.rank)
    return {"meat": np.array(S[:, 0] @ S[:, 0]), "G": np.array(float(np.count_nonzero(S[:, 1] > 0)))}


def twfe_se(fit: TwfeFit, meat: dict[str, np.ndarray], T: int) -> float:
    """CRV1 standard error with pyfixest's default small-sample factor (``k`` = the coefficient plus the
    T period effects not nested in the clusters; unit effects nested), as :func:`~dte_dask.core.normal_equations.crv1`."""
    inv = np.array([[1.0 / fit.den]])
    cov, _ = crv1(inv, np.array([[float(meat["meat"])]]), fit.n_obs, 1 + T, int(meat["G"]))
    return float(np.sqrt(cov[0, 0]))
