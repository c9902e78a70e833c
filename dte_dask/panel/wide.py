"""Entity-partitioned wide blocks of a long panel with a general (multi-valued, switching)
treatment, for ``did_multiplegt`` and ``twowayfeweights``.

A pandas frame is pivoted once and cut into blocks of whole RNG blocks (as ``load_panel`` does for
pandas input). A dask DataFrame, or a parquet file/directory/glob read lazily, is never gathered on
the driver: each partition is scanned for its periods and entity range (small), shuffled by entity
only when its partitions are not already sorted and disjoint (``dte-dask simulate`` writes them
so), pivoted to a :class:`~dte_dask.core.dcdh.DcdhBlock` on the workers, and re-cut along RNG-block
boundaries; the blocks are persisted (or left lazy, for a caller that persists its own transform of
them), and only per-cell sums come back from the kernels.

Entities are clusters when ``cluster`` is given, else units; within a block, units are ordered by
(entity, unit). The global entity rank is the entity's position among all sorted entities, so the
blocks (and every reduction over them) are the same whatever the input partitioning.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
from dask.base import tokenize

from dte_dask.core.dcdh import DcdhBlock
from dte_dask.exceptions import ColumnTypeError, MissingColumnError, PanelError, SpecError, examples
from dte_dask.panel.load import disjoint_sorted
from dte_dask.panel.periods import missing_periods

__all__ = ["WideBlocks", "WideColumns", "concat_dcdh", "frame_to_dcdh", "wide_blocks"]


@dataclass(frozen=True)
class WideColumns:
    outcome: str
    unit: str
    time: str
    treatment: str
    weights: str | None = None
    cluster: str | None = None

    @property
    def entity(self) -> str:
        return self.cluster if self.cluster is not None else self.unit

    def named(self) -> dict[str, str]:
        roles = {"outcome": self.outcome, "unit": self.unit, "time": self.time, "treatment": self.treatment,
                 "weights": self.weights, "cluster": self.cluster}
        return {r: c for r, c in roles.items() if c is not None}

    def columns(self) -> list[str]:
        return list(dict.fromkeys(self.named().values()))


@dataclass(frozen=True)
class WideBlocks:
    """Delayed :class:`DcdhBlock` partitions (whole RNG blocks each), the sorted period labels, the
    number of RNG blocks and of entities."""

    parts: list
    times: np.ndarray
    n_blocks: int
    n_entities: int

    @property
    def n_periods(self) -> int:
        return int(self.times.size)


def frame_to_dcdh(df: pd.DataFrame, cols: WideColumns, times: np.ndarray) -> DcdhBlock:
    """Pivot the long rows of whole entities to a wide block; ``rank`` is the entity's index among the
    frame's sorted entities (local: add the offset of earlier partitions)."""
    unit, time = cols.unit, cols.time
    if df[time].isna().any():
        na = df[time].isna().to_numpy()
        raise missing_periods(time, int(na.sum()), list(pd.unique(df[unit][na])[:5]))
    ui, units = _unit_codes(df[unit])
    ti = np.searchsorted(times, df[time].to_numpy())
    n, T = units.size, times.size
    if cols.cluster is not None:
        c = cols.cluster
        per = df.groupby(unit)[c].nunique(dropna=False)
        if (per > 1).any():
            raise PanelError(f"column {c!r} (cluster) varies within unit {per.index[per > 1][0]!r}")
        cl_u = pd.Series(df[c].to_numpy(), index=ui).groupby(level=0).first().reindex(range(n))
        _, cl = np.unique(cl_u.to_numpy(), return_inverse=True)
        cl = cl.reshape(-1).astype(np.int64)
        order = np.lexsort((np.arange(n), cl))
    else:
        cl = np.arange(n, dtype=np.int64)
        order = None
    flat = ui * T + ti
    Y, D, W = (np.full(n * T, np.nan) for _ in range(3))
    P = np.zeros(n * T, bool)
    Y[flat] = df[cols.outcome].to_numpy(dtype=float, na_value=np.nan)
    D[flat] = df[cols.treatment].to_numpy(dtype=float, na_value=np.nan)
    for name, values in ((cols.outcome, Y), (cols.treatment, D)):
        if np.isinf(values).any():  # NaN is a missing cell; an infinite value is an error
            bad = np.flatnonzero(np.isinf(values))
            pairs = [(units[i // T], times[i % T]) for i in bad[:5]]
            raise ColumnTypeError(f"column {name!r} has {bad.size} infinite values, e.g. (unit, period) {examples(pairs)}")
    W[flat] = (1.0 if cols.weights is None
               else np.nan_to_num(df[cols.weights].to_numpy(dtype=float, na_value=np.nan)))
    P[flat] = True
    if np.count_nonzero(P) != len(df):
        ut = df[[unit, time]]
        bad = ut.loc[ut.duplicated()].iloc[0].tolist()
        raise PanelError(f"duplicate rows for unit {bad[0]!r} at {time} = {bad[1]!r}")
    Y, D, W, P = (a.reshape(n, T) for a in (Y, D, W, P))
    if order is None:
        return DcdhBlock(units, cl, Y, D, W, P, cl.copy())
    rank = cl[order]
    return DcdhBlock(units[order], rank, Y[order], D[order], W[order], P[order], rank.copy())


def _unit_codes(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Codes of the unit ids in their sorted order and the sorted ids (no search for sorted ids)."""
    arr = s.to_numpy()
    if arr.dtype.kind in "iuf" and arr.size and s.is_monotonic_increasing:
        new = np.empty(arr.shape, bool)
        new[0] = True
        np.not_equal(arr[1:], arr[:-1], out=new[1:])
        return np.cumsum(new) - 1, arr[new]
    units = np.sort(pd.unique(s))
    return np.searchsorted(units, arr), units


def concat_dcdh(pieces: list[tuple[DcdhBlock, int, int, int]]) -> DcdhBlock:
    """The units of raw blocks (with their rank offsets) whose global ranks fall in ``[a, b)``."""
    out = []
    for block, offset, a, b in pieces:
        rank = block.rank + offset
        lo, hi = np.searchsorted(rank, [a, b])
        sl = slice(int(lo), int(hi))
        out.append(DcdhBlock(block.ids[sl], rank[sl], block.y[sl], block.d[sl], block.w[sl], block.present[sl],
                             rank[sl].copy()))
    return DcdhBlock(*(np.concatenate([getattr(b, f) for b in out]) for f in
                       ("ids", "rank", "y", "d", "w", "present", "cl")))


def _n_entities(block: DcdhBlock) -> int:
    return int(block.rank[-1]) + 1 if block.n else 0


def _cuts(n_blocks: int, block_size: int, npartitions: int) -> np.ndarray:
    k = min(max(int(npartitions), 1), max(n_blocks, 1))
    return np.linspace(0, n_blocks, k + 1).round().astype(np.int64) * block_size


def _check_times(times: np.ndarray, time: str) -> np.ndarray:
    times = np.sort(times)
    steps = np.diff(times.astype(float))
    if steps.size and not np.allclose(steps, steps[0]):
        raise PanelError(f"column {time!r}: periods must be equally spaced (got {times[:6].tolist()}...)")
    return times


def _missing(available: Any, cols: WideColumns, who: str) -> None:
    for role, c in cols.named().items():
        if c not in available:
            raise MissingColumnError(f"{who}: column {c!r} ({role}) is not in the data")


def wide_blocks(data: Any, cols: WideColumns, npartitions: int, block_size: int, who: str,
                persist: bool = True) -> WideBlocks:
    """Blocks of ``data`` (pandas or dask DataFrame, or a parquet path) cut along RNG blocks;
    ``persist=False`` leaves the re-cut blocks of dask input lazy (not held twice in memory when the
    caller persists a transform of them)."""
    if isinstance(data, (str, Path)):
        try:
            data = dd.read_parquet(str(data), columns=None)
        except (FileNotFoundError, OSError, ValueError) as e:
            raise SpecError(f"{who}: cannot read parquet {str(data)!r}: {e}") from e
    if isinstance(data, dd.DataFrame):
        _missing(data.columns, cols, who)
        return _from_dask(data[cols.columns()], cols, npartitions, block_size, persist)
    if not isinstance(data, pd.DataFrame):
        raise SpecError(f"{who}: `data` must be a pandas or dask DataFrame or a parquet path")
    _missing(data.columns, cols, who)
    times = _check_times(pd.unique(data[cols.time].dropna()), cols.time)
    block = frame_to_dcdh(data, cols, times)
    n_ent = _n_entities(block)
    nb = -(-n_ent // block_size)
    cuts = _cuts(nb, block_size, npartitions)
    lo, hi = np.searchsorted(block.rank, cuts[:-1]), np.searchsorted(block.rank, cuts[1:])
    parts = [dask.delayed(block.take(slice(int(a), int(b))), pure=False) for a, b in zip(lo, hi)]
    return WideBlocks(parts, times, nb, n_ent)


def _scan(df: pd.DataFrame, entity: str, time: str) -> dict[str, Any]:
    ent = df[entity]
    return {"rows": len(df), "min": ent.min() if len(df) else None, "max": ent.max() if len(df) else None,
            "sorted": bool(ent.is_monotonic_increasing), "times": pd.unique(df[time].dropna()),
            "time_na": int(df[time].isna().sum()), "time_na_units": list(pd.unique(ent[df[time].isna().to_numpy()])[:5])}


def _from_dask(ddf: dd.DataFrame, cols: WideColumns, npartitions: int, block_size: int,
               persist: bool = True) -> WideBlocks:
    parts = ddf.to_delayed()
    token = tokenize(ddf, cols)
    # the scan reads only the entity and time columns
    scans = dask.compute(*[dask.delayed(_scan, pure=True)(p, cols.entity, cols.time,
                                                          dask_key_name=f"dcdh-scan-{token}-{i}")
                           for i, p in enumerate(ddf[list(dict.fromkeys([cols.entity, cols.time]))].to_delayed())])
    n_na = sum(s["time_na"] for s in scans)
    if n_na:
        raise missing_periods(cols.time, n_na, [u for s in scans for u in s["time_na_units"]])
    full = [s for s in scans if s["rows"]]
    times = _check_times(pd.unique(np.concatenate([np.asarray(s["times"]) for s in full]))
                         if full else np.zeros(0), cols.time)
    if disjoint_sorted(full):
        keep = sorted((i for i, s in enumerate(scans) if s["rows"]), key=lambda i: scans[i]["min"])
        parts = [parts[i] for i in keep]
    else:
        ddf = ddf.set_index(cols.entity, drop=False, npartitions=max(1, ddf.npartitions)).reset_index(drop=True)
        parts = ddf.to_delayed()
    tok = tokenize(token, times)
    raw = [dask.delayed(frame_to_dcdh, pure=True)(p, cols, times, dask_key_name=f"dcdh-pivot-{tok}-{i}")
           for i, p in enumerate(parts)]
    raw = list(dask.persist(*raw))
    counts = dask.compute(*[dask.delayed(_n_entities, pure=True)(b) for b in raw])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n_ent = int(offsets[-1])
    nb = -(-n_ent // block_size)
    cuts = _cuts(nb, block_size, npartitions)
    blocks = []
    for j, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        pieces = [(raw[i], int(offsets[i]), int(a), int(b)) for i in range(len(raw))
                  if offsets[i] < b and offsets[i + 1] > a]
        if pieces:
            blocks.append(dask.delayed(concat_dcdh, pure=True)(pieces, dask_key_name=f"dcdh-block-{tok}-{j}"))
    return WideBlocks(list(dask.persist(*blocks)) if persist else blocks, times, nb, n_ent)
