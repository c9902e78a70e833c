"""Bounded work per job: field sizes, the panel's shape read cheaply, windows, a size estimate.

Checked at ``POST /jobs`` before a job is queued (each a 422 naming the field):

* :func:`check_sizes` — the raw body: the job ``name``, every string, list and mapping are
  bounded (``Limits.max_name_chars``, ``max_string_chars``, ``max_list_items``);
* :func:`panel_shape` — units, periods and the possible event times, from what is known cheaply:
  ``simulate`` from its spec, ``mpdta`` (bundled, 2,500 rows), parquet from its footers (row
  counts, the time column's min/max statistics), CSV from a bounded read of the time column;
* :func:`check_windows` — an estimator ``window`` with no overlap with the event times the panel
  can have is refused at ``estimators.<i>.options.window``; the others are clipped to them for the
  estimate, and in the job itself for ``event_study`` / ``sun_abraham`` (the library clips too,
  with a warning), so a huge window never makes anything huge;
* :func:`check_size` — the job's estimated work and the memory of its largest task against
  ``Limits.max_work`` and ``Limits.max_task_bytes`` (the message states estimate and limit).

The estimate (an upper bound in the spirit of the algorithm, not a prediction of seconds)::

    work       = sum over estimators of  units x cells x (periods + draws)      [x stacks for stacked_did]
    task bytes = 8 x units per partition x (periods x (3 + covariates) + cells + 128)

``cells`` are the (g, t) cells (cohorts x (periods - 1); (periods - 1)^2 when the cohorts are
unknown) or, for regressions, the event-time dummies of the (clipped) window plus the time
effects; ``draws`` is ``n_boot`` when the bootstrap is on, else 0; 128 is the bootstrap's chunk.
"""
from __future__ import annotations

import functools
import glob
import math
import os
from dataclasses import dataclass
from typing import Any

from dte_dask.service.settings import Limits
from dte_dask.service.validate import SpecProblem

_CSV_FULL_READ = 32 << 20  # CSV files up to this size have their time column read in full
_CSV_SAMPLE_ROWS = 200_000
_MAX_FILES = 10_000
_PARTITION_UNITS = 262_144  # dte_dask.yaml partition-units (the default when npartitions is not set)
_RNG_BLOCK = 16_384  # dte_dask.yaml rng-block-size: partitions hold whole RNG blocks
_BOOT_CHUNK = 128


# ----------------------------------------------------------------------------- field sizes
def check_sizes(obj: Any, limits: Limits) -> None:
    """Bound every string, list and mapping of a decoded body; raises :class:`SpecProblem` (422)."""
    if isinstance(obj, dict) and isinstance(obj.get("name"), str) and len(obj["name"]) > limits.max_name_chars:
        raise SpecProblem.one(["name"], f"at most {limits.max_name_chars} characters (got {len(obj['name'])})",
                              "string_too_long")
    _walk(obj, [], limits)


def _walk(v: Any, loc: list[Any], limits: Limits) -> None:
    if isinstance(v, str):
        if len(v) > limits.max_string_chars:
            raise SpecProblem.one(loc, f"strings are at most {limits.max_string_chars} characters on this service "
                                       f"(got {len(v)})", "string_too_long")
    elif isinstance(v, dict):
        if len(v) > limits.max_list_items:
            raise SpecProblem.one(loc, f"at most {limits.max_list_items} keys on this service", "too_long")
        for k, x in v.items():
            if isinstance(k, str) and len(k) > limits.max_string_chars:
                raise SpecProblem.one(loc, f"keys are at most {limits.max_string_chars} characters", "string_too_long")
            _walk(x, [*loc, k], limits)
    elif isinstance(v, list):
        if len(v) > limits.max_list_items:
            raise SpecProblem.one(loc, f"lists are at most {limits.max_list_items} items on this service "
                                       f"(got {len(v)})", "too_long")
        for i, x in enumerate(v):
            _walk(x, [*loc, i], limits)


# ----------------------------------------------------------------------------- the panel's shape
@dataclass(frozen=True)
class PanelShape:
    """What is known about a panel before it is loaded.

    ``events`` is the closed range of event times (t - g, in the time column's units) the panel can
    have, or None when the time range is unknown; ``cohorts`` the number of treated cohorts, if known.
    """

    units: int
    periods: int | None
    events: tuple[float, float] | None = None
    cohorts: int | None = None
    step: float = 1.0
    source: str = ""


def panel_shape(job: Any, source: str) -> PanelShape | None:
    """The shape of ``job``'s panel (``source``: the confined path); None if it cannot be told cheaply."""
    data = job.data
    if data.source == "simulate":
        return _simulate_shape(data.simulate)
    if data.source == "mpdta":
        return _mpdta_shape()
    opener = open
    if "://" in source:  # an object store: list through fsspec, read the parquet footers remotely
        try:
            files, opener = _url_files(source, data.storage_options)
        except Exception:  # noqa: BLE001 - unreadable here is reported by the column check, not the estimate
            return None
    else:
        files = _files(source)
    if not files:
        return None
    time_col = data.time
    try:
        if all(f.endswith((".parquet", ".pq")) for f in files):
            return _parquet_shape(files, time_col, opener)
        if all(f.endswith((".csv", ".csv.gz")) for f in files):
            return _csv_shape(files, time_col)
    except Exception:  # noqa: BLE001 - unreadable here is reported by the column check, not the estimate
        return None
    return None


def _simulate_shape(s: Any) -> PanelShape:
    from dte_dask.simulate import PRESETS, default_cohorts

    periods = s.periods if s.periods is not None else int(PRESETS.get(s.preset, PRESETS[None])["n_periods"])
    cohorts = s.cohorts or PRESETS.get(s.preset, PRESETS[None])["cohorts"] or default_cohorts(periods)
    gs = [g for g in cohorts if 2 <= g <= periods] or [2, periods]
    return PanelShape(units=s.units, periods=periods, events=(1 - max(gs), periods - min(gs)), cohorts=len(gs),
                      source="the simulated panel")


@functools.cache
def _mpdta_shape() -> PanelShape:
    from dte_dask.datasets import load_mpdta
    from dte_dask.jobs.runner import MPDTA_COLUMNS

    df = load_mpdta()
    t, g = df[MPDTA_COLUMNS["time"]], df[MPDTA_COLUMNS["group"]]
    gs = g[g > 0]
    return PanelShape(units=int(df[MPDTA_COLUMNS["unit"]].nunique()), periods=int(t.nunique()),
                      events=(float(t.min() - gs.max()), float(t.max() - gs.min())), cohorts=int(gs.nunique()),
                      source="mpdta")


def _files(source: str) -> list[str]:
    if any(ch in source for ch in "*?["):
        out = []
        for f in glob.iglob(source):
            out.extend(_files(f))
            if len(out) > _MAX_FILES:
                break
        return sorted(out)[:_MAX_FILES]
    if os.path.isdir(source):
        out = []
        for d, _dirs, names in os.walk(source):
            out.extend(os.path.join(d, n) for n in names if n.endswith((".parquet", ".pq")))
            if len(out) > _MAX_FILES:
                break
        return sorted(out)[:_MAX_FILES]
    return [source] if os.path.isfile(source) else []


def _shape(rows: int, lo: Any, hi: Any, distinct: int | None, label: str) -> PanelShape:
    """Units and periods from a row count and the time column's range (and distinct count, if read)."""
    try:
        lo_f, hi_f = float(lo), float(hi)
        known = math.isfinite(lo_f) and math.isfinite(hi_f)
    except (TypeError, ValueError):
        known = False
    if not known:
        periods = distinct
        events = None
    else:
        span = hi_f - lo_f
        periods = distinct or (int(span) + 1 if float(span).is_integer() else None)
        events = (-span, span)
    periods = None if periods is None else max(1, min(periods, max(rows, 1)))
    units = max(1, rows // periods) if periods else max(1, rows)
    return PanelShape(units=units, periods=periods, events=events, source=label)


def _url_files(source: str, storage_options: Any) -> tuple[list[str], Any]:
    """Parquet files under an object-store URL (a prefix or a glob), and an opener for them."""
    from dte_dask import storage

    src = storage.resolve(source, storage_options)
    if src.kind != "parquet":
        return [], open
    files = []
    for f in src.files:
        path = src.fs._strip_protocol(f)
        found = src.fs.find(path) if src.fs.isdir(path) else [path]
        files.extend(src.fs.unstrip_protocol(x) for x in found if x.endswith((".parquet", ".pq")))
        if len(files) > _MAX_FILES:
            break
    return sorted(files)[:_MAX_FILES], (lambda f, mode="rb": src.fs.open(f, mode))


def _parquet_shape(files: list[str], time_col: str | None, opener: Any = open) -> PanelShape:
    import pyarrow.parquet as pq

    rows, lo, hi = 0, None, None
    for f in files:
        with opener(f, "rb") as fh:
            md = pq.read_metadata(fh)
        rows += md.num_rows
        names = md.schema.names
        idx = names.index(time_col) if time_col in names else None
        for rg in range(md.num_row_groups):
            if idx is None:
                break
            st = md.row_group(rg).column(idx).statistics
            if st is None or not st.has_min_max:
                lo = hi = float("nan")
                idx = None
                break
            lo = st.min if lo is None else min(lo, st.min)
            hi = st.max if hi is None else max(hi, st.max)
    return _shape(rows, lo, hi, None, f"{len(files)} parquet file(s)")


def _csv_shape(files: list[str], time_col: str | None) -> PanelShape:
    import pandas as pd

    rows, lo, hi, values = 0, None, None, set()
    for f in files:
        size = os.path.getsize(f)
        full = size <= _CSV_FULL_READ
        t = pd.read_csv(f, usecols=[time_col], nrows=None if full else _CSV_SAMPLE_ROWS)[time_col]
        if full:
            rows += len(t)
        else:  # rows estimated from the bytes per row of the sample
            with open(f, "rb") as fh:
                head = sum(len(fh.readline()) for _ in range(min(len(t), 10_000) + 1))
            rows += int(size / max(1.0, head / (min(len(t), 10_000) + 1)))
        if len(values) <= 100_000:
            values.update(t.dropna().unique().tolist())
        lo = t.min() if lo is None else min(lo, t.min())
        hi = t.max() if hi is None else max(hi, t.max())
    return _shape(rows, lo, hi, len(values) or None, f"{len(files)} CSV file(s)")


# ----------------------------------------------------------------------------- windows
def _window(options: dict[str, Any]) -> tuple[float, float] | None:
    w = options.get("window")
    if isinstance(w, (list, tuple)) and len(w) == 2 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in w):
        return float(w[0]), float(w[1])
    return None


def check_windows(job: Any, shape: PanelShape | None) -> dict[int, tuple[float, float]]:
    """Each estimator's event window clipped to ``shape.events`` (by estimator index).

    Raises :class:`SpecProblem` at ``estimators.<i>.options.window`` for a window with no
    overlap with the event times the panel can have.
    """
    out: dict[int, tuple[float, float]] = {}
    for i, est in enumerate(job.estimators):
        w = _window(est.options)
        if w is None:  # the estimator's own default window, if it has one (registry options model)
            w = _window({"window": _default_window(est.kind)})
        if w is None or shape is None or shape.events is None:
            if w is not None:
                out[i] = w
            continue
        lo, hi = shape.events
        if w[0] > w[1]:  # a reversed window is the spec's and the estimator's to refuse
            continue
        if w[0] > hi or w[1] < lo:
            raise SpecProblem.one(["estimators", i, "options", "window"],
                                  f"window [{_num(w[0])}, {_num(w[1])}] has no overlap with the event times "
                                  f"{shape.source} can have ([{_num(lo)}, {_num(hi)}], in the time column's units)",
                                  "value_error")
        out[i] = (max(w[0], lo), min(w[1], hi))
    return out


def _default_window(kind: str) -> Any:
    from dte_dask import registry

    field = registry.get(kind).options.model_fields.get("window")
    return None if field is None else field.default


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


# ----------------------------------------------------------------------------- the estimate
@dataclass(frozen=True)
class Estimate:
    work: float
    task_bytes: float
    detail: str


def estimate(job: Any, shape: PanelShape, windows: dict[int, tuple[float, float]]) -> Estimate:
    """The job's work and the memory of its largest task (see the module docstring)."""
    from dte_dask import registry

    units = shape.units
    periods = shape.periods or 1
    draws = job.inference.n_boot if job.inference.bootstrap else 0
    n_cov = len(job.data.covariates)
    gt_cells = (periods - 1) * min(periods - 1, shape.cohorts or periods - 1)
    events_all = ((shape.events[1] - shape.events[0]) / shape.step + 1) if shape.events else 2 * periods
    work, max_cells = 0.0, 1
    for i, est in enumerate(job.estimators):
        stacks = 1
        cost = registry.get(est.kind).cost  # how the registry says the estimator grows
        if cost == "cells":
            cells = max(1, gt_cells)
        else:
            w = windows.get(i)
            n_events = (w[1] - w[0]) / shape.step + 1 if w is not None else events_all
            cells = int(max(1, n_events)) + periods + n_cov
            if cost == "stacks":
                stacks = shape.cohorts or max(1, periods - 1)
        max_cells = max(max_cells, cells)
        work += float(units) * stacks * cells * (periods + draws)
    npart = job.data.npartitions
    per_part = min(units, max(math.ceil(units / npart), _RNG_BLOCK) if npart else _PARTITION_UNITS)
    task_bytes = 8.0 * per_part * (periods * (3 + n_cov) + max_cells + (_BOOT_CHUNK if draws else 0))
    detail = (f"{units} units x {periods} periods, up to {max_cells} cells, {draws} bootstrap draws, "
              f"{len(job.estimators)} estimator(s), {per_part} units per partition")
    return Estimate(work=work, task_bytes=task_bytes, detail=detail)


def check_size(job: Any, limits: Limits, source: str) -> list[str]:
    """Windows, then the size estimate against the limits; the warnings to record with the job.

    An ``event_study`` / ``sun_abraham`` window reaching past the event times the panel can have
    is clipped to them in ``job`` (the same estimates: no observation lies beyond), so the job
    that runs never sees it. Raises :class:`SpecProblem` (422).
    """
    from dte_dask import registry

    shape = panel_shape(job, source)
    windows = check_windows(job, shape)
    warnings = []
    for i, (lo, hi) in windows.items():
        est = job.estimators[i]
        w = _window(est.options)
        if registry.get(est.kind).clip_window and w is not None and w != (lo, hi):
            clipped = [int(x) if float(x).is_integer() else x for x in (lo, hi)]
            est.options["window"] = clipped
            warnings.append(f"estimators.{i}.options.window: clipped to {clipped}, the event times "
                            f"{shape.source if shape else 'the panel'} can have")
    if shape is None:
        return warnings
    est = estimate(job, shape, windows)
    if est.work > limits.max_work:
        raise SpecProblem.one([], f"the job is too large for this service: estimated work {est.work:.3g} "
                                  f"({est.detail}) exceeds the limit of {limits.max_work:.3g}; use fewer units, "
                                  "draws (inference.n_boot) or estimators, or a narrower window", "job_too_large")
    if est.task_bytes > limits.max_task_bytes:
        raise SpecProblem.one(["data", "npartitions"],
                              f"the largest task would hold about {_bytes(est.task_bytes)} ({est.detail}), above "
                              f"this service's limit of {_bytes(limits.max_task_bytes)} per task; "
                              "raise data.npartitions or use fewer units", "task_too_large")
    return warnings


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover
