"""numba passes that fuse a few numpy steps of the estimators' kernels over a block's units (the
event study's and stacked DiD's within-unit fits, :mod:`dte_dask.core.within`, their pooled
scores, :mod:`dte_dask.core.ols`, and the influence functions of Callaway-Sant'Anna with
covariates, :mod:`dte_dask.core.covariates`); compiled through :mod:`dte_dask.core.jit`.

Each returns exactly the numpy expression it replaces, bit for bit: the same floating-point
operations in the same order, each rounded once. What they save is memory traffic: numpy makes
a temporary per step (a gathered copy, a broadcast product) and, writing a row-major result from
column-major outcomes, strides through one of the two.
"""
from __future__ import annotations

import numpy as np

from dte_dask.core.jit import check_positions, compiled

__all__ = ["add_at_rows", "demeaned", "put_at_rows", "weighted_residuals"]


def _demeaned(y: np.ndarray, mean: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    n, L = y.shape
    for i in range(n):  # column-major y: consecutive units share the cache lines of each period
        m = mean[i]
        for t in range(L):
            out[i, t] = y[i, t] - m


def demeaned(y: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``np.subtract(y, mean[:, None], order="C")``: each row less its mean, row-major, from
    outcomes of any layout."""
    if mean.shape != (y.shape[0],):
        raise ValueError(f"{mean.size} means for {y.shape[0]} rows")
    out = np.empty(y.shape)
    if y.size:
        compiled(_demeaned)(_f64(y), _f64(mean), out)
    return out


def _residuals(yt: np.ndarray, F: np.ndarray, row: np.ndarray, w: np.ndarray, q: np.ndarray,
               out: np.ndarray) -> None:  # pragma: no cover - compiled
    n, L = yt.shape
    plain = q.shape[0] == 0
    for i in range(n):
        r, wi = row[i], w[i]
        for t in range(L):
            if plain:
                out[i, t] = (yt[i, t] - F[r, t]) * wi
            else:
                out[i, t] = (yt[i, t] - F[r, t]) * (wi * q[r, t])


def weighted_residuals(yt: np.ndarray, F: np.ndarray, row: np.ndarray, w: np.ndarray,
                       q: np.ndarray | None = None) -> np.ndarray:
    """``(yt - F[row]) * w[:, None]``, or ``* (w[:, None] * q[row])`` with multipliers ``q``: the
    residuals of a fit that is one row of ``F`` per design row, weighted; row-major."""
    n, L = yt.shape
    if row.shape != (n,) or w.shape != (n,) or F.ndim != 2 or F.shape[1] != L:
        raise ValueError(f"residuals of {yt.shape} with fits {F.shape}, {row.size} rows, {w.size} weights")
    if q is not None and q.shape != F.shape:
        raise ValueError(f"multipliers {q.shape} for fits {F.shape}")
    row = np.ascontiguousarray(row, dtype=np.intp)
    check_positions("design row", row, F.shape[0])
    out = np.empty((n, L))
    if yt.size:
        compiled(_residuals)(_f64(yt), _f64(F), row, _f64(w), np.empty((0, 0)) if q is None else _f64(q), out)
    return out


def _at_rows(out: np.ndarray, sel: np.ndarray, place: np.ndarray, values: np.ndarray, add: bool) -> None:  # pragma: no cover - compiled
    for i in range(sel.shape[0]):
        r = sel[i]
        if add:
            for j in range(place.shape[0]):
                out[r, place[j]] += values[i, j]
        else:
            for j in range(place.shape[0]):
                out[r, place[j]] = values[i, j]


def _check_at_rows(out: np.ndarray, sel: np.ndarray, place: np.ndarray, values: np.ndarray):
    sel = np.ascontiguousarray(sel, dtype=np.intp)
    place = np.ascontiguousarray(place, dtype=np.intp)
    if values.shape != (sel.size, place.size):
        raise ValueError(f"values {values.shape} for {sel.size} rows and {place.size} columns")
    check_positions("row", sel, out.shape[0])
    check_positions("column", place, out.shape[1])
    if out.dtype != np.float64:
        raise TypeError("the rows written are float64")
    return sel, place, _f64(values)


def add_at_rows(out: np.ndarray, sel: np.ndarray, place: np.ndarray, values: np.ndarray) -> None:
    """``out[sel][:, place] += values`` in place (``sel`` and ``place`` without repeats): one
    addition per value, as numpy's gather, add and scatter make it."""
    sel, place, values = _check_at_rows(out, sel, place, values)
    if values.size:
        compiled(_at_rows)(out, sel, place, values, True)


def put_at_rows(out: np.ndarray, sel: np.ndarray, place: np.ndarray, values: np.ndarray) -> None:
    """``out[np.ix_(sel, place)] = values`` in place (``sel`` and ``place`` without repeats)."""
    sel, place, values = _check_at_rows(out, sel, place, values)
    if values.size:
        compiled(_at_rows)(out, sel, place, values, False)


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)
