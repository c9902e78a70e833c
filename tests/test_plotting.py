"""Plots: every plot rendered with bokeh (HTML) and matplotlib (PNG), and what each one shows."""
from __future__ import annotations

import warnings

import dask
import numpy as np
import pandas as pd
import pytest

from dte_dask import plotting
from dte_dask.exceptions import SpecError

COLS = dict(outcome="lemp", unit="countyreal", time="year", group="first_treat")
LABEL = "Callaway-Sant'Anna"


@pytest.fixture(scope="module")
def res():
    import dte_dask

    with dask.config.set(scheduler="sync"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dte_dask.att_gt(dte_dask.datasets.load_mpdta(), **COLS, n_boot=199, seed=1)


class RegressionLike:
    """Stands in for a result of the protocol (dte_dask.results.base): canonical ``to_frame()``."""

    label = "event study"
    result_kind = "event_study"
    alpha = 0.05
    options = {"outcome": "lemp", "time": "year"}

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame

    def to_frame(self) -> pd.DataFrame:
        return self._frame.copy()

    def event_study(self) -> "RegressionLike":
        return self


def regression_frame(res, shift: float = 0.01, band: bool = True) -> pd.DataFrame:
    es = plotting.event_study_frame(res)
    df = pd.DataFrame({"event_time": es["event_time"], "estimate": es["estimate"] + shift, "se": es["se"],
                       "ci_lower": es["ci_lower"] + shift, "ci_upper": es["ci_upper"] + shift})
    if band:
        df["band_lower"], df["band_upper"] = es["band_lower"] + shift, es["band_upper"] + shift
    return df[df["event_time"] != -1].reset_index(drop=True)  # reference period omitted, as in a regression


# ----------------------------------------------------------------------------- helpers
def bokeh_figures(layout):
    from bokeh.plotting import figure

    return list(layout.select({"type": figure})) if not isinstance(layout, figure) else [layout]


def renderer(layout, name):
    found = list(layout.select(name=name))
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


def glyph_n(r) -> int:
    data = r.data_source.data
    return len(next(iter(data.values())))


def mpl_artist(fig, gid, ax_index=0):
    ax = fig.axes[ax_index]
    hits = [a for a in ax.get_children() if a.get_gid() == gid]
    assert len(hits) == 1, f"{gid}: {[a.get_gid() for a in ax.get_children()]}"
    return hits[0]


def png_ok(fig, path) -> np.ndarray:
    from matplotlib.image import imread

    plotting.save_figure(fig, str(path))
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    img = imread(str(path))[..., :3]
    assert (img < 0.95).any(axis=2).mean() > 0.02  # not blank
    return img


# ----------------------------------------------------------------------------- frames
def test_event_study_frame_pointwise_ci_and_uniform_band(res):
    dyn = res.aggregate("dynamic")
    es = plotting.event_study_frame(res)
    k = len(plotting.CANONICAL_COLUMNS)
    assert list(es.columns)[:k] == list(plotting.CANONICAL_COLUMNS)
    assert list(es.columns)[k:] == ["n_treated", "n_control"]  # the unit counts travel with the estimates
    np.testing.assert_array_equal(es["n_treated"], dyn.n_treated)
    np.testing.assert_array_equal(es["event_time"], dyn.keys)
    np.testing.assert_allclose(es["estimate"], dyn.att)
    np.testing.assert_allclose(es["ci_upper"] - es["estimate"], 1.959963984540054 * dyn.se)
    np.testing.assert_allclose(es["band_upper"] - es["estimate"], dyn.crit * dyn.se)
    assert dyn.crit > 1.96  # the sup-t band is wider than the pointwise CI


def test_frames_from_regression_like_objects(res):
    fr = plotting.event_study_frame(RegressionLike(regression_frame(res)))
    assert len(fr) == 6 and -1 not in fr["event_time"].to_numpy()
    assert np.isfinite(fr["band_lower"]).all()
    no_band = plotting.event_study_frame(regression_frame(res, band=False))
    assert no_band["band_lower"].isna().all()
    with pytest.raises(SpecError, match="event_time"):
        plotting.event_study_frame(pd.DataFrame({"estimate": [1.0]}))
    with pytest.raises(SpecError, match="dynamic"):
        plotting.event_study_frame(res.aggregate("group"))


# ----------------------------------------------------------------------------- event study
def test_event_study_bokeh_shows_points_ci_band_lines_and_shading(res, tmp_path):
    from bokeh.models import BoxAnnotation, Span

    fig = plotting.plot_event_study(res)
    es = plotting.event_study_frame(res)
    pts = renderer(fig, f"estimate:{LABEL}")
    assert glyph_n(pts) == len(es) == 7
    np.testing.assert_allclose(pts.data_source.data["y"], es["estimate"])
    band = renderer(fig, f"band:{LABEL}")
    np.testing.assert_allclose(band.data_source.data["top"], es["band_upper"])
    ci = renderer(fig, f"ci:{LABEL}")
    np.testing.assert_allclose(ci.data_source.data["y1"], es["ci_upper"])
    assert isinstance(renderer(fig, "shade:pre"), BoxAnnotation)
    assert renderer(fig, "shade:pre").right == renderer(fig, "shade:post").left == -0.5
    assert isinstance(renderer(fig, "zero"), Span) and renderer(fig, "zero").location == 0
    assert renderer(fig, "adoption").location == -0.5
    assert fig.xaxis[0].axis_label == "Event time (year relative to first treatment)"
    assert fig.yaxis[0].axis_label == "Effect on lemp"
    legend = [item.label["value"] for item in fig.legend[0].items]
    assert legend == ["95% uniform band", "95% pointwise CI"]
    html = open(plotting.save_figure(fig, str(tmp_path / "es.html")), encoding="utf-8").read()
    assert "cdn.bokeh.org" not in html and "<script src=" not in html and "Bokeh" in html


def test_event_study_png_shows_the_same(res, tmp_path):
    pytest.importorskip("matplotlib")
    fig = plotting.plot_event_study(res, backend="matplotlib")
    es = plotting.event_study_frame(res)
    pts = mpl_artist(fig, f"estimate:{LABEL}")
    np.testing.assert_allclose(pts.get_offsets()[:, 1], es["estimate"])
    assert len(mpl_artist(fig, f"band:{LABEL}").get_paths()) == 7
    assert len(mpl_artist(fig, f"ci:{LABEL}").get_segments()) == 7
    for gid in ("shade:pre", "shade:post", "zero", "adoption"):
        mpl_artist(fig, gid)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "Event time (year relative to first treatment)" and ax.get_ylabel() == "Effect on lemp"
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["95% pointwise CI", "95% uniform band"]
    img = png_ok(fig, tmp_path / "es.png")
    band_blue = (np.abs(img - np.array([0.12, 0.47, 0.71])).sum(axis=2) < 0.1).sum()
    assert band_blue > 200  # the estimates and whiskers are drawn in the series colour


def test_overlay_of_estimators_cs_frame_and_regression_result(res, tmp_path):
    results = {"CS": res, "event study": RegressionLike(regression_frame(res)),
               "stacked": regression_frame(res, shift=-0.01, band=False)}
    fig = plotting.plot_event_study(results)
    xs = {}
    for label, n in (("CS", 7), ("event study", 6), ("stacked", 6)):
        pts = renderer(fig, f"estimate:{label}")
        assert glyph_n(pts) == n
        xs[label] = np.asarray(pts.data_source.data["x"])
    assert len(list(fig.select(name="band:stacked"))) == 0  # no band where the result has none
    renderer(fig, "band:event study")
    assert xs["CS"][0] < -3 < xs["stacked"][0]  # dodged around the event time
    assert [i.label["value"] for i in fig.legend[0].items] == ["CS", "event study", "stacked"]
    assert fig.title.text == "Event study: estimators compared"
    pytest.importorskip("matplotlib")
    mfig = plotting.plot_event_study(results, backend="matplotlib")
    assert len(mpl_artist(mfig, "estimate:event study").get_offsets()) == 6
    png_ok(mfig, tmp_path / "overlay.png")


# ----------------------------------------------------------------------------- ATT(g,t) and cohorts
def test_attgt_small_multiples(res, tmp_path):
    cells = res.to_frame()
    grid = plotting.plot_attgt(res)
    figs = bokeh_figures(grid)
    assert sorted(f.title.text for f in figs) == ["Cohort 2004", "Cohort 2006", "Cohort 2007"]
    n_pre = sum(glyph_n(r) for f in figs for r in f.select(name="estimate:pre"))
    n_post = sum(glyph_n(r) for f in figs for r in f.select(name="estimate:post"))
    assert (n_pre, n_post) == ((cells["event_time"] < 0).sum(), (cells["event_time"] >= 0).sum()) == (5, 7)
    assert all(f.xaxis[0].axis_label == "year" and f.yaxis[0].axis_label == "ATT(g, t) on lemp" for f in figs)
    assert all(len(list(f.select(name="band:post"))) == 1 for f in figs)
    f2007 = next(f for f in figs if f.title.text == "Cohort 2007")
    assert renderer(f2007, "adoption").location == 2006.5
    pytest.importorskip("matplotlib")
    mfig = res.plot(backend="matplotlib")
    axes = [a for a in mfig.axes if a.get_visible()]
    assert [a.get_title() for a in axes] == ["Cohort 2004", "Cohort 2006", "Cohort 2007"]
    assert sum(len(a.collections) > 0 for a in axes) == 3 and axes[0].get_xlabel() == "year"
    png_ok(mfig, tmp_path / "attgt.png")


def test_cohort_comparison_overlay_and_grid(res, tmp_path):
    fig = plotting.plot_cohorts(res)
    counts = {g: glyph_n(renderer(fig, f"estimate:cohort {g}")) for g in (2004, 2006, 2007)}
    assert counts == {2004: 4, 2006: 4, 2007: 4}
    stacked = regression_frame(res).assign(cohort=2006)
    stacked = pd.concat([stacked, regression_frame(res, shift=0.02).assign(cohort=2007)], ignore_index=True)
    grid = plotting.plot_cohorts(stacked, layout="grid", outcome="lemp", time="year")
    figs = bokeh_figures(grid)
    assert sorted(f.title.text for f in figs) == ["Cohort 2006", "Cohort 2007"]
    assert all(glyph_n(next(iter(f.select(name=f"estimate:{f.title.text.lower()}")))) == 6 for f in figs)
    with pytest.raises(SpecError, match="layout"):
        plotting.plot_cohorts(res, layout="stacked")
    pytest.importorskip("matplotlib")
    png_ok(plotting.plot_cohorts(stacked, backend="matplotlib"), tmp_path / "cohorts.png")


def test_result_plot_methods_and_aggregations(res, tmp_path):
    from bokeh.models import GridPlot

    assert isinstance(res.plot(), GridPlot)  # ggdid by default
    dyn_fig = res.aggregate("dynamic").plot()
    assert glyph_n(renderer(dyn_fig, f"estimate:{LABEL}")) == 7
    grp = res.plot("group")
    assert glyph_n(renderer(grp, "estimate:ATT")) == 3 and grp.xaxis[0].axis_label == "Cohort (first treated year)"
    assert len(list(grp.select(name="shade:pre"))) == 0
    cal = res.aggregate("calendar").plot()
    assert glyph_n(renderer(cal, "estimate:ATT")) == 4
    simple = res.aggregate("simple").plot()
    assert glyph_n(renderer(simple, "estimate:ATT")) == 1
    with pytest.raises(SpecError, match="kind"):
        res.plot("nonsense")
    pytest.importorskip("matplotlib")
    for kind in ("dynamic", "group", "calendar", "cohorts"):
        png_ok(res.plot(kind, backend="matplotlib"), tmp_path / f"{kind}.png")


def test_dates_as_periods_get_date_tick_labels():
    import dte_dask

    df = dte_dask.datasets.load_mpdta()
    df["date"] = pd.to_datetime(df["year"].astype(str) + "-01-01")
    df["g"] = pd.to_datetime(df["first_treat"].astype(str).replace("0", None) + "-01-01")
    with dask.config.set(scheduler="sync"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = dte_dask.att_gt(df, outcome="lemp", unit="countyreal", time="date", group="g", bootstrap=False)
    figs = bokeh_figures(r.plot())
    assert sorted(f.title.text for f in figs) == ["Cohort 2004-01-01", "Cohort 2006-01-01", "Cohort 2007-01-01"]
    assert set(figs[0].xaxis[0].major_label_overrides.values()) == {"2004-01-01", "2005-01-01", "2006-01-01",
                                                                  "2007-01-01"}
    assert figs[0].xaxis[0].axis_label == "date"


# ----------------------------------------------------------------------------- check plots
def test_check_plots_from_tables(tmp_path):
    placebo = pd.DataFrame({"cohort": [5, 5, 7], "shift": [1, 2, 1], "estimate": [0.1, -0.1, 0.0],
                            "se": [0.1, 0.1, 0.1], "ci_lower": [-0.1, -0.3, -0.2], "ci_upper": [0.3, 0.1, 0.2]})
    f = plotting.plot_placebo(placebo, outcome="y")
    assert glyph_n(renderer(f, "estimate:cohort 5")) == 2 and glyph_n(renderer(f, "estimate:cohort 7")) == 1
    np.testing.assert_allclose(sorted(renderer(f, "estimate:cohort 5").data_source.data["x"]), [-2.1, -1.1], atol=0.2)
    assert f.yaxis[0].axis_label == "Placebo effect on y"
    draws = np.random.default_rng(0).normal(size=500)
    ri = plotting.plot_randomization(draws, 2.5, p_value=0.01)
    bars = renderer(ri, "permutations")
    assert sum(bars.data_source.data["top"]) == 500 and renderer(ri, "observed").location == 2.5
    bal = pd.DataFrame({"cohort": [4, 4, 7, 7], "covariate": ["age", "bmi", "age", "bmi"], "smd": [0.5, 0.05, 0.3, -0.2]})
    b = plotting.plot_balance(bal, threshold=0.1)
    assert glyph_n(renderer(b, "smd:4")) == 2 and renderer(b, "threshold:+").location == 0.1
    assert b.yaxis[0].major_label_overrides == {0.0: "age", 1.0: "bmi"}
    pytest.importorskip("matplotlib")
    for name, fig in (("placebo", plotting.plot_placebo(placebo, backend="matplotlib")),
                      ("ri", plotting.plot_randomization(draws, 2.5, backend="matplotlib")),
                      ("balance", plotting.plot_balance(bal, backend="matplotlib"))):
        png_ok(fig, tmp_path / f"{name}.png")
    mfig = plotting.plot_randomization(draws, 2.5, backend="matplotlib")
    assert len(mpl_artist(mfig, "permutations").get_paths()) == 30


def test_save_figure_rejects_mismatched_formats(res, tmp_path):
    with pytest.raises(SpecError, match="matplotlib"):
        plotting.save_figure(plotting.plot_event_study(res), str(tmp_path / "x.png"))
    with pytest.raises(SpecError, match="cannot save"):
        plotting.save_figure(plotting.plot_event_study(res), str(tmp_path / "x.txt"))
    with pytest.raises(SpecError, match="backend"):
        plotting.plot_event_study(res, backend="plotly")  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="labels"):
        plotting.plot_event_study([res, res], labels=["one"])


def test_overlay_with_the_regression_estimators(res, tmp_path):
    """CS, TWFE event study, stacked DiD and Sun-Abraham on one figure (issue 4's results)."""
    pytest.importorskip("dte_dask.regression_results")
    import dte_dask

    df = dte_dask.datasets.load_mpdta()
    with dask.config.set(scheduler="sync"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        others = [dte_dask.event_study(df, **COLS), dte_dask.sun_abraham(df, **COLS),
                  dte_dask.stacked_did(df, **COLS, window=(-2, 1), control="never_treated")]
    fig = plotting.plot_event_study([res, *others])
    labels = [LABEL, "TWFE event study", "Sun-Abraham", "Stacked DiD"]
    assert [i.label["value"] for i in fig.legend[0].items] == labels
    for label, obj in zip(labels[1:], others):
        frame = obj.to_frame()
        assert glyph_n(renderer(fig, f"estimate:{label}")) == len(frame)
        assert len(list(fig.select(name=f"band:{label}"))) == int(np.isfinite(frame["band_lower"]).any())
    cohorts = plotting.plot_cohorts(others[2])  # stacked sub-experiments, from by_cohort()
    by = others[2].by_cohort()
    assert sum(glyph_n(renderer(cohorts, f"estimate:cohort {g}")) for g in by["cohort"].unique()) == len(by)
    pytest.importorskip("matplotlib")
    png_ok(plotting.plot_event_study([res, *others], backend="matplotlib"), tmp_path / "four.png")
