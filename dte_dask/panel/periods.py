"""Map period labels (integers or dates) to ordered period indices 0..T-1.

Everything inside dte_dask works with period *indices*; labels are kept for output. Integer
periods must be equally spaced (event time is measured in periods), dates must have a regular
frequency that pandas can infer.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dte_dask.exceptions import ColumnTypeError, PeriodError, examples


def missing_periods(column: str, n_na: int, units: list | None = None) -> PeriodError:
    """The error for ``n_na`` missing period labels, naming up to five of the units they belong to."""
    who = f" for units {examples(units)}" if units else ""
    return PeriodError(f"column {column!r} (time) has {n_na} missing values{who}; drop those rows or fill in "
                       "their periods")


@dataclass(frozen=True)
class PeriodMap:
    """Ordered period labels and the rule that maps labels to indices."""

    labels: np.ndarray  # sorted unique labels (int64 or datetime64[ns])
    kind: str  # "int" or "datetime"
    step: float = 1.0  # label units per period (int kind)
    column: str = "time"

    @property
    def n_periods(self) -> int:
        return int(len(self.labels))

    @property
    def event_step(self) -> int:
        """Event time per period, in the time column's units (1 for dates: event time in periods)."""
        return int(self.step) if self.kind == "int" else 1

    @classmethod
    def from_values(cls, values: np.ndarray | pd.Series, column: str) -> PeriodMap:
        """Build the map from all observed period values (any order, repeats allowed)."""
        s = pd.Series(values)
        if s.isna().any():
            raise PeriodError(f"column {column!r} (time) has {int(s.isna().sum())} missing values")
        if pd.api.types.is_datetime64_any_dtype(s.dtype):
            labels = np.sort(pd.unique(s.to_numpy(dtype="datetime64[ns]")))
            return cls._from_dates(labels, column)
        if not pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
            raise PeriodError(
                f"column {column!r} (time) must hold integer periods or dates, got dtype {s.dtype}"
            )
        arr = s.to_numpy()
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
                bad = arr[~np.isfinite(arr) | (arr != np.round(arr))]
                raise PeriodError(f"column {column!r} (time) has non-integer periods {examples(np.unique(bad))}")
            arr = arr.astype(np.int64)
        return cls._from_ints(distinct_ints(arr.astype(np.int64, copy=False)), column)

    @classmethod
    def _from_ints(cls, labels: np.ndarray, column: str) -> PeriodMap:
        if len(labels) < 2:
            raise PeriodError(f"column {column!r} (time) has {len(labels)} distinct period(s); at least 2 are needed")
        gaps = np.diff(labels)
        step = int(gaps.min())
        irregular = np.flatnonzero(gaps != step)
        if irregular.size:
            pairs = [f"{labels[i]}->{labels[i + 1]}" for i in irregular[:5]]
            raise PeriodError(
                f"column {column!r} (time) has irregular periods: consecutive periods are {step} apart "
                f"except {', '.join(pairs)}. Periods must be equally spaced (recode them to consecutive "
                "integers if they are meant to be consecutive)"
            )
        return cls(labels=labels, kind="int", step=float(step), column=column)

    @classmethod
    def _from_dates(cls, labels: np.ndarray, column: str) -> PeriodMap:
        if len(labels) < 2:
            raise PeriodError(f"column {column!r} (time) has {len(labels)} distinct date(s); at least 2 are needed")
        if len(labels) >= 3 and _infer_freq(labels) is None:
            # the first irregular step: the shortest prefix with no frequency ends there
            lo, hi = 2, len(labels) - 1  # labels[: hi + 1] has no frequency, labels[:2] always has one
            while lo < hi:
                mid = (lo + hi) // 2
                if _infer_freq(labels[: mid + 1]) is None:
                    hi = mid
                else:
                    lo = mid + 1
            first = f"{examples([labels[hi - 1]])[1:-1]} -> {examples([labels[hi]])[1:-1]}"
            gaps = np.diff(labels).astype("timedelta64[D]").astype(np.int64)
            raise PeriodError(
                f"column {column!r} (time) holds dates with no regular frequency: the first irregular "
                f"step is {first} (gaps in days: {examples(np.unique(gaps))}); aggregate them to regular "
                "periods first"
            )
        return cls(labels=labels, kind="datetime", step=1.0, column=column)

    # ------------------------------------------------------------------ mapping
    def time_index(self, values: np.ndarray) -> np.ndarray:
        """Indices (int64) of observed time values; every value must be a known period."""
        arr = self._coerce(values)
        if self.kind == "int" and arr.size:
            pos = self._arithmetic_index(arr)
            if pos is not None:
                return pos
        pos = np.searchsorted(self.labels, arr)
        pos_c = np.minimum(pos, len(self.labels) - 1)
        bad = self.labels[pos_c] != arr
        if bad.any():
            raise PeriodError(f"column {self.column!r} has values that are not periods of the panel: {examples(np.unique(arr[bad]))}")
        return pos_c.astype(np.int64)

    def _arithmetic_index(self, arr: np.ndarray) -> np.ndarray | None:
        """Indices of int64 ``arr`` by arithmetic on equally spaced labels (no search); None when
        some value is not a period (the search then names them)."""
        lo, hi, step = int(self.labels[0]), int(self.labels[-1]), int(self.step)
        if hi - lo != step * (len(self.labels) - 1) or int(arr.min()) < lo or int(arr.max()) > hi:
            return None
        pos = arr - lo
        if step == 1:
            return pos
        return None if np.any(pos % step) else pos // step

    def group_index(self, values: np.ndarray, column: str) -> np.ndarray:
        """Group labels -> float period index; never treated (0, NaN, +inf, NaT) -> +inf.

        Groups before the first period get negative indices (treated before the panel starts),
        groups after the last period get indices above T-1. A group inside the observed range
        must fall on a period.
        """
        if self.kind == "datetime":
            arr = _group_dates(values, column)
            never = np.isnat(arr)
            out = np.full(arr.shape, np.inf)
            vals = arr[~never]
            pos = np.searchsorted(self.labels, vals)
            inside = (vals >= self.labels[0]) & (vals <= self.labels[-1])
            exact = np.zeros(vals.shape, dtype=bool)
            exact[inside] = self.labels[np.minimum(pos[inside], len(self.labels) - 1)] == vals[inside]
            if np.any(inside & ~exact):
                raise PeriodError(f"column {column!r} (group) has dates that are not periods of the panel: {examples(np.unique(vals[inside & ~exact]))}")
            span = (self.labels[-1] - self.labels[0]) / max(len(self.labels) - 1, 1)
            res = np.where(inside, pos, (vals - self.labels[0]) / span)
            out[~never] = res.astype(float)
            return out
        arr = np.asarray(values, dtype=float)
        never = np.isnan(arr) | np.isinf(arr) | (arr == 0)
        if np.any(arr[~np.isnan(arr)] < 0):
            raise PeriodError(f"column {column!r} (group) has negative values {examples(np.unique(arr[arr < 0]))}")
        idx = (arr - self.labels[0]) / self.step
        inside = ~never & (arr >= self.labels[0]) & (arr <= self.labels[-1])
        off = inside & (idx != np.round(idx))
        if off.any():
            raise PeriodError(
                f"column {column!r} (group) has first-treatment periods that fall between periods of the panel: {examples(np.unique(arr[off]))}"
            )
        return np.where(never, np.inf, idx)

    def label(self, index: np.ndarray | int | float) -> np.ndarray:
        """Labels of (integer) period indices."""
        return self.labels[np.asarray(index, dtype=np.int64)]

    def _coerce(self, values: np.ndarray) -> np.ndarray:
        if self.kind == "datetime":
            return pd.to_datetime(pd.Series(values)).to_numpy(dtype="datetime64[ns]")
        arr = np.asarray(values)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.int64)
        return arr.astype(np.int64)  # a copy: callers may modify it


def distinct_ints(arr: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an int64 array: a count over the range when it is short (periods
    usually are), else a hash-based ``pandas.unique`` and a sort of the few distinct values."""
    if arr.size == 0:
        return arr[:0]
    lo, hi = int(arr.min()), int(arr.max())
    if 0 <= lo and hi < max(arr.size, 1 << 16):  # no shift needed
        return np.flatnonzero(np.bincount(arr, minlength=hi + 1)[lo:]) + lo
    if hi - lo < max(arr.size, 1 << 16):
        return np.flatnonzero(np.bincount(arr - lo, minlength=hi - lo + 1)) + lo
    return np.sort(pd.unique(arr))


def _infer_freq(labels: np.ndarray) -> object:
    """``pandas.infer_freq`` of sorted dates (only None-ness is used), without pandas' warning
    about its future return type."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pd.infer_freq(pd.DatetimeIndex(labels))


def _is_never_number(v: object) -> bool:
    return (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
            and (v == 0 or bool(np.isinf(v))))


def _group_dates(values: np.ndarray | pd.Series, column: str) -> np.ndarray:
    """Group values of a date panel as datetime64[ns]; 0, +inf, NaN and NaT mean never treated."""
    s = pd.Series(values)
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        return pd.to_datetime(s).to_numpy(dtype="datetime64[ns]")
    if pd.api.types.is_bool_dtype(s.dtype):
        raise ColumnTypeError(f"column {column!r} (group) must hold dates like the time column, got dtype {s.dtype}")
    if pd.api.types.is_numeric_dtype(s.dtype):
        s = s.astype(object)
    s = s.where(~(s.isna() | s.map(_is_never_number)), None)
    numbers = s[s.notna() & s.map(lambda v: isinstance(v, (int, float, np.integer, np.floating, bool, np.bool_)))]
    if len(numbers):
        raise ColumnTypeError(
            f"column {column!r} (group) must hold dates like the time column (NaT or 0 = never treated); "
            f"found numbers {examples(pd.unique(numbers)[:20])}"
        )
    try:
        return pd.to_datetime(s).to_numpy(dtype="datetime64[ns]")
    except (ValueError, TypeError, OverflowError):
        bad = []
        for v in pd.unique(s.dropna())[:1000]:
            try:
                pd.to_datetime(v)
            except (ValueError, TypeError, OverflowError):
                bad.append(v)
        what = f"cannot read {examples(bad)} as dates" if bad else \
            f"cannot read its values (e.g. {examples(pd.unique(s.dropna()))}) as dates of one format"
        raise ColumnTypeError(
            f"column {column!r} (group) must hold dates like the time column (NaT or 0 = never treated); {what}"
        ) from None
