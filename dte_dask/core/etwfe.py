"""Covariates of the extended TWFE regression (Wooldridge 2021): the jwdid / diff-diff design and
the R ``etwfe`` design.

Pure numpy (no dask). With ``mode="jwdid"`` (Stata ``jwdid``, diff-diff ``WooldridgeDiD(xtvar=)``)
a covariate x enters as

* :math:`\\dot x = x - \\bar x_{g,t}`, demeaned within cohort x period cells (``jwdid``'s ``xtvar``),
* :math:`1\\{(G_i, t) = (g, s)\\}\\dot x` for every treatment cell (g, s): effects vary with x,
* :math:`1\\{G_i = g\\} x` for every treated cohort and :math:`1\\{t = s\\} x` for every period but
  the first (cohort- and period-specific slopes), and :math:`\\dot x` itself.

With ``mode="r_etwfe"`` (R ``etwfe``, ``fe = "feo"``, ``ivar`` the unit) it enters as

* :math:`x^{dm} = x - \\bar x_g`, demeaned within cohorts, unweighted, over every observed row of
  the cohort (``fixest::demean(x ~ gvar)`` on the whole data),
* :math:`1\\{(G_i, t) = (g, s)\\}x^{dm}` for every treatment cell,
* the raw x, :math:`1\\{G_i = g\\} x` for every cohort in the regression but one (the reference:
  the never treated, else the last cohort) and :math:`1\\{t = s\\} x` for every period in the
  regression but the first. A covariate constant within every unit has no raw term and no cohort
  slopes: the unit effects absorb them (fixest drops them as collinear).

:func:`cell_x_sums` gives the cohort x period sums for the means (a pre-pass);
:func:`augment` replaces a block's covariates by the derived columns, read by the within core.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

MODES = ("jwdid", "r_etwfe")


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
    ``n`` (R, T) observations (R = len(groups) + 1, the last row the never treated); ``varying``
    (p,) the units whose covariate takes more than one value over their observed periods."""
    n, T = block.y.shape
    R, p = len(groups) + 1, len(cov_idx)
    rows = _rows(block.g, groups)
    obs = ~np.isnan(block.y)
    key = (rows[:, None] * T + np.arange(T)[None, :])[obs]
    out = {"n": np.bincount(key, minlength=R * T).astype(float).reshape(R, T)}
    if block.x is None or not p:
        return {**out, "sx": np.zeros((R, T, p)), "varying": np.zeros(p)}
    x = _x(block, cov_idx)
    sx = np.stack([np.bincount(key, x[:, :, j][obs], minlength=R * T) for j in range(p)], axis=1).reshape(R, T, p)
    first = x[np.arange(n), np.argmax(obs, axis=1)]  # (n, p) the value in the first observed period
    varying = ((x != first[:, None, :]) & obs[:, :, None]).any(axis=1).sum(axis=0).astype(float)
    return {**out, "sx": sx, "varying": varying}


@dataclass(frozen=True)
class EtwfeCovariates:
    """The derived covariate columns of one ETWFE design (see the module notes)."""

    groups: tuple[float, ...]  # every finite cohort (rows of the means; the last row is the never treated)
    slope_cohorts: tuple[float, ...]  # cohorts with a cohort-specific slope
    cells: tuple[tuple[int, int], ...]  # treatment cells (cohort, period)
    periods: tuple[int, ...]  # periods with a period-specific slope
    cov_idx: tuple[int, ...]
    means: np.ndarray  # (R, T, p) what x is demeaned by: cohort x period cell means, or cohort means
    slope_cov: tuple[int, ...]  # positions (in cov_idx) of the covariates with cohort slopes and a main term
    raw_main: bool  # main term: the raw x (R etwfe) or the demeaned x (jwdid)

    @property
    def width(self) -> int:
        p, q = len(self.cov_idx), len(self.slope_cov)
        main = q if self.raw_main else p
        return len(self.cells) * p + len(self.slope_cohorts) * q + len(self.periods) * p + main

    def __dask_tokenize__(self) -> Any:
        return ("etwfe-covariates", self.groups, self.slope_cohorts, self.cells, self.periods, self.cov_idx,
                self.means.tobytes(), self.means.shape, self.slope_cov, self.raw_main)


def covariate_design(mode: str, sums: dict[str, np.ndarray], groups: tuple[float, ...], cells: tuple,
                     cov_idx: tuple[int, ...], periods: tuple[int, ...], regression_rows: np.ndarray,
                     reference_row: int) -> EtwfeCovariates:
    """The derived columns of ``mode`` from the pre-pass sums.

    ``regression_rows`` (R,) marks the cohort rows with observations in the regression and
    ``reference_row`` is R etwfe's reference cohort (no cohort slope).
    """
    n = sums["n"][:, :, None]
    if mode == "jwdid":
        means = np.divide(sums["sx"], n, out=np.zeros_like(sums["sx"]), where=n > 0)
        return EtwfeCovariates(groups, tuple(g for g in groups if g > 0), tuple(cells), periods, cov_idx, means,
                               tuple(range(len(cov_idx))), False)
    tot, cnt = sums["sx"].sum(axis=1), n.sum(axis=1)
    cohort = np.divide(tot, cnt, out=np.zeros_like(tot), where=cnt > 0)
    means = np.broadcast_to(cohort[:, None, :], sums["sx"].shape).copy()
    slopes = tuple(g for r, g in enumerate(groups) if regression_rows[r] and r != reference_row)
    varying = tuple(j for j in range(len(cov_idx)) if sums["varying"][j] > 0)
    return EtwfeCovariates(groups, slopes, tuple(cells), periods, cov_idx, means, varying, True)


def cell_shifts(spec: EtwfeCovariates, sums: dict[str, np.ndarray]) -> np.ndarray:
    """(cells, p) the mean of the demeaned covariates over each treatment cell's observed rows: the
    covariate values at which the average effect of a cell is its dummy's coefficient plus the
    cell's slopes times these (R etwfe's ``emfx``; zero for jwdid's cell-demeaned covariates)."""
    out = np.zeros((len(spec.cells), len(spec.cov_idx)))
    row = {g: r for r, g in enumerate(spec.groups)}
    for c, (g, t) in enumerate(spec.cells):
        r = row[float(g)]
        if sums["n"][r, t] > 0:
            out[c] = sums["sx"][r, t] / sums["n"][r, t] - spec.means[r, t]
    return out


def augment(block: Any, spec: EtwfeCovariates) -> Any:
    """The block with covariates ``(n, T, width)``: [cell x demeaned x | cohort x x | period x x |
    main term] (each group covariate-minor)."""
    n, T = block.y.shape
    x = _x(block, spec.cov_idx)
    rows = _rows(block.g, spec.groups)
    xdot = x - spec.means[rows]
    xs = x[:, :, list(spec.slope_cov)]
    cols = []
    for g, t in spec.cells:
        on = (block.g == g)[:, None] & (np.arange(T) == t)[None, :]
        cols.append(np.where(on[:, :, None], xdot, 0.0))
    for g in spec.slope_cohorts:
        cols.append(np.where((block.g == g)[:, None, None], xs, 0.0))
    for t in spec.periods:
        cols.append(np.where((np.arange(T) == t)[None, :, None], x, 0.0))
    cols.append(xs if spec.raw_main else xdot)
    xa = np.concatenate(cols, axis=2) if cols else np.zeros((n, T, 0))
    return replace(block, x=np.ascontiguousarray(xa))
