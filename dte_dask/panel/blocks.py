"""Building the per-partition wide blocks from long pandas frames, and Dask's ``sizeof`` of a block.

The block type itself, :class:`~dte_dask.core.blocks.UnitBlock` (and :class:`BlockSummary`), is
pure numpy and lives in :mod:`dte_dask.core.blocks`; this module holds what needs pandas or Dask.
Building a block is also where the panel is validated, so bad input fails before any heavy work.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from dask.sizeof import sizeof

from dte_dask.core.blocks import BlockSummary, UnitBlock, count_distinct, summarize
from dte_dask.exceptions import (
    ColumnTypeError,
    DuplicateRowsError,
    GroupError,
    MissingValuesError,
    PanelError,
    examples,
)
from dte_dask.panel.periods import PeriodMap, missing_periods
from dte_dask.panel.spec import PanelSpec

__all__ = ["BlockSummary", "UnitBlock", "concat_blocks", "frame_to_block", "summarize"]


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
    uid = df[spec.unit]
    if uid.isna().any():
        raise MissingValuesError(f"column {spec.unit!r} (unit) has {int(uid.isna().sum())} missing ids")
    return _to_block(df, spec, periods, _unit_major_ids(uid, df[spec.time], periods))


def periods_and_block(df: pd.DataFrame, spec: PanelSpec) -> tuple[PeriodMap, UnitBlock]:
    """The periods of a whole long frame and its block (``PeriodMap.from_values`` then
    :func:`frame_to_block`). A balanced frame sorted by (unit, time) needs no pass for its periods:
    its first unit's rows list them, which the layout check then confirms for every row."""
    uid, time = df[spec.unit], df[spec.time]
    guess = first_unit_periods(uid, time, spec.time)
    if guess is not None:
        uniques = _unit_major_ids(uid, time, guess)
        if uniques is not None:
            return guess, _to_block(df, spec, guess, uniques)
    if time.isna().any():
        raise missing_periods(spec.time, int(time.isna().sum()), list(pd.unique(uid[time.isna().to_numpy()])[:5]))
    periods = PeriodMap.from_values(time, spec.time)
    return periods, frame_to_block(df, spec, periods)


def first_unit_periods(uid: pd.Series, time: pd.Series, column: str) -> PeriodMap | None:
    """The periods of the first unit's leading rows if the ids and periods are integers and
    those periods are increasing and regular (a candidate for the whole frame), else None."""
    if not all(isinstance(c.dtype, np.dtype) and c.dtype.kind in "iu" for c in (uid, time)) or len(uid) < 2:
        return None
    head = uid.to_numpy()[:4097]
    change = np.flatnonzero(head != head[0])
    if change.size == 0 or change[0] < 2:
        return None
    labels = time.to_numpy()[: change[0]]
    if not np.all(labels[1:] > labels[:-1]):
        return None
    try:
        return PeriodMap.from_values(labels, column)
    except PanelError:
        return None


def _to_block(df: pd.DataFrame, spec: PanelSpec, periods: PeriodMap, uniques: np.ndarray | None) -> UnitBlock:
    """:func:`frame_to_block` once the unit ids are known not missing; ``uniques``: the ids of a
    unit-major frame (see :func:`_unit_major_ids`), or None for any other row order."""
    T = periods.n_periods
    uid = df[spec.unit]
    if uniques is not None:
        rows = _Rows(len(uniques), T)
    else:
        codes, uniques = _sorted_codes(uid)
        rows = _Rows(len(uniques), T, codes, periods.time_index(df[spec.time].to_numpy()))
        _check_duplicates(rows, uniques, periods, spec)
    n, codes, tidx = rows.n, rows.codes, rows.tidx  # codes, tidx: lazy (built only for an error message)

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
    Y = rows.wide(y)

    g = _group(df, spec, periods, rows, uniques)
    w = np.ones(n)
    if spec.weights is not None:
        wr = df[spec.weights].to_numpy(dtype=np.float64, na_value=np.nan)
        if not np.all(np.isfinite(wr)) or np.any(wr < 0):
            bad = np.flatnonzero(~np.isfinite(wr) | (wr < 0))
            raise PanelError(f"column {spec.weights!r} (weights) must be finite and non-negative; units {examples(uniques[np.unique(codes[bad])])}")
        w = _per_unit(wr, rows, spec.weights, uniques, "weights")
    cluster = None
    if spec.cluster is not None:
        cr = df[spec.cluster]
        if cr.isna().any():
            raise MissingValuesError(f"column {spec.cluster!r} (cluster) has missing values for units {examples(uniques[np.unique(codes[cr.isna().to_numpy()])])}")
        cluster = _per_unit(cr.to_numpy(), rows, spec.cluster, uniques, "cluster")
    x = _covariates(df, spec, rows, uniques, periods)

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


def concat_blocks(blocks: list[UnitBlock]) -> UnitBlock:
    """Blocks of consecutive entities (ranks already global) as one, each array in the layout of
    its parts (column-major outcomes stay column-major). If the covariates of some vary in time,
    those of the others take the same (n, T, p) layout (:meth:`UnitBlock.with_varying_x`)."""
    if len(blocks) == 1:
        return blocks[0]
    if any(b.x is not None and b.x.ndim == 3 for b in blocks):
        blocks = [b.with_varying_x() for b in blocks]
    return UnitBlock(*(stack_arrays([getattr(b, f) for b in blocks], column_major=f == "y")
                       for f in ("ids", "rank", "g", "w", "cluster", "y", "x")))


# The parquet route's worker-side steps (:func:`dte_dask.panel.load.load_panel`): a worker that
# runs them imports this module, not the loader with its Dask DataFrame machinery.
def raw_summary(block: UnitBlock | None) -> tuple[int, bool] | None:
    """Entities of a raw block and whether its covariates vary in time (all a layout needs)."""
    if block is None:
        return None
    return count_distinct(block.rank), block.x is not None and block.x.ndim == 3


def cut_block(block: UnitBlock, offset: int, a: int, b: int, varying_x: bool = False) -> UnitBlock:
    """The entities of a raw block (local ranks; its first entity's global rank is ``offset``)
    whose global ranks fall in ``[a, b)``, ranks made global: views of the raw block's arrays."""
    lo, hi = np.searchsorted(block.rank, [a - offset, b - offset])
    part = block.take(slice(int(lo), int(hi))).with_rank_offset(offset)
    return part.with_varying_x() if varying_x else part


def assemble_partition(parts: list[UnitBlock]) -> UnitBlock:
    """A partition from its parts (:func:`cut_block`), outcomes column-major as the raw blocks hold them:
    a part that came from another process arrives row-major (a slice of a column-major array
    travels as a row-major copy) and is laid out again, so a partition's layout, and with it every
    sum over it, does not depend on where its parts were cut."""
    block = concat_blocks(parts)
    y = block.y
    if y.ndim == 2 and y.shape[0] > 1 and y.shape[1] > 1 and y.strides[0] > y.strides[1]:
        block = dataclasses.replace(block, y=np.asfortranarray(y))
    return block


def stack_arrays(parts: list[np.ndarray | None], column_major: bool = False) -> np.ndarray | None:
    """``np.concatenate(parts)``: the same values, and the same layout except that parts
    laid out by column (row slices of column-major blocks) are copied column by column into a
    column-major result, several times faster than numpy's strided concatenation. A part of one row
    (or one column) has both layouts: it follows the others, and ``column_major`` when all have both
    (a block's outcomes are column-major however few its units)."""
    if parts[0] is None:
        return None
    if not all(a.ndim == 2 for a in parts):
        return np.concatenate(parts)
    plain = [a for a in parts if a.shape[0] > 1 and a.shape[1] > 1]
    if not (all(a.strides[0] < a.strides[1] for a in plain) and (plain or column_major)):
        return np.concatenate(parts)
    out = np.empty((sum(a.shape[0] for a in parts), *parts[0].shape[1:]), dtype=np.result_type(*parts), order="F")
    i = 0
    for a in parts:
        out[i:i + a.shape[0]] = a
        i += a.shape[0]
    return out


class _LazyIndex:
    """``np.repeat(arange(n), T)`` (``period=False``) or ``np.tile(arange(T), n)`` (``period=True``),
    built on first indexing: the row positions of a unit-major frame, only an error message needs."""

    def __init__(self, n: int, T: int, period: bool) -> None:
        self.n, self.T, self.period = n, T, period
        self._a: np.ndarray | None = None

    def array(self) -> np.ndarray:
        if self._a is None:
            self._a = np.tile(np.arange(self.T), self.n) if self.period else np.repeat(np.arange(self.n), self.T)
        return self._a

    def __getitem__(self, index):  # noqa: ANN001 - numpy indexing
        return self.array()[index]


class _Rows:
    """Where the rows of a long frame go in the (n x T) block: unit codes and period indices.

    Without ``codes``/``tidx`` the frame is unit-major (units in order, each with periods 0..T-1 in
    order): pivoting is a reshape, per-unit values are the rows' columns, nothing is scattered.
    """

    def __init__(self, n: int, T: int, codes: np.ndarray | None = None, tidx: np.ndarray | None = None) -> None:
        self.n, self.T = n, T
        self.unit_major = codes is None
        self.codes = _LazyIndex(n, T, False) if codes is None else codes
        self.tidx = _LazyIndex(n, T, True) if tidx is None else tidx

    def code_array(self) -> np.ndarray:
        return self.codes.array() if isinstance(self.codes, _LazyIndex) else self.codes

    def tidx_array(self) -> np.ndarray:
        return self.tidx.array() if isinstance(self.tidx, _LazyIndex) else self.tidx

    def wide(self, values: np.ndarray) -> np.ndarray:
        """(n, T) float block, column-major (estimators gather whole periods), NaN where no row."""
        n, T = self.n, self.T
        if self.unit_major:
            return _columns(values.reshape(n, T))
        out = np.full(n * T, np.nan)
        out[self.tidx * n + self.codes] = values
        return out.reshape(n, T, order="F")

    def unit_values(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A value per unit (its last row's) and, per row, whether the row holds that value."""
        if self.unit_major:
            v = values.reshape(self.n, self.T)
            out = v[:, -1].copy() if self.T else np.empty(0, dtype=values.dtype)
            back, values = v[:, -1:], v
        else:
            out = np.empty(self.n, dtype=values.dtype)
            out[self.codes] = values
            back = out[self.codes]
        same = back == values
        if values.dtype.kind in "fcmM" and not np.all(same):  # missing == missing
            same |= _missing(back) & _missing(values)
        return out, same.reshape(-1)


def _columns(v: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """``np.asfortranarray(v)`` of a C-ordered (n, T) array, transposed ``chunk`` rows at a time
    (cache-sized pieces: about twice as fast as numpy's one strided pass)."""
    n = v.shape[0]
    out = np.empty(v.shape[::-1], dtype=v.dtype)
    for a in range(0, n, chunk):
        out[:, a:a + chunk] = v[a:a + chunk].T
    return out.T


def _unit_major_ids(uid: pd.Series, time: pd.Series, periods: PeriodMap) -> np.ndarray | None:
    """The sorted unit ids if the frame is a balanced panel sorted by (unit, time) with integer
    ids and periods (a reshape then pivots it, and its rows cannot repeat a pair), else None."""
    T, N = periods.n_periods, len(uid)
    dt, tt = uid.dtype, time.dtype
    if (periods.kind != "int" or not isinstance(dt, np.dtype) or dt.kind not in "iu" or not isinstance(tt, np.dtype)
            or tt.kind not in "iu" or T == 0 or N == 0 or N % T):
        return None
    u = uid.to_numpy().reshape(N // T, T)
    first = u[:, 0]
    if not (np.all(first[1:] > first[:-1]) and np.all(u == first[:, None])):
        return None
    if not np.all(time.to_numpy().reshape(N // T, T) == periods.labels):
        return None
    return first.copy()


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


def _check_duplicates(rows: _Rows, uniques, periods, spec) -> None:
    T = periods.n_periods
    key = rows.codes.astype(np.int64) * T + rows.tidx
    counts = np.bincount(key, minlength=rows.n * T)
    if counts.max(initial=0) > 1:
        dup_keys = np.flatnonzero(counts > 1)
        pairs = [(uniques[k // T], periods.labels[k % T]) for k in dup_keys[:5]]
        raise DuplicateRowsError(
            f"{int((counts[dup_keys] - 1).sum())} duplicate rows: the same ({spec.unit!r}, {spec.time!r}) "
            f"pair appears more than once for {dup_keys.size} pairs, e.g. {examples(pairs)}"
        )


def _missing(a: np.ndarray) -> np.ndarray:
    return np.isnat(a) if a.dtype.kind in "mM" else np.isnan(a)


def _per_unit(values: np.ndarray, rows: _Rows, column: str, uniques, role: str) -> np.ndarray:
    """The one value each unit has in ``values``; raises if it varies within a unit."""
    out, same = rows.unit_values(values)
    if not np.all(same):
        bad = np.unique(rows.codes[~same])
        raise GroupError(
            f"column {column!r} ({role}) varies within unit for {bad.size} units, e.g. {examples(uniques[bad])}; "
            f"{role} must be constant within each unit"
        )
    return out


def _group(df, spec, periods, rows: _Rows, uniques) -> np.ndarray:
    col = spec.group_source
    raw = df[col]
    if spec.group is not None:
        if periods.kind == "datetime":
            values = raw.to_numpy()
        else:
            if not pd.api.types.is_numeric_dtype(raw.dtype) or pd.api.types.is_bool_dtype(raw.dtype):
                raise ColumnTypeError(f"column {col!r} (group) must be numeric (first treated period; 0 = never treated), got dtype {raw.dtype}")
            values = raw.to_numpy()
            if values.dtype.kind in "iu":  # no missing labels: compare the integers, convert one per unit
                per_unit, same = rows.unit_values(values)
                if np.all(same):
                    return periods.group_index(per_unit.astype(np.float64), col)
            values = raw.to_numpy(dtype=np.float64, na_value=np.nan)
        if values.dtype.kind in "fM":
            # map one label per unit, not one per row; if the labels vary within a unit (or read as
            # the same group only once mapped, 0 and NaN), map the rows, as that error needs
            per_unit, same = rows.unit_values(values)
            if np.all(same):
                return periods.group_index(per_unit, col)
        return _per_unit(periods.group_index(values, col), rows, col, uniques, "group")
    if not (pd.api.types.is_numeric_dtype(raw.dtype) or pd.api.types.is_bool_dtype(raw.dtype)):
        raise ColumnTypeError(f"column {col!r} (treatment) must be a 0/1 (or boolean) indicator, got dtype {raw.dtype}")
    d = raw.to_numpy(dtype=np.float64, na_value=np.nan)
    codes, tidx = rows.code_array(), rows.tidx_array()
    bad = ~np.isin(d, (0.0, 1.0))
    if bad.any():
        raise ColumnTypeError(
            f"column {col!r} (treatment) must be 0/1 with no missing values; found {examples(np.unique(d[bad]))} "
            f"for units {examples(uniques[np.unique(codes[bad])])}"
        )
    g = np.full(rows.n, np.inf)
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


def _covariates(df, spec, rows: _Rows, uniques, periods: PeriodMap) -> np.ndarray | None:
    if not spec.covariates:
        return None
    n, T = rows.n, rows.T
    cols, firsts = [], []
    varying = False
    for c in spec.covariates:
        v = df[c].to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isnan(v).any():
            bad = uniques[np.unique(rows.codes[np.isnan(v)])]
            raise MissingValuesError(f"column {c!r} (covariate) has missing values for units {examples(bad)}")
        if np.isinf(v).any():
            bad = np.flatnonzero(np.isinf(v))
            pairs = [(uniques[rows.codes[i]], periods.labels[rows.tidx[i]]) for i in bad[:5]]
            raise ColumnTypeError(f"column {c!r} (covariate) has {bad.size} infinite values, e.g. (unit, period) {examples(pairs)}")
        first, same = rows.unit_values(v)
        varying |= not bool(np.all(same))
        cols.append(v)
        firsts.append(first)
    if not varying:
        x = np.empty((n, len(cols)))
        for j, first in enumerate(firsts):
            x[:, j] = first
        return x
    x = np.full((n, T, len(cols)), np.nan)
    for j, v in enumerate(cols):
        if rows.unit_major:
            x[:, :, j] = v.reshape(n, T)
        else:
            x[rows.codes, rows.tidx, j] = v
    return x
