"""Plots of DiD results: event studies, ATT(g,t) by cohort, cohort comparisons, estimator overlays.

Free functions over results (and plain frames), as ``pyfixest.iplot``: every function takes one
result or a sequence / mapping of them and returns an interactive bokeh layout
(``backend="bokeh"``, the default) or a matplotlib ``Figure`` (``backend="matplotlib"``, for PNG;
``pip install 'dte_dask[plot]'``). Save either with :func:`save_figure`.

Inputs
------
Any result of the protocol (:mod:`dte_dask.results.base`: ``to_frame()`` in the canonical schema,
``event_study()``, ``result_kind``, ``label``) or a ``pandas.DataFrame`` in that schema:
``event_time``, ``estimate``, optionally ``se``, POINTWISE ``ci_lower``/``ci_upper`` (computed from
``se`` when absent) and a UNIFORM band ``band_lower``/``band_upper`` (NaN when absent).

:func:`event_study_frame` gives the frame ``event_time, estimate, se, ci_lower, ci_upper,
band_lower, band_upper`` of any of these; the report saves and re-plots exactly these frames. Axis
labels come from the panel's column names (a result's ``options``, ``spec`` or ``columns``), or
from ``outcome=``/``time=``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dte_dask._figures import (
    PALETTE,
    POST_COLOR,
    PRE_COLOR,
    SHADE,
    Backend,
    Facet,
    FigureSpec,
    Layer,
    render,
)
from dte_dask.exceptions import SpecError
from dte_dask.formatting import format_label

__all__ = [
    "CANONICAL_COLUMNS", "event_study_frame", "attgt_frame", "axis_names", "plot_event_study", "plot_attgt",
    "plot_cohorts", "plot_aggregate", "plot_result", "plot_placebo", "plot_randomization", "plot_balance",
    "plot_pretrends", "plot_curve", "plot_honest_did", "plot_pretest_power", "save_figure", "default_label",
]

CANONICAL_COLUMNS = ("event_time", "estimate", "se", "ci_lower", "ci_upper", "band_lower", "band_upper")
PASS_THROUGH = ("n_treated", "n_control", "suppressed", "suppression_reason")


# ----------------------------------------------------------------------------- normalisation
def _z(alpha: float) -> float:
    from dte_dask.inference.dist import pointwise_z

    return pointwise_z(alpha)


def _canonical(df: pd.DataFrame, alpha: float, key: str = "event_time") -> pd.DataFrame:
    """A frame in the canonical schema (optional columns filled: CI from ``se``, band NaN)."""
    missing = {key, "estimate"} - set(df.columns)
    if missing:
        raise SpecError(f"cannot plot a frame without the column(s) {sorted(missing)} of the result schema "
                        f"(dte_dask.results.base; columns: {list(df.columns)})")
    out = pd.DataFrame({key: df[key].to_numpy(), "estimate": pd.to_numeric(df["estimate"]).to_numpy(float)})
    out["se"] = pd.to_numeric(df["se"]).to_numpy(float) if "se" in df else np.nan
    if {"ci_lower", "ci_upper"} <= set(df.columns):
        out["ci_lower"] = df["ci_lower"].to_numpy(float)
        out["ci_upper"] = df["ci_upper"].to_numpy(float)
    else:
        z = _z(alpha)
        out["ci_lower"] = out["estimate"] - z * out["se"]
        out["ci_upper"] = out["estimate"] + z * out["se"]
    band = {"band_lower", "band_upper"} <= set(df.columns)
    out["band_lower"] = df["band_lower"].to_numpy(float) if band else np.nan
    out["band_upper"] = df["band_upper"].to_numpy(float) if band else np.nan
    for c in PASS_THROUGH:  # unit counts and disclosure marks travel with the estimates
        if c in df.columns:
            out[c] = df[c].to_numpy()
    return out.sort_values(key, kind="stable").reset_index(drop=True)


def _is_result(obj: Any) -> bool:
    return callable(getattr(obj, "to_frame", None)) and isinstance(getattr(obj, "result_kind", None), str)


def _result(obj: Any) -> Any:
    if not _is_result(obj):
        raise SpecError(f"cannot plot a {type(obj).__name__}: pass a result (dte_dask.results) or a DataFrame")
    return obj


def event_study_frame(obj: Any, *, alpha: float | None = None) -> pd.DataFrame:
    """Canonical event-study frame of a result (its ``event_study()``) or a frame (see module doc)."""
    if isinstance(obj, pd.DataFrame):
        return _canonical(obj, alpha if alpha is not None else 0.05)
    es = _result(obj).event_study()
    df = _canonical(es.to_frame(), es.alpha)
    return df[list(CANONICAL_COLUMNS) + [c for c in PASS_THROUGH if c in df.columns]]


def attgt_frame(obj: Any, *, alpha: float | None = None) -> pd.DataFrame:
    """Canonical ATT(g,t) cells: ``group, time`` + the canonical event-study columns, from a result
    of kind ``"cells"`` or a frame in the schema."""
    df = obj if isinstance(obj, pd.DataFrame) else _result(obj).to_frame()
    missing = {"group", "time"} - set(df.columns)
    if missing:
        raise SpecError(f"ATT(g,t) frames need columns 'group' and 'time' (missing {sorted(missing)})")
    a = alpha if alpha is not None else float(getattr(obj, "alpha", 0.05) or 0.05)
    out = _canonical(df, a)
    keep = df.sort_values("event_time", kind="stable").reset_index(drop=True)
    out.insert(0, "time", keep["time"].to_numpy())
    out.insert(0, "group", keep["group"].to_numpy())
    return out.sort_values(["group", "time"], kind="stable").reset_index(drop=True)


def axis_names(obj: Any) -> dict[str, str]:
    """Column names (``outcome``, ``time``, ``unit``) recorded by a result, where it has them."""
    for attr in ("options", "columns"):
        d = getattr(obj, attr, None)
        if isinstance(d, Mapping):
            names = {k: str(d[k]) for k in ("outcome", "time", "unit") if d.get(k)}
            if names:
                return names
    spec = getattr(obj, "spec", None)
    if spec is not None:
        return {k: str(getattr(spec, k)) for k in ("outcome", "time", "unit") if getattr(spec, k, None)}
    return {}


def _series(results: Any, labels: Sequence[str] | None) -> list[tuple[str, Any]]:
    inner = getattr(results, "results", None)  # an estimator comparison (issue 4's compare_estimators)
    if isinstance(inner, Mapping) and inner and not hasattr(results, "to_frame"):
        results = inner
    if isinstance(results, Mapping):
        items = [(str(k), v) for k, v in results.items()]
    elif isinstance(results, pd.DataFrame) or not isinstance(results, Sequence):
        items = [(default_label(results, 0), results)]
    else:
        items = [(default_label(r, i), r) for i, r in enumerate(results)]
    if labels is not None:
        if len(labels) != len(items):
            raise SpecError(f"{len(labels)} labels for {len(items)} results")
        items = [(str(lab), r) for lab, (_, r) in zip(labels, items)]
    if not items:
        raise SpecError("nothing to plot")
    return items


def default_label(obj: Any, i: int = 0) -> str:
    """A result's ``label`` (the registry's display name); ``series <i+1>`` for a frame."""
    if _is_result(obj):
        return str(obj.label)
    return f"series {i + 1}"


def _names(objs: Sequence[Any], outcome: str | None, time: str | None) -> tuple[str | None, str | None]:
    found: dict[str, str] = {}
    for o in objs:
        for k, v in axis_names(o).items():
            found.setdefault(k, v)
    return outcome or found.get("outcome"), time or found.get("time")


def _es_labels(outcome: str | None, time: str | None) -> tuple[str, str]:
    x = f"Event time ({time} relative to first treatment)" if time else "Event time (periods relative to first treatment)"
    return x, (f"Effect on {outcome}" if outcome else "Estimated effect")


def _positions(values: np.ndarray) -> tuple[np.ndarray, tuple[tuple[float, str], ...] | None]:
    """Numeric x positions, and tick labels when the values are not numbers (dates, text)."""
    ser = pd.Series(values)
    if pd.api.types.is_datetime64_any_dtype(ser.dtype) or (ser.dtype == object and ser.map(
            lambda v: isinstance(v, (pd.Timestamp, np.datetime64))).all()):
        cats = sorted(pd.unique(pd.to_datetime(ser)))
        pos = {c: float(i) for i, c in enumerate(cats)}
        return (np.array([pos[v] for v in pd.to_datetime(ser)]),
                tuple((p, format_label(c)) for c, p in pos.items()))
    num = pd.to_numeric(ser, errors="coerce")
    if num.notna().all():
        x = num.to_numpy(float)
        u = np.unique(x[np.isfinite(x)])
        if 0 < u.size <= 40 and np.all(u == np.round(u)):  # integer periods: one tick per period
            return x, tuple((float(v), str(int(v))) for v in u)
        return x, None
    cats = sorted(pd.unique(pd.Series(values).astype(str)))
    pos = {c: float(i) for i, c in enumerate(cats)}
    return np.array([pos[str(v)] for v in values]), tuple((p, c) for c, p in pos.items())


# ----------------------------------------------------------------------------- facet builders
def _coef_facet(series: list[tuple[str, pd.DataFrame, str]], *, key: str, title: str, xlabel: str, ylabel: str,
                shade: bool, level: float | None = None) -> Facet:
    """Estimates with pointwise whiskers and uniform-band boxes, dodged when several series."""
    keys = np.concatenate([df[key].to_numpy() for _, df, _ in series]) if series else np.empty(0)
    pos_all, ticks = _positions(keys)
    ux = np.unique(pos_all[np.isfinite(pos_all)])
    spacing = float(np.min(np.diff(ux))) if ux.size > 1 else 1.0
    m = len(series)
    dodge = spacing * 0.6 / m if m > 1 else 0.0
    layers: list[Layer] = []
    if shade and ux.size:
        edge_lo, edge_hi, b = ux.min() - spacing / 2, ux.max() + spacing / 2, -spacing / 2
        if edge_lo < b:
            layers.append(Layer("span", "shade:pre", SHADE["pre"], lo=np.array([edge_lo]), hi=np.array([b]), alpha=0.12))
        if b < edge_hi:
            layers.append(Layer("span", "shade:post", SHADE["post"], lo=np.array([b]), hi=np.array([edge_hi]), alpha=0.08))
        if edge_lo < b < edge_hi:
            layers.append(Layer("vline", "adoption", "#555555", value=b, dashed=True))
    layers.append(Layer("hline", "zero", "#000000", value=0.0, dashed=True))
    start = 0
    for i, (label, df, color) in enumerate(series):
        n = len(df)
        x = pos_all[start:start + n] + (i - (m - 1) / 2) * dodge
        start += n
        nm = label
        pct = f"{level:g}% " if level else ""
        if np.isfinite(df["band_lower"].to_numpy(float)).any():
            layers.append(Layer("band", f"band:{nm}", color, x=x, lo=df["band_lower"].to_numpy(float),
                                hi=df["band_upper"].to_numpy(float), width=max(dodge, spacing * 0.3) * 0.8, alpha=0.25,
                                label=f"{pct}uniform band" if m == 1 else None))
        if np.isfinite(df["ci_lower"].to_numpy(float)).any():
            layers.append(Layer("whisker", f"ci:{nm}", color, x=x, lo=df["ci_lower"].to_numpy(float),
                                hi=df["ci_upper"].to_numpy(float), label=f"{pct}pointwise CI" if m == 1 else None))
        hover = {key: np.asarray(df[key]) if ticks is None else np.asarray(df[key]).astype(str),
                 **{c: df[c].to_numpy(float) for c in ("estimate", "se", "ci_lower", "ci_upper")}}
        layers.append(Layer("points", f"estimate:{nm}", color, label=label if m > 1 else None, x=x,
                            y=df["estimate"].to_numpy(float), hover=hover))
        layers += suppressed_marks(df, x, nm)
    return Facet(title, xlabel, ylabel, tuple(layers), xticks=ticks)


SUPPRESSED_COLOR = "#9e9e9e"


def suppressed_marks(df: pd.DataFrame, x: np.ndarray, name: str) -> list[Layer]:
    """Grey markers on the zero line where estimates were suppressed (disclosure control): the
    estimate is not drawn, its place is marked and the hover says why."""
    if "suppressed" not in df.columns:
        return []
    mask = df["suppressed"].astype(bool).to_numpy()
    if not mask.any():
        return []
    reasons = df["suppression_reason"].astype(str).to_numpy()[mask] if "suppression_reason" in df else None
    return [Layer("points", f"suppressed:{name}", SUPPRESSED_COLOR, label="suppressed (disclosure control)",
                  x=np.asarray(x, float)[mask], y=np.zeros(int(mask.sum())),
                  hover=None if reasons is None else {"suppressed": reasons})]


def _colors(n: int) -> list[str]:
    return [PALETTE[i % len(PALETTE)] for i in range(n)]


# ----------------------------------------------------------------------------- public plots
def plot_event_study(results: Any, *, labels: Sequence[str] | None = None, backend: Backend = "bokeh",
                     title: str | None = None, xlabel: str | None = None, ylabel: str | None = None,
                     outcome: str | None = None, time: str | None = None, shade: bool = True,
                     alpha: float | None = None) -> Any:
    """Event-study plot: estimates, pointwise CIs (whiskers), uniform bands (boxes), zero line,
    adoption line and pre/post shading. Several results (a sequence or ``{label: result}``) are
    overlaid with a small horizontal dodge: CS, event study, stacked DiD, Sun-Abraham on one figure.
    """
    items = _series(results, labels)
    frames = [(lab, event_study_frame(r, alpha=alpha), c) for (lab, r), c in zip(items, _colors(len(items)))]
    out, tm = _names([r for _, r in items], outcome, time)
    xl, yl = _es_labels(out, tm)
    default = "Event study" if len(items) == 1 else "Event study: estimators compared"
    a = alpha if alpha is not None else next((float(r.alpha) for _, r in items if hasattr(r, "alpha")), 0.05)
    facet = _coef_facet(frames, key="event_time", title=title or default, xlabel=xlabel or xl, ylabel=ylabel or yl,
                        shade=shade, level=round(100 * (1 - a), 1))
    return render(FigureSpec(facet.title, (facet,)), backend)


def plot_attgt(result: Any, *, backend: Backend = "bokeh", ncols: int = 3, title: str | None = None,
               xlabel: str | None = None, ylabel: str | None = None, outcome: str | None = None,
               time: str | None = None) -> Any:
    """ATT(g,t) small multiples, one panel per cohort (R ``ggdid``): pre-treatment cells in red,
    post-treatment cells in blue, pointwise whiskers, uniform-band boxes, zero and adoption lines."""
    cells = attgt_frame(result)
    out, tm = _names([result], outcome, time)
    facets, seen = [], set()
    for g, df in cells.groupby("group", sort=True):
        df = df.sort_values("time", kind="stable").reset_index(drop=True)
        x, ticks = _positions(df["time"].to_numpy())
        layers: list[Layer] = [Layer("hline", "zero", "#000000", value=0.0, dashed=True)]
        post0 = x[df["event_time"].to_numpy() >= 0]
        pre0 = x[df["event_time"].to_numpy() < 0]
        if post0.size and pre0.size:
            layers.append(Layer("vline", "adoption", "#555555", value=float((pre0.max() + post0.min()) / 2), dashed=True))
        spacing = float(np.min(np.diff(np.unique(x)))) if np.unique(x).size > 1 else 1.0
        for part, mask, color in (("pre", df["event_time"] < 0, PRE_COLOR), ("post", df["event_time"] >= 0, POST_COLOR)):
            d, xx = df[mask.to_numpy()], x[mask.to_numpy()]
            if d.empty:
                continue
            if np.isfinite(d["band_lower"].to_numpy(float)).any():
                layers.append(Layer("band", f"band:{part}", color, x=xx, lo=d["band_lower"].to_numpy(float),
                                    hi=d["band_upper"].to_numpy(float), width=spacing * 0.35, alpha=0.25))
            layers.append(Layer("whisker", f"ci:{part}", color, x=xx, lo=d["ci_lower"].to_numpy(float),
                                hi=d["ci_upper"].to_numpy(float)))
            hover = {"time": d["time"].astype(str).to_numpy(), "estimate": d["estimate"].to_numpy(float),
                     "se": d["se"].to_numpy(float)}
            legend = None if part in seen else ("Pre" if part == "pre" else "Post")
            seen.add(part)
            layers.append(Layer("points", f"estimate:{part}", color, label=legend,
                                x=xx, y=d["estimate"].to_numpy(float), hover=hover))
            layers += suppressed_marks(d, xx, part)
        facets.append(Facet(f"Cohort {format_label(g)}", xlabel or (tm or "Period"),
                            ylabel or (f"ATT(g, t) on {out}" if out else "ATT(g, t)"), tuple(layers), xticks=ticks))
    if not facets:
        raise SpecError("no ATT(g,t) cells to plot")
    spec = FigureSpec(title or "ATT(g, t) by cohort", tuple(facets), ncols=min(ncols, len(facets)), width=380, height=280)
    return render(spec, backend)


def _cohort_frames(obj: Any) -> list[tuple[str, pd.DataFrame]]:
    if isinstance(obj, Mapping):
        return [(str(k), event_study_frame(v)) for k, v in obj.items()]
    if not isinstance(obj, pd.DataFrame) and _result(obj).result_kind == "cells":
        cells = attgt_frame(obj)
        return [(format_label(g), d.drop(columns=["group", "time"]).reset_index(drop=True))
                for g, d in cells.groupby("group", sort=True)]
    if isinstance(obj, pd.DataFrame) and {"group", "time"} <= set(obj.columns):  # ATT(g,t) cells
        return [(format_label(g), _canonical(d, 0.05)) for g, d in obj.groupby("group", sort=True)]
    df = obj if isinstance(obj, pd.DataFrame) else obj.by_cohort()
    if "cohort" not in df.columns:
        raise SpecError(f"a cohort comparison needs a 'cohort' column (columns: {list(df.columns)})")
    return [(str(g), _canonical(d, 0.05)) for g, d in df.groupby("cohort", sort=True)]


def plot_cohorts(obj: Any, *, layout: str = "overlay", backend: Backend = "bokeh", title: str | None = None,
                 xlabel: str | None = None, ylabel: str | None = None, outcome: str | None = None,
                 time: str | None = None, ncols: int = 3) -> Any:
    """Compare cohorts (stacked-DiD sub-experiments, or CS cells by cohort) on the event-time axis.

    ``obj``: a result with ``by_cohort()`` (stacked DiD, Sun-Abraham), such a frame (``cohort``,
    ``event_time``, ``estimate`` ...), a mapping ``{cohort: result}``, or a result of kind
    ``"cells"`` (ATT(g,t): its cells by cohort).
    ``layout="overlay"`` draws one dodged series per cohort; ``"grid"`` one panel per cohort.
    """
    if layout not in ("overlay", "grid"):
        raise SpecError(f"layout={layout!r} is not one of ['overlay', 'grid']")
    frames = _cohort_frames(obj)
    out, tm = _names([obj], outcome, time)
    xl, yl = _es_labels(out, tm)
    xl, yl = xlabel or xl, ylabel or yl
    series = [(f"cohort {g}", df, c) for (g, df), c in zip(frames, _colors(len(frames)))]
    head = title or "Cohort comparison"
    if layout == "overlay":
        return render(FigureSpec(head, (_coef_facet(series, key="event_time", title=head, xlabel=xl, ylabel=yl,
                                                    shade=True),)), backend)
    facets = tuple(_coef_facet([s], key="event_time", title=s[0].capitalize(), xlabel=xl, ylabel=yl, shade=True)
                   for s in series)
    return render(FigureSpec(head, facets, ncols=min(ncols, len(facets)), width=380, height=280), backend)


def plot_aggregate(agg: Any, *, backend: Backend = "bokeh", title: str | None = None, xlabel: str | None = None,
                   ylabel: str | None = None, outcome: str | None = None, time: str | None = None) -> Any:
    """An :class:`AggregateResult`: event study for ``dynamic``; estimates by cohort (``group``),
    by period (``calendar``) or the single overall ATT (``simple``) otherwise."""
    if agg.kind == "dynamic":
        return plot_event_study(agg, backend=backend, title=title, xlabel=xlabel, ylabel=ylabel, outcome=outcome,
                                time=time)
    if agg.kind == "simple":
        z = _z(agg.alpha)
        df = pd.DataFrame({"key": ["overall"], "estimate": [agg.overall_att], "se": [agg.overall_se],
                           "ci_lower": [agg.overall_att - z * agg.overall_se],
                           "ci_upper": [agg.overall_att + z * agg.overall_se], "band_lower": [np.nan],
                           "band_upper": [np.nan]})
        key, xl0 = "key", ""
    else:
        key = agg.key_name
        df = _canonical(agg.to_frame(), agg.alpha, key=key)
        xl0 = f"Cohort (first treated {time})" if agg.kind == "group" and time else (
            "Cohort" if agg.kind == "group" else (time or "Period"))
    yl0 = f"ATT on {outcome}" if outcome else "ATT"
    head = title or {"simple": "Overall ATT", "group": "ATT by cohort", "calendar": "ATT by calendar period"}[agg.kind]
    facet = _coef_facet([("ATT", df, PALETTE[0])], key=key, title=head, xlabel=xlabel or xl0, ylabel=ylabel or yl0,
                        shade=False)
    return render(FigureSpec(head, (facet,)), backend)


def plot_result(obj: Any, kind: str | None = None, *, backend: Backend = "bokeh", **kwargs: Any) -> Any:
    """What ``result.plot()`` draws, by the result's ``result_kind``: for ``"cells"`` (ATT(g,t)) the
    cells by cohort (``kind="attgt"``, the default, as R ``ggdid``), ``"dynamic"`` (event study),
    ``"cohorts"``, ``"group"`` or ``"calendar"``; an ``"aggregate"`` by :func:`plot_aggregate`;
    anything else as an event study."""
    kind_of = getattr(obj, "result_kind", None)
    if kind_of == "aggregate":
        return plot_aggregate(obj, backend=backend, **kwargs)
    if kind_of != "cells":
        return plot_event_study(obj, backend=backend, **kwargs)
    kind = kind or "attgt"
    names = axis_names(obj)
    kwargs.setdefault("outcome", names.get("outcome"))
    kwargs.setdefault("time", names.get("time"))
    if kind == "attgt":
        return plot_attgt(obj, backend=backend, **kwargs)
    if kind == "cohorts":
        return plot_cohorts(obj, backend=backend, **kwargs)
    if kind in ("dynamic", "group", "calendar", "simple"):
        agg = obj.event_study() if kind == "dynamic" else obj.aggregate(kind)
        return plot_aggregate(agg, backend=backend, **kwargs)
    raise SpecError(f"kind={kind!r} is not one of ['attgt', 'dynamic', 'cohorts', 'group', 'calendar', 'simple']")


def plot_curve(frame: pd.DataFrame, *, key: str = "dose", backend: Backend = "bokeh", title: str | None = None,
               xlabel: str | None = None, ylabel: str = "ATT", width: int = 700, height: int = 400,
               ax: Any = None) -> Any:
    """A curve over a continuous key (the dose of ``continuous_did``'s ATT(d) / ACRT(d)) from a frame
    in the canonical schema keyed by ``key``: the estimate as a line, the pointwise interval and
    the uniform band (when finite) as shaded areas. A bokeh figure, or with ``backend="matplotlib"``
    the Axes drawn on (``ax``, or a new one)."""
    x = frame[key].to_numpy(float)
    xlabel = xlabel or ("event time" if key == "event_time" else key)
    title = title or f"{ylabel} by {xlabel}"
    has_band = "band_lower" in frame and np.isfinite(frame["band_lower"].to_numpy(float)).any()
    if backend == "bokeh":
        from bokeh.plotting import figure

        fig = figure(title=title, x_axis_label=xlabel, y_axis_label=ylabel, width=width, height=height)
        if has_band:
            fig.varea(x=x, y1=frame["band_lower"], y2=frame["band_upper"], fill_alpha=0.15,
                      legend_label="uniform band", name="band")
        fig.varea(x=x, y1=frame["ci_lower"], y2=frame["ci_upper"], fill_alpha=0.3, legend_label="pointwise",
                  name="ci")
        fig.line(x, frame["estimate"], line_width=2, legend_label=ylabel, name="estimate")
        return fig
    import matplotlib.pyplot as plt

    ax = ax if ax is not None else plt.subplots(figsize=(width / 100, height / 100))[1]
    if has_band:
        ax.fill_between(x, frame["band_lower"], frame["band_upper"], alpha=0.15, label="uniform band")
    ax.fill_between(x, frame["ci_lower"], frame["ci_upper"], alpha=0.3, label="pointwise interval")
    ax.plot(x, frame["estimate"], lw=2, label=ylabel)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return ax


# ----------------------------------------------------------------------------- checks
def plot_placebo(table: pd.DataFrame, *, backend: Backend = "bokeh", outcome: str | None = None,
                 title: str | None = None) -> Any:
    """Placebo estimates (``checks.placebo_check(...).to_frame()``) by shift k, one series per cohort."""
    frames = []
    for (g, d), c in zip(table.groupby("cohort", sort=True), _colors(table["cohort"].nunique())):
        d = d.assign(shift=-d["shift"].to_numpy())
        frames.append((f"cohort {g}", _canonical(d, 0.05, key="shift"), c))
    head = title or "Placebo adoption dates (pre-treatment data only)"
    facet = _coef_facet(frames, key="shift", title=head,
                        xlabel="Placebo adoption: periods before the true first treatment (-k)",
                        ylabel=f"Placebo effect on {outcome}" if outcome else "Placebo effect", shade=False)
    return render(FigureSpec(head, (facet,)), backend)


def plot_randomization(draws: np.ndarray | pd.DataFrame, observed: float, *, backend: Backend = "bokeh",
                       p_value: float | None = None, statistic: str = "ATT", bins: int = 30,
                       title: str | None = None) -> Any:
    """Histogram of the permutation distribution with the observed statistic (and its mirror)."""
    v = np.asarray(draws["statistic"] if isinstance(draws, pd.DataFrame) else draws, dtype=float)
    v = v[np.isfinite(v)]
    lim = max(float(np.max(np.abs(v))) if v.size else 0.0, abs(observed)) * 1.05 or 1.0
    counts, edges = np.histogram(v, bins=bins, range=(-lim, lim))
    layers = (Layer("bars", "permutations", PALETTE[7], x=edges[:-1], hi=counts.astype(float),
                    width=float(edges[1] - edges[0]), alpha=0.6),
              Layer("vline", "observed", PRE_COLOR, value=float(observed)),
              Layer("vline", "observed-mirror", PRE_COLOR, value=-float(observed), dashed=True))
    head = title or ("Randomization inference" + (f" (p = {p_value:.3f})" if p_value is not None else ""))
    facet = Facet(head, f"{statistic} under permuted cohort labels", "Permutations", layers)
    return render(FigureSpec(head, (facet,)), backend)


def plot_balance(table: pd.DataFrame, *, threshold: float = 0.1, backend: Backend = "bokeh",
                 title: str | None = None) -> Any:
    """Standardized mean differences by covariate (rows) and cohort (series), with the +-threshold lines."""
    covs = list(dict.fromkeys(table["covariate"].astype(str)))
    pos = {c: float(i) for i, c in enumerate(covs)}
    cohorts = list(dict.fromkeys(table["cohort"].astype(str)))
    m = len(cohorts)
    layers = [Layer("vline", "zero", "#000000", value=0.0),
              Layer("vline", "threshold:+", PRE_COLOR, value=threshold, dashed=True),
              Layer("vline", "threshold:-", PRE_COLOR, value=-threshold, dashed=True)]
    for i, (g, c) in enumerate(zip(cohorts, _colors(m))):
        d = table[table["cohort"].astype(str) == g]
        y = np.array([pos[str(v)] for v in d["covariate"]]) + (i - (m - 1) / 2) * (0.6 / max(m, 1))
        layers.append(Layer("points", f"smd:{g}", c, label=f"cohort {g}", x=d["smd"].to_numpy(float), y=y,
                            hover={"covariate": d["covariate"].astype(str).to_numpy(), "smd": d["smd"].to_numpy(float)}))
    head = title or "Covariate balance: cohorts vs controls"
    facet = Facet(head, "Standardized mean difference", "Covariate", tuple(layers),
                  yticks=tuple((p, c) for c, p in pos.items()))
    return render(FigureSpec(head, (facet,), height=max(240, 60 * len(covs) + 120)), backend)


def plot_pretrends(estimates: pd.DataFrame, *, backend: Backend = "bokeh", outcome: str | None = None,
                   time: str | None = None, title: str | None = None) -> Any:
    """The event study behind a pre-trend check (pre-treatment estimates in the shaded region)."""
    return plot_event_study(estimates, labels=["estimate"], backend=backend, outcome=outcome, time=time,
                            title=title or "Pre-trends: estimates before adoption")


def plot_honest_did(table: pd.DataFrame, *, breakdown: float | None = None, backend: Backend = "bokeh",
                    m_name: str = "M", outcome: str | None = None, title: str | None = None) -> Any:
    """Robust confidence intervals against M with the original interval on the left (R HonestDiD's
    ``createSensitivityPlot``), from ``honest_did(...).to_frame()`` (``M, lb, ub, method``; the
    original interval is the row of method ``"Original"``); the breakdown value as a dashed line."""
    missing = {"M", "lb", "ub", "method"} - set(table.columns)
    if missing:
        raise SpecError(f"a sensitivity plot needs the columns {sorted(missing)} of honest_did(...).to_frame()")
    orig = table[table["method"] == "Original"]
    rob = table[table["method"] != "Original"].sort_values("M", kind="stable")
    m = rob["M"].to_numpy(float)
    um = np.unique(m)
    gap = float(np.min(np.diff(um))) if um.size > 1 else max(float(um[0]) if um.size else 0.0, 1.0) * 0.5
    x0 = (float(m.min()) if m.size else 0.0) - gap
    layers: list[Layer] = [Layer("hline", "zero", "#000000", value=0.0, dashed=True)]
    for i, (meth, d) in enumerate(rob.groupby("method", sort=False)):
        x, lo, hi = d["M"].to_numpy(float), d["lb"].to_numpy(float), d["ub"].to_numpy(float)
        layers.append(Layer("whisker", f"robust:{meth}", PALETTE[i % len(PALETTE)], label=str(meth), x=x, lo=lo, hi=hi))
    if len(orig):
        lo, hi = orig["lb"].to_numpy(float)[:1], orig["ub"].to_numpy(float)[:1]
        layers.append(Layer("whisker", "original", PRE_COLOR, label="Original", x=np.array([x0]), lo=lo, hi=hi))
    if breakdown is not None and np.isfinite(breakdown):
        layers.append(Layer("vline", "breakdown", "#555555", value=float(breakdown), dashed=True))
    ticks = None
    if m.size <= 15:
        ticks = ((x0, "Original"),) * bool(len(orig)) + tuple((float(v), f"{v:g}") for v in np.unique(m))
    head = title or "Sensitivity to violations of parallel trends"
    ylabel = "Robust confidence interval" + (f" (effect on {outcome})" if outcome else "")
    facet = Facet(head, m_name, ylabel, tuple(layers), xticks=ticks)
    return render(FigureSpec(head, (facet,)), backend)


def plot_pretest_power(curve: pd.DataFrame, slope_for_power: Mapping[Any, float] | None = None, *,
                       backend: Backend = "bokeh", title: str | None = None) -> Any:
    """Power of the pre-test against the slope of a linear violation (``pretest_power(...).curve()``:
    ``slope, power``), with the slopes detected with 50% / 80% (``slope_for_power``) marked."""
    layers: list[Layer] = [Layer("line", "power", PALETTE[0], x=curve["slope"].to_numpy(float),
                                 y=curve["power"].to_numpy(float), label="power of the pre-test")]
    for i, (pw, s) in enumerate((slope_for_power or {}).items()):
        layers.append(Layer("vline", f"slope:{float(pw):g}", PALETTE[(i + 1) % len(PALETTE)], value=float(s), dashed=True))
        layers.append(Layer("points", f"detect:{float(pw):g}", PALETTE[(i + 1) % len(PALETTE)],
                            label=f"{100 * float(pw):g}% power: slope {s:.3g}", x=np.array([float(s)]),
                            y=np.array([float(pw)])))
    head = title or "Pre-test power against linear violations of parallel trends (Roth 2022)"
    facet = Facet(head, "Slope of the linear violation (per period)", "Probability the pre-test rejects",
                  tuple(layers))
    return render(FigureSpec(head, (facet,)), backend)


# ----------------------------------------------------------------------------- saving
def save_figure(fig: Any, path: str, *, title: str | None = None) -> str:
    """Write a bokeh layout to a standalone ``.html`` (bokeh JS inlined: opens offline) or a
    matplotlib figure to ``.png`` / ``.svg`` / ``.pdf``. Returns ``path``."""
    import os

    ext = os.path.splitext(os.fspath(path))[1].lower()
    is_mpl = type(fig).__module__.startswith("matplotlib")
    if ext in (".html", ".htm"):
        if is_mpl:
            raise SpecError("HTML output needs a bokeh figure (backend='bokeh')")
        from bokeh.embed import file_html
        from bokeh.resources import INLINE

        # INLINE: bokeh drops the bundles a figure does not use
        html = file_html(fig, resources=INLINE, title=title or "dte_dask plot")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(html)
        return path
    if ext in (".png", ".svg", ".pdf"):
        if not is_mpl:
            raise SpecError(f"{ext} output needs a matplotlib figure (backend='matplotlib')")
        fig.savefig(path, dpi=150 if ext == ".png" else None)
        return path
    raise SpecError(f"cannot save a figure as {ext!r}: use .html (bokeh) or .png/.svg/.pdf (matplotlib)")
