"""Building the per-partition wide blocks from long pandas frames, and Dask's ``sizeof`` of a block.

The block type itself, :class:`~dte_dask.core.blocks.UnitBlock` (and :class:`BlockSummary`), is
pure numpy and lives in :mod:`dte_dask.core.blocks`; this module holds what needs pandas or Dask.
Building a block is also where the panel is validated, so bad input fails before any heavy work.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from dask.sizeof import sizeof

from dte_dask.core.blocks import BlockSummary, UnitBlock, summarize
from dte_dask.exceptions import (
    ColumnTypeError,
    DuplicateRowsError,
    GroupError,
    MissingValuesError,
    PanelError,
    examples,
)
from dte_dask.panel.periods import PeriodMap
from dte_dask.panel.spec import PanelSpec

__all__ = ["BlockSummary", "UnitBlock", "frame_to_block", "summarize"]


@sizeof.register(UnitBlock)
def _sizeof_unit_block(block: UnitBlock) -> int:
    """Bytes held by a block, so that dask's memory accounting and spilling see them."""
    arrays = (block.ids, block.rank, block.g, block.w, block.cluster, block.y, block.x)
    return int(sum(sizeof(a) for a in arrays if a is not None))


# ---------------------------------------------------------------------------------------------
def frame_to_block(df: pd.DataFrame, spec: PanelSpec, periods: PeriodMap) -> UnitBlock:
    """Validate a long frame holding whole units (whole clusters) and pivot it to a block.

    ``rank`` is local (0..n_entities-1); the caller adds the partition's offset.
    Raises a :class:`PanelError` subclass naming the column, units and periods at fault.
    """
    T = periods.n_periods
    uid = df[spec.unit]
    if uid.isna().any():
        raise MissingValuesError(f"column {spec.unit!r} (unit) has {int(uid.isna().sum())} missing ids")
    codes, uniques = _sorted_codes(uid)
    n = len(uniques)
    tidx = periods.time_index(df[spec.time].to_numpy())
    key = codes.astype(np.int64) * T + tidx
    _check_duplicates(key, n * T, uniques, periods, spec, codes, tidx)

    y = df[spec.outcome].to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isnan(y).any():
        bad = np.flatnonzero(np.isnan(y))
        pairs = [(uniques[codes[i]], periods.labels[tidx[i]]) for i in bad[:5]]
        raise MissingValuesError(
            f"column {spec.outcome!r} (outcome) has {bad.size} missing values, e.g. (unit, period) "
            f"{examples(pairs)}; drop those rows (the panel is then unbalanced: pass "
            "allow_unbalanced_panel=True to keep the other periods of those units)"
        )
    if np.isinf(y).any():
        bad = np.flatnonzero(np.isinf(y))
        pairs = [(uniques[codes[i]], periods.labels[tidx[i]]) for i in bad[:5]]
        raise ColumnTypeError(f"column {spec.outcome!r} (outcome) has {bad.size} infinite values, e.g. (unit, period) {examples(pairs)}")
    # column-major: estimators gather whole periods (columns) at a time
    Y = np.full(n * T, np.nan)
    Y[tidx * n + codes] = y
    Y = Y.reshape(n, T, order="F")

    g = _group(df, spec, periods, codes, tidx, n, uniques)
    w = np.ones(n)
    if spec.weights is not None:
        wr = df[spec.weights].to_numpy(dtype=np.float64, na_value=np.nan)
        if not np.all(np.isfinite(wr)) or np.any(wr < 0):
            bad = np.flatnonzero(~np.isfinite(wr) | (wr < 0))
            raise PanelError(f"column {spec.weights!r} (weights) must be finite and non-negative; units {examples(uniques[np.unique(codes[bad])])}")
        w = _per_unit(wr, codes, n, spec.weights, uniques, "weights")
    cluster = None
    if spec.cluster is not None:
        cr = df[spec.cluster]
        if cr.isna().any():
            raise MissingValuesError(f"column {spec.cluster!r} (cluster) has missing values for units {examples(uniques[np.unique(codes[cr.isna().to_numpy()])])}")
        cluster = _per_unit(cr.to_numpy(), codes, n, spec.cluster, uniques, "cluster")
    x = _covariates(df, spec, codes, tidx, n, T, uniques)

    # order units by (entity, unit) and give each entity a local rank
    if cluster is not None:
        ccodes, _ = _sorted_codes(pd.Series(cluster))
        order = np.argsort(ccodes, kind="stable")
        rank = ccodes[order].astype(np.int64)
        uniques, g, w, cluster, Y = uniques[order], g[order], w[order], cluster[order], Y[order]
        x = None if x is None else x[order]
    else:
        rank = np.arange(n, dtype=np.int64)
    return UnitBlock(ids=np.asarray(uniques), rank=rank, g=g, w=w, cluster=cluster, y=Y, x=x)


def _sorted_codes(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Codes of ``s`` in sorted order of its values (fast path for already sorted ids)."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        s = s.astype(s.cat.categories.dtype)
    arr = s.to_numpy()
    if arr.dtype.kind in "iuf" and s.is_monotonic_increasing:
        new = np.empty(arr.shape, dtype=bool)
        new[:1] = True
        np.not_equal(arr[1:], arr[:-1], out=new[1:])
        codes = np.cumsum(new) - 1
        return codes, arr[new]
    try:
        codes, uniques = pd.factorize(s, sort=True)
    except TypeError as exc:  # mixed types that cannot be ordered
        raise ColumnTypeError(f"column {s.name!r} (unit) mixes id types that cannot be ordered: {exc}") from None
    return codes, np.asarray(uniques)


def _check_duplicates(key, size, uniques, periods, spec, codes, tidx) -> None:
    counts = np.bincount(key, minlength=size)
    if counts.max(initial=0) > 1:
        dup_keys = np.flatnonzero(counts > 1)
        T = periods.n_periods
        pairs = [(uniques[k // T], periods.labels[k % T]) for k in dup_keys[:5]]
        raise DuplicateRowsError(
            f"{int((counts[dup_keys] - 1).sum())} duplicate rows: the same ({spec.unit!r}, {spec.time!r}) "
            f"pair appears more than once for {dup_keys.size} pairs, e.g. {examples(pairs)}"
        )


def _per_unit(values: np.ndarray, codes: np.ndarray, n: int, column: str, uniques, role: str) -> np.ndarray:
    """The one value each unit has in ``values``; raises if it varies within a unit."""
    out = np.empty(n, dtype=values.dtype)
    out[codes] = values
    same = out[codes] == values
    if values.dtype.kind == "f":
        same |= np.isnan(out[codes]) & np.isnan(values)
    if not np.all(same):
        bad = np.unique(codes[~same])
        raise GroupError(
            f"column {column!r} ({role}) varies within unit for {bad.size} units, e.g. {examples(uniques[bad])}; "
            f"{role} must be constant within each unit"
        )
    return out


def _group(df, spec, periods, codes, tidx, n, uniques) -> np.ndarray:
    col = spec.group_source
    raw = df[col]
    if spec.group is not None:
        if periods.kind == "datetime":
            g_row = periods.group_index(raw.to_numpy(), col)
        else:
            if not pd.api.types.is_numeric_dtype(raw.dtype) or pd.api.types.is_bool_dtype(raw.dtype):
                raise ColumnTypeError(f"column {col!r} (group) must be numeric (first treated period; 0 = never treated), got dtype {raw.dtype}")
            g_row = periods.group_index(raw.to_numpy(dtype=np.float64, na_value=np.nan), col)
        return _per_unit(g_row, codes, n, col, uniques, "group")
    if not (pd.api.types.is_numeric_dtype(raw.dtype) or pd.api.types.is_bool_dtype(raw.dtype)):
        raise ColumnTypeError(f"column {col!r} (treatment) must be a 0/1 (or boolean) indicator, got dtype {raw.dtype}")
    d = raw.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isin(d, (0.0, 1.0))
    if bad.any():
        raise ColumnTypeError(
            f"column {col!r} (treatment) must be 0/1 with no missing values; found {examples(np.unique(d[bad]))} "
            f"for units {examples(uniques[np.unique(codes[bad])])}"
        )
    g = np.full(n, np.inf)
    on = d == 1
    np.minimum.at(g, codes[on], tidx[on].astype(float))
    switched_off = (~on) & (tidx > g[codes])
    if switched_off.any():
        i = np.flatnonzero(switched_off)
        pairs = [(uniques[codes[j]], periods.labels[tidx[j]]) for j in i[:5]]
        raise GroupError(
            f"column {col!r} (treatment) is not absorbing: it switches back to 0 after the first treated "
            f"period for {np.unique(codes[i]).size} units, e.g. (unit, period) {examples(pairs)}"
        )
    return g


def _covariates(df, spec, codes, tidx, n, T, uniques) -> np.ndarray | None:
    if not spec.covariates:
        return None
    cols = []
    varying = False
    for c in spec.covariates:
        v = df[c].to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isnan(v).any():
            bad = uniques[np.unique(codes[np.isnan(v)])]
            raise MissingValuesError(f"column {c!r} (covariate) has missing values for units {examples(bad)}")
        first = np.empty(n)
        first[codes] = v
        varying |= bool(np.any(first[codes] != v))
        cols.append(v)
    if not varying:
        x = np.empty((n, len(cols)))
        for j, v in enumerate(cols):
            x[codes, j] = v
        return x
    x = np.full((n, T, len(cols)), np.nan)
    for j, v in enumerate(cols):
        x[codes, tidx, j] = v
    return x
