"""Backend-neutral figure specifications and their two renderers (bokeh, matplotlib).

:mod:`dte_dask.plotting` describes every plot as a :class:`FigureSpec` — facets holding typed
layers — and this module draws it. Each layer carries a ``name`` (``"estimate:CS"``,
``"band:CS"``, ``"shade:pre"``...) that becomes the bokeh renderer's ``name`` or the matplotlib
artist's ``gid``, so tests and users can find what a figure shows. bokeh and matplotlib are
imported only when a figure is rendered.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from dte_dask.exceptions import SpecError

Backend = Literal["bokeh", "matplotlib"]
LayerKind = Literal["points", "line", "whisker", "band", "bars", "hline", "vline", "span"]

#: Colour cycle (matplotlib's tab10), used in the same order by both backends.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
PRE_COLOR = "#d62728"  # ggdid: pre-treatment estimates in red
POST_COLOR = "#1f77b4"  # post-treatment estimates in blue
SHADE = {"pre": "#9e9e9e", "post": "#4f8fd6"}

_EMPTY = np.empty(0)


@dataclass(frozen=True)
class Layer:
    """One thing drawn on a facet.

    kinds: ``points`` (markers at x, y), ``line`` (x, y joined), ``whisker`` (vertical segments lo..hi at x; horizontal
    when ``horizontal``), ``band`` (translucent boxes lo..hi of ``width`` at x: uniform bands),
    ``bars`` (histogram boxes from ``x``=left edges, ``width``, ``hi``=heights), ``hline``/``vline``
    (a reference line at ``value``), ``span`` (shaded x-range ``lo[0]..hi[0]``).
    """

    kind: LayerKind
    name: str
    color: str = "#000000"
    label: str | None = None
    x: np.ndarray = field(default_factory=lambda: _EMPTY)
    y: np.ndarray = field(default_factory=lambda: _EMPTY)
    lo: np.ndarray = field(default_factory=lambda: _EMPTY)
    hi: np.ndarray = field(default_factory=lambda: _EMPTY)
    width: float = 0.0
    value: float = 0.0
    alpha: float = 1.0
    dashed: bool = False
    horizontal: bool = False
    hover: dict[str, np.ndarray] | None = None

    @property
    def size(self) -> int:
        return int(np.asarray(self.x).size)


@dataclass(frozen=True)
class Facet:
    """One set of axes."""

    title: str
    xlabel: str
    ylabel: str
    layers: tuple[Layer, ...]
    xticks: tuple[tuple[float, str], ...] | None = None
    yticks: tuple[tuple[float, str], ...] | None = None

    def layer(self, name: str) -> Layer:
        for lay in self.layers:
            if lay.name == name:
                return lay
        raise KeyError(name)


@dataclass(frozen=True)
class FigureSpec:
    """Facets laid out on a grid of ``ncols`` columns; ``width``/``height`` per facet in pixels."""

    title: str
    facets: tuple[Facet, ...]
    ncols: int = 1
    width: int = 760
    height: int = 380


def render(spec: FigureSpec, backend: Backend) -> Any:
    """Draw ``spec``: a bokeh layout (``figure`` or ``GridPlot``) or a matplotlib ``Figure``."""
    if backend == "bokeh":
        return _render_bokeh(spec)
    if backend == "matplotlib":
        return _render_mpl(spec)
    raise SpecError(f"backend={backend!r} is not one of ['bokeh', 'matplotlib']")


# ----------------------------------------------------------------------------------- bokeh
def _render_bokeh(spec: FigureSpec) -> Any:
    from bokeh.layouts import gridplot

    single = len(spec.facets) == 1
    figs = [_bokeh_facet(f, spec.width + (160 if single else 0), spec.height, outside_legend=single)
            for f in spec.facets]
    if len(figs) == 1:
        return figs[0]
    return gridplot(figs, ncols=spec.ncols, width=spec.width, height=spec.height, merge_tools=True)


def _bokeh_facet(facet: Facet, width: int, height: int, outside_legend: bool = False) -> Any:
    from bokeh.models import BoxAnnotation, ColumnDataSource, FixedTicker, HoverTool, Span
    from bokeh.plotting import figure

    p = figure(title=facet.title, x_axis_label=facet.xlabel, y_axis_label=facet.ylabel, width=width,
               height=height, tools="pan,box_zoom,wheel_zoom,reset,save")
    p.grid.grid_line_alpha = 0.4
    legend = False
    for lay in facet.layers:
        dash = "dashed" if lay.dashed else "solid"
        if lay.kind == "span":
            p.add_layout(BoxAnnotation(left=float(lay.lo[0]), right=float(lay.hi[0]), fill_color=lay.color,
                                       fill_alpha=lay.alpha, line_alpha=0.0, name=lay.name, level="underlay"))
        elif lay.kind in ("hline", "vline"):
            p.add_layout(Span(location=lay.value, dimension="width" if lay.kind == "hline" else "height",
                              line_color=lay.color, line_dash=dash, line_width=1.2, name=lay.name))
        elif lay.kind == "points":
            data = {"x": lay.x, "y": lay.y, **(lay.hover or {})}
            kw = {"legend_label": lay.label} if lay.label else {}
            r = p.scatter("x", "y", source=ColumnDataSource(data), size=8, color=lay.color, name=lay.name, **kw)
            legend = legend or bool(lay.label)
            if lay.hover:
                p.add_tools(HoverTool(renderers=[r], tooltips=[(k, f"@{{{k}}}{{0.0000}}" if np.asarray(v).dtype.kind == "f"
                                                                else f"@{{{k}}}") for k, v in lay.hover.items()]))
        elif lay.kind == "line":
            kw = {"legend_label": lay.label} if lay.label else {}
            p.line(lay.x, lay.y, color=lay.color, line_width=2, line_dash=dash, name=lay.name, **kw)
            legend = legend or bool(lay.label)
        elif lay.kind == "whisker":
            kw = {"legend_label": lay.label} if lay.label else {}
            if lay.horizontal:
                p.segment(x0=lay.lo, y0=lay.y, x1=lay.hi, y1=lay.y, color=lay.color, line_width=1.6, name=lay.name, **kw)
            else:
                p.segment(x0=lay.x, y0=lay.lo, x1=lay.x, y1=lay.hi, color=lay.color, line_width=1.6, name=lay.name, **kw)
            legend = legend or bool(lay.label)
        elif lay.kind == "band":
            kw = {"legend_label": lay.label} if lay.label else {}
            p.vbar(x=lay.x, width=lay.width, bottom=lay.lo, top=lay.hi, fill_color=lay.color,
                   fill_alpha=lay.alpha, line_alpha=0.0, name=lay.name, **kw)
            legend = legend or bool(lay.label)
        elif lay.kind == "bars":
            p.quad(left=lay.x, right=lay.x + lay.width, bottom=np.zeros_like(lay.hi), top=lay.hi,
                   fill_color=lay.color, fill_alpha=lay.alpha, line_color="white", name=lay.name)
    for ticks, axis in ((facet.xticks, p.xaxis), (facet.yticks, p.yaxis)):
        if ticks:
            axis.ticker = FixedTicker(ticks=[float(t) for t, _ in ticks])
            axis.major_label_overrides = {float(t): s for t, s in ticks}
    if legend:
        p.legend.click_policy = "hide"
        p.legend.background_fill_alpha = 0.7
        p.legend.label_text_font_size = "11px"
        if outside_legend:
            p.add_layout(p.legend[0], "right")
        else:
            p.legend.location = "top_left"
    return p


# ----------------------------------------------------------------------------------- matplotlib
def _render_mpl(spec: FigureSpec) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("PNG plots need matplotlib: pip install 'dte_dask[plot]'") from exc
    n = len(spec.facets)
    ncols = max(1, min(spec.ncols, n))
    nrows = -(-n // ncols)
    fig = Figure(figsize=(ncols * spec.width / 100.0, nrows * spec.height / 100.0), dpi=100,
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        if i < n:
            _mpl_facet(ax, spec.facets[i])
        else:
            ax.set_visible(False)
    if spec.title and n > 1:
        fig.suptitle(spec.title)
    return fig


def _boxes(x0: np.ndarray, x1: np.ndarray, y0: np.ndarray, y1: np.ndarray) -> list[np.ndarray]:
    return [np.array([[a, c], [b, c], [b, d], [a, d]]) for a, b, c, d in zip(x0, x1, y0, y1)]


def _mpl_facet(ax: Any, facet: Facet) -> None:
    from matplotlib.collections import PolyCollection

    legend = False
    for lay in facet.layers:
        ls = "--" if lay.dashed else "-"
        if lay.kind == "span":
            ax.axvspan(float(lay.lo[0]), float(lay.hi[0]), color=lay.color, alpha=lay.alpha, lw=0, zorder=0,
                       gid=lay.name)
        elif lay.kind == "hline":
            ax.axhline(lay.value, color=lay.color, ls=ls, lw=1.0, zorder=1, gid=lay.name)
        elif lay.kind == "vline":
            ax.axvline(lay.value, color=lay.color, ls=ls, lw=1.0, zorder=1, gid=lay.name)
        elif lay.kind == "points":
            ax.scatter(lay.x, lay.y, s=30, color=lay.color, label=lay.label, zorder=4, gid=lay.name)
            legend = legend or bool(lay.label)
        elif lay.kind == "line":
            ax.plot(lay.x, lay.y, color=lay.color, ls=ls, lw=2, zorder=3, gid=lay.name, label=lay.label)
            legend = legend or bool(lay.label)
        elif lay.kind == "whisker":
            f = ax.hlines if lay.horizontal else ax.vlines
            f(lay.y if lay.horizontal else lay.x, lay.lo, lay.hi, color=lay.color, lw=1.5, zorder=3, gid=lay.name,
              label=lay.label)
            legend = legend or bool(lay.label)
        elif lay.kind in ("band", "bars"):
            if lay.kind == "band":
                verts = _boxes(lay.x - lay.width / 2, lay.x + lay.width / 2, lay.lo, lay.hi)
            else:
                verts = _boxes(lay.x, lay.x + lay.width, np.zeros_like(lay.hi), lay.hi)
            keep = [v for v in verts if np.all(np.isfinite(v))]
            pc = PolyCollection(keep, facecolor=lay.color, alpha=lay.alpha, edgecolor="white" if lay.kind == "bars"
                                else "none", zorder=2, gid=lay.name, label=lay.label)
            ax.add_collection(pc)
            legend = legend or bool(lay.label)
            ax.update_datalim(np.vstack(keep) if keep else np.zeros((0, 2)))
            ax.autoscale_view()
    ax.set_title(facet.title, fontsize=10)
    ax.set_xlabel(facet.xlabel)
    ax.set_ylabel(facet.ylabel)
    if facet.xticks:
        ax.set_xticks([t for t, _ in facet.xticks], [s for _, s in facet.xticks])
    if facet.yticks:
        ax.set_yticks([t for t, _ in facet.yticks], [s for _, s in facet.yticks])
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(loc="best", fontsize=8, framealpha=0.7)
