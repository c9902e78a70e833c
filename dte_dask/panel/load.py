"""``load_panel``: read a long panel from parquet, CSV, pandas or dask and return a :class:`Panel`.

Two routes lead to the same blocks:

* a **pandas** frame is validated and pivoted in one vectorised step, then cut into partitions;
* a **dask** frame (and parquet/CSV files, read lazily) is scanned once for its periods and its
  unit ranges. If every partition already holds a sorted, disjoint range of units (files written by
  ``dte-dask simulate``, or any data written partitioned and sorted by unit), no shuffle is needed;
  otherwise rows are shuffled by unit (``set_index``) first. Each partition is then pivoted on the
  workers and the partitions are re-cut so that each holds whole RNG blocks.
"""
from __future__ import annotations

import glob
import os
import uuid
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
from dask.base import tokenize

from dte_dask import config, storage
from dte_dask.exceptions import (
    ColumnTypeError,
    DuplicateRowsError,
    MissingColumnError,
    NoControlGroupError,
    PanelError,
    PanelWarning,
    SpecError,
    examples,
)
from dte_dask.panel import parquet
from dte_dask.panel.blocks import (
    assemble_partition,
    cut_block,
    frame_to_block,
    periods_and_block,
    raw_summary,
)
from dte_dask.panel.panel import Panel, finish
from dte_dask.panel.periods import PeriodMap, distinct_ints, missing_periods
from dte_dask.panel.placement import on_worker, spread
from dte_dask.panel.spec import PanelSpec

ROW_ID = "_dte_row"  # the generated row id of a repeated cross section without one


def load_panel(
    source: Any,
    *,
    unit: str | None = None,
    time: str,
    outcome: str,
    group: str | None = None,
    treatment: str | None = None,
    covariates: Sequence[str] | str = (),
    weights: str | None = None,
    cluster: str | None = None,
    npartitions: int | None = None,
    allow_unbalanced_panel: bool = False,
    rng_block_size: int | None = None,
    panel: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> Panel:
    """Load and validate a long panel (one row per unit and period).

    Parameters
    ----------
    source : parquet file/directory/glob, CSV file/glob, pandas or dask DataFrame
        Never modified. Files may be in object storage: ``"s3://bucket/prefix/"``,
        ``"s3://bucket/prefix/*.parquet"`` (any fsspec URL; ``pip install 'dte_dask[s3]'``).
    unit, time, outcome : column names
        ``time`` holds equally spaced integer periods or dates with a regular frequency.
        With ``panel=False`` ``unit`` is optional: a row id, unique per row.
    group : column, optional
        First treated period (same labels as ``time``); 0, NaN or +inf = never treated.
    treatment : column, optional
        Absorbing 0/1 indicator, used to derive ``group`` (first period with 1) when ``group`` is
        not given.
    covariates, weights, cluster : columns, optional
        Weights and cluster must be constant within a unit; a cluster holds whole units and is then
        kept whole in one partition.
    npartitions : int, optional
        Default: about ``dte_dask.partition-units`` entities per partition.
    allow_unbalanced_panel : bool
        If False (default, as R ``did``), units not observed in every period are dropped with a
        warning.
    rng_block_size : int, optional
        Entities per bootstrap RNG block (default ``dte_dask.rng-block-size``). Partitions hold
        whole RNG blocks.
    panel : bool
        False for repeated cross sections (R ``did``'s ``panel=FALSE``): every row is its own
        observation, with its own group, weights, cluster and covariates. Each row becomes a
        "unit" observed in one period; its stable index (partitions, RNG blocks) is the order of
        the ``unit`` column if given (then results do not depend on the row order), else the
        original row order (the concatenated partitions of a dask frame or files).
    storage_options : mapping, optional
        For a URL ``source``: options of its fsspec filesystem, passed on to dask's readers
        (``endpoint_url``, ``profile``, ``anon``, ``client_kwargs``...). Credentials come from the
        environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``,
        ``AWS_PROFILE``) or a named ``profile``. Ignored for local paths and frames.

    Notes
    -----
    Units treated in or before the first period are dropped with a warning, as R ``did`` does.
    To skip the shuffle on large data, write the panel sorted by unit with each file holding a
    disjoint unit range (as ``dte-dask simulate`` does); the loader detects this on its scan.
    """
    if not panel and treatment is not None:
        raise PanelError("panel=False needs the `group` column (first treated period of each row's cohort): "
                         "a 0/1 treatment of one period per row does not tell when its cohort was first treated")
    generated = None
    if unit is None:
        if panel:
            raise PanelError("name the `unit` column (only repeated cross sections, panel=False, can do without one)")
        unit = generated = ROW_ID
    spec = PanelSpec(unit=unit, time=time, outcome=outcome, group=group, treatment=treatment,
                     covariates=tuple([covariates] if isinstance(covariates, str) else (covariates or ())),
                     weights=weights, cluster=cluster, repeated_cross_section=not panel)
    bs = int(config.get("rng-block-size", rng_block_size))
    if bs < 1:
        raise PanelError(f"rng_block_size must be >= 1, got {bs}")
    pieces = _parquet_plan(source, spec, generated)
    if pieces is not None:  # local parquet, disjoint unit ranges: read with pyarrow, pivot, no dask frame
        _check_columns(pieces.meta, spec)
        panel = _from_parquet(pieces, spec, bs, npartitions)
    else:
        frame = _read(source, spec, generated, storage_options)
        if generated is not None:
            if generated in frame.columns:
                raise PanelError(f"column {generated!r} is reserved for the generated row id; name it as `unit`")
            frame = _with_row_ids(frame, generated)
        _check_columns(frame, spec)
        if isinstance(frame, pd.DataFrame):
            panel = _from_pandas(frame if list(frame.columns) == spec.columns else frame[spec.columns], spec, bs, npartitions)
        else:
            panel = _from_dask(frame[spec.columns], spec, bs, npartitions)
    if spec.repeated_cross_section and panel.n_rows != panel.n_units:
        raise DuplicateRowsError(
            f"panel=False: column {unit!r} must identify rows ({panel.n_rows} rows, {panel.n_units} ids). "
            "Repeated observations of a unit are a panel: use panel=True (with allow_unbalanced_panel=True "
            "to keep units missing in some periods), or cluster on that column")
    panel = panel.drop_early_treated(0)
    if not allow_unbalanced_panel:
        panel = panel.balance()
    _check_controls(panel)
    _warn_late_cohorts(panel)
    return panel


def _add_rows(df: pd.DataFrame, column: str, offset: int) -> pd.DataFrame:
    return df.assign(**{column: np.arange(offset, offset + len(df), dtype=np.int64)})


def _with_row_ids(frame: pd.DataFrame | dd.DataFrame, column: str) -> pd.DataFrame | dd.DataFrame:
    """A row id column in the original row order (a dask frame: partitions concatenated)."""
    if isinstance(frame, pd.DataFrame):
        return _add_rows(frame, column, 0)
    parts = frame.to_delayed()
    lengths = dask.compute(*[dask.delayed(len, pure=True)(p) for p in parts])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    meta = _add_rows(frame._meta, column, 0)
    return dd.from_delayed([dask.delayed(_add_rows, pure=True)(p, column, int(o)) for p, o in zip(parts, offsets[:-1])],
                           meta=meta, verify_meta=False)


# ------------------------------------------------------------------------------------- reading
def _read(source: Any, spec: PanelSpec, generated: str | None = None,
          storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame | dd.DataFrame:
    """The frame with the spec's columns (files: only those), less a ``generated`` one."""
    wanted = [c for c in dict.fromkeys(spec.columns) if c != generated]
    if isinstance(source, (pd.DataFrame, dd.DataFrame)):
        return source
    if hasattr(source, "to_dask_dataframe"):
        return source.to_dask_dataframe()
    if storage.is_url(source):
        return _read_url(source, spec, wanted, generated, storage_options)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        files = sorted(glob.glob(path)) if any(ch in path for ch in "*?[") else [path]
        if not files or not all(os.path.exists(f) for f in files):
            raise PanelError(f"no file or directory matches {path!r}")
        first = files[0]
        if first.endswith(".csv") or first.endswith(".csv.gz"):
            _missing(spec, list(pd.read_csv(first, nrows=0).columns) + [generated])  # dask's usecols error names no role
            return dd.read_csv(files, usecols=wanted, blocksize="64MB")
        if os.path.isdir(first) or first.endswith((".parquet", ".pq")):
            target = files if len(files) > 1 else first
            try:
                return dd.read_parquet(target, columns=wanted)
            except (KeyError, ValueError) as exc:
                # unknown columns surface here when we pass columns=
                available = _parquet_columns(target)
                if available is not None:
                    _missing(spec, available + [generated])
                raise PanelError(f"cannot read parquet {path!r}: {exc}") from None
        raise PanelError(f"unsupported file type for {path!r}: expected .parquet, a parquet directory or .csv")
    raise PanelError(f"unsupported source of type {type(source).__name__}: pass a parquet/CSV path, a pandas or a dask DataFrame")


def _read_url(url: str, spec: PanelSpec, wanted: list[str], generated: str | None,
              storage_options: Mapping[str, Any] | None) -> dd.DataFrame:
    """A panel in object storage: the same readers as on disk, through fsspec with ``storage_options``."""
    src = storage.resolve(url, storage_options)
    so = dict(storage_options or {})
    _missing(spec, storage.columns(src) + [generated])  # dask's own errors name no role
    with storage.errors(url, src.fs):
        if src.kind == "csv":
            return dd.read_csv(src.target, usecols=wanted, blocksize="64MB", storage_options=so)
        try:
            return dd.read_parquet(src.target, columns=wanted, storage_options=so)
        except (KeyError, ValueError) as exc:
            raise PanelError(f"cannot read parquet {url!r}: {exc}") from None


def _parquet_plan(source: Any, spec: PanelSpec, generated: str | None) -> parquet.Plan | None:
    if generated is not None or isinstance(source, (pd.DataFrame, dd.DataFrame)) or storage.is_url(source):
        return None
    files = parquet.local_files(source)
    return None if files is None else parquet.plan(files, spec, list(dict.fromkeys(spec.columns)))


def _parquet_columns(target: Any) -> list[str] | None:
    try:
        return list(dd.read_parquet(target).columns)
    except Exception:  # pragma: no cover - only used to improve an error message
        return None


def _missing(spec: PanelSpec, available: Sequence[str]) -> None:
    roles = {spec.unit: "unit", spec.time: "time", spec.outcome: "outcome", spec.group_source: "group" if spec.group else "treatment"}
    roles.update({c: "covariate" for c in spec.covariates})
    if spec.weights:
        roles[spec.weights] = "weights"
    if spec.cluster:
        roles[spec.cluster] = "cluster"
    missing = [f"{c!r} ({r})" for c, r in roles.items() if c not in set(available)]
    if missing:
        raise MissingColumnError(f"column(s) {', '.join(missing)} not found; available columns: {list(available)}")


def _check_columns(frame: pd.DataFrame | dd.DataFrame, spec: PanelSpec) -> None:
    _missing(spec, list(frame.columns))
    dtypes = frame.dtypes
    numeric = {spec.outcome: "outcome", **{c: "covariate" for c in spec.covariates}}
    if spec.weights:
        numeric[spec.weights] = "weights"
    for col, role in numeric.items():
        dt = dtypes[col]
        if not pd.api.types.is_numeric_dtype(dt) or pd.api.types.is_bool_dtype(dt):
            where = _non_numeric_cells(frame, col, spec) if isinstance(frame, pd.DataFrame) else ""
            raise ColumnTypeError(f"column {col!r} ({role}) must be numeric, got dtype {dt}{where}")


def _non_numeric_cells(df: pd.DataFrame, col: str, spec: PanelSpec) -> str:
    """For a text / object column of a pandas frame: the cells that are not numbers, as
    ``; 1 non-numeric values, e.g. (unit, period, value) [(8019, 2003, 'n/a')]``, or how to convert
    a column whose values are all numbers."""
    s = df[col]
    if isinstance(s.dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(s.dtype):
        return ""
    bad = (pd.to_numeric(s, errors="coerce").isna() & s.notna()).to_numpy()
    if not bad.any():
        return "; its values are numbers: convert it with .astype(float)"
    key = [c for c in (spec.unit, spec.time) if c is not None and c in df.columns]
    rows = df.loc[bad, [*key, col]].head(5).itertuples(index=False, name=None)
    return f"; {int(bad.sum())} non-numeric values, e.g. ({', '.join([*key, 'value'])}) {examples(list(rows))}"


# ------------------------------------------------------------------------------------- pandas route
def _from_pandas(df: pd.DataFrame, spec: PanelSpec, bs: int, npartitions: int | None) -> Panel:
    periods, block = periods_and_block(df, spec)
    n_ent = int(block.rank[-1]) + 1 if block.n else 0
    bounds = _partition_bounds(n_ent, bs, npartitions)
    token = uuid.uuid4().hex  # hashing the whole frame would cost more than pivoting it
    parts = []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        lo, hi = np.searchsorted(block.rank, [a, b])
        parts.append(dask.delayed(block.take(slice(int(lo), int(hi))), name=f"panel-block-{token}-{i}"))
    panel = Panel(spec=spec, periods=periods, blocks=tuple(parts), summaries=(), rng_block_size=bs, n_entities=n_ent)
    return finish(panel)


def _partition_bounds(n_entities: int, bs: int, npartitions: int | None) -> list[int]:
    """Entity-rank boundaries of partitions: multiples of the RNG block size, blocks spread evenly.

    By default about ``partition-units`` entities per partition, their count rounded up to a
    multiple of ``partition-multiple`` (11 partitions on 2 threads leave one thread idle for the last
    task of every pass; 12 do not). ``npartitions`` is capped at the number of RNG blocks (a
    partition holds whole blocks).
    """
    if n_entities == 0:
        return [0, 0]
    n_blocks = -(-n_entities // bs)
    if npartitions is None:
        k = -(-n_blocks // max(1, int(config.get("partition-units")) // bs))
        m = max(1, int(config.get("partition-multiple")))
        k = min(-(-k // m) * m, n_blocks)
    elif npartitions < 1:
        raise PanelError(f"npartitions must be >= 1, got {npartitions}")
    else:
        k = min(int(npartitions), n_blocks)
    edges = [min(round(i * n_blocks / k) * bs, n_entities) for i in range(k)] + [n_entities]
    return sorted(set(edges))


# ------------------------------------------------------------------------------------- dask route
def _scan(df: pd.DataFrame, spec: PanelSpec) -> dict[str, Any]:
    ent = df[spec.entity]
    if isinstance(ent.dtype, pd.CategoricalDtype):
        ent = ent.astype(ent.cat.categories.dtype)
    t = df[spec.time]
    return {
        "rows": len(df),
        "min": ent.min() if len(df) else None,
        "max": ent.max() if len(df) else None,
        "sorted": bool(ent.is_monotonic_increasing),
        "times": distinct_ints(t.to_numpy()) if t.dtype == np.int64 else pd.unique(t.dropna()),
        "time_na": int(t.isna().sum()),
        "time_na_units": na_units(df, spec, t),
    }


def na_units(df: pd.DataFrame, spec: PanelSpec, t: pd.Series) -> list:
    """Up to five units (entities for repeated cross sections) with a missing period label."""
    na = t.isna().to_numpy()
    if not na.any():
        return []
    ids = df[spec.unit if spec.unit is not None else spec.entity]
    return list(pd.unique(ids[na])[:5])


def check_time_na(scans: list[dict[str, Any]], spec: PanelSpec) -> None:
    """Refuse missing period labels, naming the time column, their count and example units."""
    n_na = sum(s["time_na"] for s in scans)
    if n_na:
        raise missing_periods(spec.time, n_na, [u for s in scans for u in s.get("time_na_units", [])])


def _from_dask(ddf: dd.DataFrame, spec: PanelSpec, bs: int, npartitions: int | None) -> Panel:
    parts = ddf.to_delayed()
    token = tokenize(ddf, spec)
    scans = dask.compute(*[dask.delayed(_scan, pure=True)(p, spec, dask_key_name=f"panel-scan-{token}-{i}")
                           for i, p in enumerate(parts)])
    check_time_na(scans, spec)
    times = [np.asarray(s["times"]) for s in scans if s["rows"]]
    times = np.concatenate(times) if times else np.array([], dtype=np.int64)
    periods = PeriodMap.from_values(pd.Series(times), spec.time)
    scans_ne = [s for s in scans if s["rows"]]
    if not disjoint_sorted(scans_ne):
        ent_dtype = ddf.dtypes[spec.entity]
        if isinstance(ent_dtype, pd.CategoricalDtype):
            # shuffle on the values: a categorical index is not range-partitioned in value order
            cats = ent_dtype.categories
            ddf = ddf.astype({spec.entity: cats.dtype if len(cats) else object})
        ddf = ddf.set_index(spec.entity, drop=False, npartitions=max(1, ddf.npartitions))
        ddf = ddf.reset_index(drop=True)
        parts = ddf.to_delayed()
        scans_ne = [None] * len(parts)  # type: ignore[list-item]
    else:
        keep = [i for i, s in enumerate(scans) if s["rows"]]
        order = sorted(keep, key=lambda i: scans[i]["min"])
        parts = [parts[i] for i in order]
    tok = tokenize(token, periods.labels)
    raw = [dask.delayed(frame_to_block, pure=True)(p, spec, periods, dask_key_name=f"panel-block-{tok}-{i}")
           for i, p in enumerate(parts)]
    return _layout(raw, spec, periods, bs, npartitions, tok)


def _from_parquet(plan: parquet.Plan, spec: PanelSpec, bs: int, npartitions: int | None) -> Panel:
    """Pieces of local parquet files (disjoint entity ranges, in order), each read and pivoted on the
    workers. The periods: those of the first unit (its leading rows, read here) when every piece
    confirms them (each of its rows has one of them: then they are the panel's periods), else a scan
    of the time column first, and the pieces pivoted again."""
    token = uuid.uuid4().hex  # the files may change between loads: no content token
    guess = parquet.first_periods(plan.pieces[0], spec) if spec.cluster is None else None
    where = spread(len(plan.pieces))  # runs of pieces per worker, as the partitions will be
    if guess is not None:
        raw = _piece_blocks(plan, spec, guess, token, where, strict=True)
        panel = _layout(raw, spec, guess, bs, npartitions, token)
        if panel is not None:
            return panel
        token = uuid.uuid4().hex
    scan = dask.delayed(parquet.scan_times, pure=True)
    scans = dask.compute(*[scan(p, spec.time, spec.unit or spec.entity, dask_key_name=f"panel-pqscan-{token}-{i}") for i, p in enumerate(plan.pieces)])
    check_time_na(scans, spec)
    periods = PeriodMap.from_values(pd.Series(np.concatenate([s["times"] for s in scans])), spec.time)
    return _layout(_piece_blocks(plan, spec, periods, token, where), spec, periods, bs, npartitions, token)


def _piece_blocks(plan: parquet.Plan, spec: PanelSpec, periods: PeriodMap, token: str, where: list[str] | None,
                  strict: bool = False) -> list:
    """One delayed :func:`parquet.piece_block` per piece, piece ``i`` placed on ``where[i]``."""
    block = dask.delayed(parquet.piece_block, pure=True)
    raw = []
    for i, p in enumerate(plan.pieces):
        with on_worker(where, i):
            raw.append(block(p, plan.columns, spec, periods, strict, dask_key_name=f"panel-block-{token}-{i}"))
    return raw


def _layout(raw: list, spec: PanelSpec, periods: PeriodMap, bs: int, npartitions: int | None, tok: str) -> Panel | None:
    """Raw blocks (whole entities, in entity order) re-cut into partitions of whole RNG blocks; None
    if a raw block is None (a piece that refuted the periods it was pivoted with)."""
    raw = list(dask.persist(*raw))
    sums = dask.compute(*[dask.delayed(raw_summary, pure=True)(b) for b in raw])
    if any(s is None for s in sums):
        return None
    offsets = np.concatenate([[0], np.cumsum([s[0] for s in sums])])
    n_ent = int(offsets[-1])
    bounds = _partition_bounds(n_ent, bs, npartitions)
    # covariates are time-varying (n, T, p) in every block as soon as they vary in one partition
    varying = any(s[1] for s in sums)
    # The client drops its references to the raw blocks (``raw``, and the graphs of the partitions
    # once submitted): each raw block then goes as soon as the last partition built from it is,
    # and its memory serves the next partitions (fresh pages cost more than reused ones).
    blocks = dask.persist(*_assembly(raw, offsets, bounds, varying, tok, spread(len(bounds) - 1)))
    del raw
    panel = Panel(spec=spec, periods=periods, blocks=tuple(blocks), summaries=(), rng_block_size=bs, n_entities=n_ent)
    return finish(panel)


def _assembly(raw: list, offsets: np.ndarray, bounds: list[int], varying: bool, tok: str,
              where: list[str] | None = None) -> list:
    """One task per partition ``[a, b)`` of entity ranks, joining the parts of the raw blocks it
    covers; each part is cut by a task of its own, which runs where its raw block is, so that only
    the part, not the whole raw block, moves to a partition built by another worker. ``where``:
    the worker each partition is built on (a loose restriction: another one if that one is gone)."""
    cut = dask.delayed(cut_block, pure=True)
    tasks = []
    for j, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        parts = [cut(raw[i], int(offsets[i]), a, b, varying, dask_key_name=f"panel-cut-{tok}-{j}-{i}")
                 for i in range(len(raw)) if offsets[i] < b and offsets[i + 1] > a]
        with on_worker(where, j):
            tasks.append(dask.delayed(assemble_partition, pure=True)(parts, dask_key_name=f"panel-layout-{tok}-{j}"))
    return tasks


def disjoint_sorted(scans: list[dict[str, Any]]) -> bool:
    """Whether partitions scanned as ``{"sorted", "min", "max"}`` of their entity column each hold one
    sorted, disjoint entity range (then no shuffle is needed to put each entity in one partition)."""
    if not all(s["sorted"] for s in scans):
        return False
    try:
        ordered = sorted(scans, key=lambda s: s["min"])
        return all(a["max"] < b["min"] for a, b in zip(ordered[:-1], ordered[1:]))
    except TypeError:
        return False


def _warn_late_cohorts(panel: Panel) -> None:
    """One warning for cohorts first treated after the last period (R ``did``: never treated)."""
    last = panel.n_periods - 1
    late = {g: c for g, c in panel.cohort_sizes.items() if np.isfinite(g) and g > last}
    if not late:
        return
    labels = examples([panel.group_label(g) for g in late], k=10)
    warnings.warn(f"{sum(late.values())} units of column {panel.spec.group_source!r} are first treated after the "
                  f"last period ({examples([panel.periods.labels[-1]])[1:-1]}): cohort(s) {labels}. As R did does, they "
                  "are treated as never treated (controls in every period).", PanelWarning, stacklevel=3)


def _check_controls(panel: Panel) -> None:
    cohorts = panel.cohort_sizes
    treated = [g for g in cohorts if np.isfinite(g)]
    if panel.n_units == 0:
        raise PanelError("no units are left after dropping units treated in the first period and unbalanced units")
    if panel.spec.weights is not None and all(s.n_weighted == 0 for s in panel.summaries):
        raise SpecError(f"column {panel.spec.weights!r} (weights) is zero for all {panel.n_units} units: every "
                        "weighted mean would be 0/0; give positive sampling weights or drop `weights`")
    if not any(not np.isfinite(g) for g in cohorts) and len(treated) < 2:
        raise NoControlGroupError(
            f"column {panel.spec.group_source!r}: every unit is treated in the same period "
            f"({panel.group_label(treated[0]) if treated else 'n/a'}), so there are no never-treated and no "
            "not-yet-treated units to compare with"
        )
    if not any(g <= panel.n_periods - 1 for g in treated):  # cohorts after the last period do not count
        raise NoControlGroupError(f"column {panel.spec.group_source!r}: no unit is ever treated inside the panel's periods")
