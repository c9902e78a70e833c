"""Outcome changes ``Y_t - Y_base`` of a set of units, gathered from a block's outcome matrix in
one pass (a numba kernel; :mod:`dte_dask.core.jit`).

The influence-function and regression passes of Callaway-Sant'Anna with covariates need, for each
design (a cohort and its controls), the changes of every cell of the design on the design's
rows: a gather of two outcome columns per cell and a subtraction, sometimes scaled by a per-row
factor. numpy does that in three or four passes over memory (a gather of the columns, the
differences, the scaling), with a copy of the rows when the output is not column-major. The
kernel reads each unit's outcomes once per cell, a few thousand rows at a time so that the
block's outcome rows stay in the core's cache across the cells, and writes each change once.
Every value is the one numpy computes: one subtraction, then one multiplication, each rounded.
"""
from __future__ import annotations

import numpy as np

from dte_dask.core.jit import check_positions, compiled

__all__ = ["outcome_changes"]

#: Rows per sweep over the cells: 2,048 units' outcome rows (24 periods: 384 KiB) stay in a 2 MiB
#: L2 cache while every cell reads them.
ROWS = 2048


def _changes(y: np.ndarray, idx: np.ndarray, t: np.ndarray, base: np.ndarray, scale: np.ndarray,
             out: np.ndarray) -> None:  # pragma: no cover - compiled
    """out[r, c] = (y[idx[r], t[c]] - y[idx[r], base[c]]) * scale[r] (no factor when ``scale`` is
    empty)."""
    n, K = idx.shape[0], t.shape[0]
    scaled = scale.shape[0] > 0
    for r0 in range(0, n, ROWS):
        r1 = min(n, r0 + ROWS)
        for c in range(K):
            tc, bc = t[c], base[c]
            if scaled:
                for r in range(r0, r1):
                    k = idx[r]
                    out[r, c] = (y[k, tc] - y[k, bc]) * scale[r]
            else:
                for r in range(r0, r1):
                    k = idx[r]
                    out[r, c] = y[k, tc] - y[k, bc]


def outcome_changes(y: np.ndarray, idx: np.ndarray, t: np.ndarray, base: np.ndarray, out: np.ndarray | None = None,
                    scale: np.ndarray | None = None) -> np.ndarray:
    """``(y[idx][:, t] - y[idx][:, base]) * scale[:, None]`` as an (|idx|, |t|) array, written into
    ``out`` when given (any layout; a new column-major array otherwise). ``y``: (units x periods)
    float64 outcomes; ``idx``: row positions; ``t``, ``base``: column positions per cell;
    ``scale``: one factor per row of ``idx``, or None."""
    idx = np.ascontiguousarray(idx, dtype=np.intp)
    t = np.ascontiguousarray(t, dtype=np.intp)
    base = np.ascontiguousarray(base, dtype=np.intp)
    if t.shape != base.shape:
        raise ValueError(f"{t.size} current periods against {base.size} base periods")
    if out is None:
        out = np.empty((idx.size, t.size), order="F")
    if out.shape != (idx.size, t.size):
        raise ValueError(f"out has shape {out.shape}, the changes {(idx.size, t.size)}")
    if scale is None:
        scale = np.empty(0)
    elif scale.shape != (idx.size,):
        raise ValueError(f"{scale.size} row factors for {idx.size} rows")
    if y.dtype != np.float64 or out.dtype != np.float64 or scale.dtype != np.float64:
        raise TypeError("outcome changes are float64")
    for name, pos, size in (("row", idx, y.shape[0]), ("period", t, y.shape[1]), ("base period", base, y.shape[1])):
        check_positions(name, pos, size)
    if idx.size and t.size:
        compiled(_changes)(y, idx, t, base, scale, out)
    return out
