"""Covariates of the extended TWFE regression (Wooldridge 2021, ``jwdid`` / diff-diff conventions).

Pure numpy (no dask). A covariate x enters as

* :math:`\\dot x = x - \\bar x_{g,t}`, demeaned within cohort x period cells (``jwdid``'s ``xtvar``),
* :math:`1\\{(G_i, t) = (g, s)\\}\\dot x` for every treatment cell (g, s): effects vary with x,
* :math:`1\\{G_i = g\\} x` for every treated cohort and :math:`1\\{t = s\\} x` for every period but
  the first (cohort- and period-specific slopes).

:func:`cell_x_sums` gives the cohort x period sums for the cell means (a pre-pass);
:func:`augment` replaces a block's covariates by these derived columns, read by the within core.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np


def _rows(g: np.ndarray, groups: tuple[float, ...]) -> np.ndarray:
    rows = np.full(g.shape[0], len(groups), dtype=np.int64)
    for r, value in enumerate(groups):
        rows[g == value] = r
    return rows


def _x(block: Any, cov_idx: tuple[int, ...]) -> np.ndarray:
    x = block.x[..., list(cov_idx)]
    T = block.y.shape[1]
    return np.broadcast_to(x[:, None, :], (block.n, T, len(cov_idx))) if x.ndim == 2 else x


def cell_x_sums(block: Any, groups: tuple[float, ...], cov_idx: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Per (cohort row, period): ``sx`` (R, T, p) sums of the covariates over observed outcomes and
    ``n`` (R, T) observations (R = len(groups) + 1, the last row the never treated)."""
    n, T = block.y.shape
    R, p = len(groups) + 1, len(cov_idx)
    rows = _rows(block.g, groups)
    obs = ~np.isnan(block.y)
    key = (rows[:, None] * T + np.arange(T)[None, :])[obs]
    x = _x(block, cov_idx)
    sx = np.stack([np.bincount(key, x[:, :, j][obs], minlength=R * T) for j in range(p)], axis=1).reshape(R, T, p)
    return {"sx": sx, "n": np.bincount(key, minlength=R * T).astype(float).reshape(R, T)}


@dataclass(frozen=True)
class EtwfeCovariates:
    groups: tuple[float, ...]  # every finite cohort (rows of the cell means)
    treated: tuple[float, ...]  # cohorts with a cohort-specific slope
    cells: tuple[tuple[int, int], ...]  # treatment cells (cohort, period)
    cov_idx: tuple[int, ...]
    means: np.ndarray  # (R, T, p) cohort x period means

    @property
    def width(self) -> int:
        T, p = self.means.shape[1], len(self.cov_idx)
        return (len(self.cells) + len(self.treated) + (T - 1) + 1) * p

    def __dask_tokenize__(self) -> Any:
        return ("etwfe-covariates", self.groups, self.treated, self.cells, self.cov_idx, self.means.tobytes(),
                self.means.shape)


def augment(block: Any, spec: EtwfeCovariates) -> Any:
    """The block with covariates ``(n, T, width)``: [cell x x-dot | cohort x x | period x x | x-dot]
    (each group covariate-minor)."""
    n, T = block.y.shape
    x = _x(block, spec.cov_idx)
    rows = _rows(block.g, spec.groups)
    xdot = x - spec.means[rows]
    cols = []
    for g, t in spec.cells:
        on = (block.g == g)[:, None] & (np.arange(T) == t)[None, :]
        cols.append(np.where(on[:, :, None], xdot, 0.0))
    for g in spec.treated:
        cols.append(np.where((block.g == g)[:, None, None], x, 0.0))
    for t in range(1, T):
        cols.append(np.where((np.arange(T) == t)[None, :, None], x, 0.0))
    cols.append(xdot)
    xa = np.concatenate(cols, axis=2) if cols else np.zeros((n, T, 0))
    return replace(block, x=np.ascontiguousarray(xa))
