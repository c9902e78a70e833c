"""Rows of an influence-function matrix over their stated support, checked in the same pass (a
numba kernel; :mod:`dte_dask.core.jit`).

The bootstrap applies an RNG block's multipliers group by group (entities of one cohort, say),
each group's rows taken over the columns where they can be nonzero (their support): a cohort's
units enter only its own ATT(g,t) cells. A stated support is checked, not trusted: a row with a
nonzero outside it would lose that value from every draw. numpy gathers the rows (``np.ix_``)
and counts the nonzeros of the block and of every gathered group, three passes over the rows;
the kernel reads each row once, copies its support's values and compares the two counts.
"""
from __future__ import annotations

import numpy as np

from dte_dask.core.jit import check_positions, compiled

__all__ = ["support_rows"]


def _support_rows(S: np.ndarray, rows: np.ndarray, cols: np.ndarray, out: np.ndarray) -> bool:  # pragma: no cover - compiled
    """out[i, j] = S[rows[i], cols[j]]; False when a row has a nonzero outside ``cols``."""
    K = S.shape[1]
    inside = True
    for i in range(rows.shape[0]):
        r = rows[i]
        every = 0
        for k in range(K):
            if S[r, k] != 0:
                every += 1
        kept = 0
        for j in range(cols.shape[0]):
            v = S[r, cols[j]]
            out[i, j] = v
            if v != 0:
                kept += 1
        if kept != every:
            inside = False
    return inside


def support_rows(S: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(S[np.ix_(rows, cols)], inside)``: the rows over the columns ``cols`` (distinct, in any
    order) and whether every nonzero of those rows lies in ``cols`` (a NaN counts as nonzero, as in
    ``np.count_nonzero``)."""
    rows = np.ascontiguousarray(rows, dtype=np.intp)
    cols = np.ascontiguousarray(cols, dtype=np.intp)
    if S.ndim != 2:
        raise ValueError(f"a matrix, not an array of {S.ndim} dimensions")
    check_positions("row", rows, S.shape[0])
    check_positions("column", cols, S.shape[1])
    if np.unique(cols).size != cols.size:
        raise ValueError("a support names each column once")
    if S.dtype != np.float64:  # the kernel is compiled for float64; numpy for the rest
        sub = S[np.ix_(rows, cols)]
        return sub, bool(np.count_nonzero(S[rows]) == np.count_nonzero(sub))
    out = np.empty((rows.size, cols.size))
    if rows.size == 0:
        return out, True
    return out, bool(compiled(_support_rows)(S, rows, cols, out))
