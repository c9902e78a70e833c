"""Per-partition wide blocks: one row per unit, one column per period.

A :class:`UnitBlock` holds every unit of one partition (whole clusters when clustering), sorted by
(entity, unit). All estimators read these blocks; building one from a long pandas frame is also
where the panel is validated, so bad input fails before any heavy work.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from dask.sizeof import sizeof

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


@dataclass(frozen=True)
class UnitBlock:
    """Wide arrays for the units of one partition.

    Attributes
    ----------
    ids : (n,) unit ids, sorted within each entity
    rank : (n,) int64 stable index of the unit's entity (cluster if clustering, else unit) among
        all entities of the panel; RNG blocks are ``rank // rng_block_size``
    g : (n,) float64 first treated period as a period index; ``inf`` = never treated
    w : (n,) float64 sampling weights (ones if none)
    cluster : (n,) cluster ids or None
    y : (n, T) float64 outcomes, NaN where a period is not observed
    x : (n, p) time-invariant covariates, (n, T, p) time-varying ones, or None
    """

    ids: np.ndarray
    rank: np.ndarray
    g: np.ndarray
    w: np.ndarray
    cluster: np.ndarray | None
    y: np.ndarray
    x: np.ndarray | None

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])

    @property
    def nobs(self) -> np.ndarray:
        """Observed periods per unit."""
        return (~np.isnan(self.y)).sum(axis=1)

    def take(self, index: np.ndarray | slice) -> UnitBlock:
        """Rows ``index`` (a boolean mask, integer positions or a slice)."""
        def sub(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]
        return UnitBlock(self.ids[index], self.rank[index], self.g[index], self.w[index],
                         sub(self.cluster), self.y[index], sub(self.x))

    def x_at(self, period: int) -> np.ndarray:
        """Covariates as of ``period`` (n, p); time-invariant covariates ignore it."""
        if self.x is None:
            return np.empty((self.n, 0))
        return self.x if self.x.ndim == 2 else self.x[:, period, :]

    def with_varying_x(self) -> UnitBlock:
        """Time-invariant covariates (n, p) as time-varying ones (n, T, p), NaN where y is not
        observed: the layout a block gets when any unit of the panel has varying covariates."""
        if self.x is None or self.x.ndim == 3:
            return self
        x = np.where(np.isnan(self.y)[:, :, None], np.nan, self.x[:, None, :])
        return replace(self, x=x)

    def with_rank_offset(self, offset: int) -> UnitBlock:
        return replace(self, rank=self.rank + offset)

    @staticmethod
    def concat(blocks: list[UnitBlock]) -> UnitBlock:
        if len(blocks) == 1:
            return blocks[0]
        def cat(name: str) -> Any:
            parts = [getattr(b, name) for b in blocks]
            return None if parts[0] is None else np.concatenate(parts)
        return UnitBlock(*(cat(f) for f in ("ids", "rank", "g", "w", "cluster", "y", "x")))


@sizeof.register(UnitBlock)
def _sizeof_unit_block(block: UnitBlock) -> int:
    """Bytes held by a block, so that dask's memory accounting and spilling see them."""
    arrays = (block.ids, block.rank, block.g, block.w, block.cluster, block.y, block.x)
    return int(sum(sizeof(a) for a in arrays if a is not None))


@dataclass(frozen=True)
class BlockSummary:
    """What the driver learns about a block: counts only, never per-unit arrays."""

    n_units: int
    n_entities: int
    n_rows: int
    cohorts: dict[float, int]  # group index -> units
    n_unbalanced: int  # units not observed in every period
    first_rank: int
    last_rank: int
    x_varying: bool = False  # covariates held as (n, T, p)
    n_weighted: int = -1  # units with a positive sampling weight (-1: not counted)


def summarize(block: UnitBlock) -> BlockSummary:
    gs, counts = np.unique(block.g, return_counts=True)
    nobs = block.nobs
    return BlockSummary(
        n_units=block.n,
        n_entities=int(np.unique(block.rank).size),
        n_rows=int(nobs.sum()),
        cohorts={float(k): int(c) for k, c in zip(gs, counts)},
        n_unbalanced=int(np.count_nonzero(nobs < block.y.shape[1])),
        first_rank=int(block.rank[0]) if block.n else -1,
        last_rank=int(block.rank[-1]) if block.n else -1,
        x_varying=block.x is not None and block.x.ndim == 3,
        n_weighted=int(np.count_nonzero(block.w > 0)),
    )


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
