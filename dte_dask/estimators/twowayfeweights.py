"""The TWFE weights diagnostic of de Chaisemartin & D'Haultfœuille (2020): ``twowayfeweights``.

How the two-way fixed-effects coefficient weights the treated (unit, period) cells (R/Stata
``twowayfeweights``, ``type = "feTR"``): how many weights are negative and their sum, so that users
see when TWFE may be far from any convex combination of the cells' effects. Kernels:
:mod:`dte_dask.core.twfeweights`; reductions bit-identical for any partitioning.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np
import pandas as pd

from dte_dask.core.dcdh import DcdhBlock
from dte_dask.core.twfeweights import gram_stats, residuals, weight_stats
from dte_dask.estimators.did_multiplegt import reduce_blocks
from dte_dask.exceptions import EstimationError
from dte_dask.graph.reduce import compute
from dte_dask.panel.wide import WideColumns, wide_blocks

__all__ = ["twowayfeweights", "TwfeWeightsResult"]


@dataclass(frozen=True)
class TwfeWeightsResult:
    """beta_fe, the treated cells' weights (summaries; ``cells`` when asked for) and sigma_fe."""

    beta_fe: float
    n_treated: int
    n_negative: int
    sum_negative: float
    sum_positive: float
    sigma_fe: float
    by_period: pd.DataFrame
    cells: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def n_positive(self) -> int:
        return self.n_treated - self.n_negative

    def summary(self) -> str:
        return (f"Under the common trends assumption, the TWFE coefficient beta = {self.beta_fe:.6f} estimates a "
                f"weighted sum of {self.n_treated} ATTs.\n{self.n_positive} ATTs receive a positive weight, and "
                f"{self.n_negative} receive a negative weight.\nThe sum of the positive weights is "
                f"{self.sum_positive:.6f}; the sum of the negative weights is {self.sum_negative:.6f}.\n"
                f"sigma_fe (smallest SD of the cells' effects compatible with beta and ATE = 0, binary "
                f"treatment): {self.sigma_fe:.6f}")

    __str__ = summary


def _cell_weights(block: Any, gamma: np.ndarray, denom: float, times: np.ndarray) -> pd.DataFrame:
    eps, obs, _ = residuals(block, gamma)
    d = np.where(obs, block.d, 0.0)
    gi, ti = np.nonzero(obs & (d != 0))
    return pd.DataFrame({"unit": block.ids[gi], "time": times[ti], "treatment": d[gi, ti],
                         "weight": eps[gi, ti] * d[gi, ti] / denom})


def _non_binary(block: DcdhBlock) -> bool:
    d = block.d[block.present & ~np.isnan(block.d)]
    return bool(np.any((d != 0) & (d != 1)))


def twowayfeweights(data: Any, outcome: str, unit: str, time: str, treatment: str, *, cells: bool = False,
                    npartitions: int = 1, rng_block_size: int = 16384) -> TwfeWeightsResult:
    """Weights of the TWFE coefficient on the treated (unit, period) cells.

    Parameters
    ----------
    data : pandas or dask DataFrame or parquet path, long (a dask frame is never gathered on the
        driver); cells with a missing outcome or treatment are left out
    outcome, unit, time, treatment : columns (treatment binary or not: cells with D != 0 are "treated"
        and weights are w_gt = ε_gt D_gt / Σ ε D, R's ``feTR``)
    cells : also return every treated cell's weight (a frame as long as the treated cells: it
        gathers per-cell values on the driver, so keep it for panels that fit in memory)

    Notes
    -----
    ε are the residuals of D on unit and period effects (unbalanced panels allowed). The weights sum
    to one and :math:`\\hat\\beta_{fe} = \\sum ε Y / \\sum ε D`; with cell effects Δ_gt per unit of
    treatment and no noise, :math:`\\hat\\beta_{fe} = \\sum w_{gt} Δ_{gt}`. ``sigma_fe`` (binary
    treatment only, NaN otherwise) is |β_fe| / sd of the weights under the cells' shares.
    """
    bs = int(rng_block_size)
    wide = wide_blocks(data, WideColumns(outcome, unit, time, treatment), max(int(npartitions), 1), bs,
                       "twowayfeweights")
    parts, nb, times = wide.parts, wide.n_blocks, wide.times
    g = reduce_blocks(parts, gram_stats, bs, nb)
    gamma = np.linalg.lstsq(g["xx"], g["xd"], rcond=None)[0]
    s = reduce_blocks(parts, weight_stats, bs, nb, gamma)
    if s["n_tr"] == 0 or s["ed"] == 0:
        raise EstimationError("twowayfeweights: no treated cell, or the treatment is collinear with the unit "
                              "and period effects (Σ ε D = 0)")
    denom = float(s["ed"])
    binary = not any(compute(*[dask.delayed(_non_binary)(p) for p in parts]))
    n1 = int(s["n_tr"])
    var_w = n1 * float(s["e2_tr"]) / float(s["e_tr"]) ** 2 - 1.0 if binary and s["e_tr"] != 0 else 0.0
    beta = float(s["ey"]) / denom
    by_period = pd.DataFrame({"time": times, "n_treated": s["n_tr_t"], "weight": s["ed_t"] / denom})
    frame = None
    if cells:
        frames = compute(*[dask.delayed(_cell_weights)(p, gamma, denom, times) for p in parts])
        frame = pd.concat(frames, ignore_index=True).sort_values(["unit", "time"], ignore_index=True)
    return TwfeWeightsResult(beta_fe=beta, n_treated=n1, n_negative=int(s["n_neg"]),
                             sum_negative=float(s["ed_neg"]) / denom,
                             sum_positive=(denom - float(s["ed_neg"])) / denom,
                             sigma_fe=abs(beta) / np.sqrt(var_w) if var_w > 0 else float("nan"),
                             by_period=by_period, cells=frame)
