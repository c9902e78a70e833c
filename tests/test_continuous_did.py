"""continuous_did against moderndid ``cont_did`` (R ``contdid`` port), closed forms and a known truth."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from dte_dask.estimators.continuous_did import continuous_did
from dte_dask.exceptions import SpecError

pytest.importorskip("moderndid")
import moderndid
import polars as pl

COLS = dict(outcome="Y", unit="id", time="time_period", group="G", dose="D")


@pytest.fixture(autouse=True)
def _polars_is_in(monkeypatch):
    """moderndid 0.x filters a Float64 group column with an int64 array, which polars >= 2 refuses."""
    orig = pl.Expr.is_in

    def is_in(self, other, *a, **k):
        if isinstance(other, np.ndarray) and other.dtype.kind in "iu":
            other = other.astype(float)
        return orig(self, other, *a, **k)

    monkeypatch.setattr(pl.Expr, "is_in", is_in)


def _md(data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return moderndid.cont_did(data, yname="Y", tname="time_period", idname="id", gname="G", dname="D",
                                  biters=20, random_state=0, **kw)


def _ours(pdf, **kw):
    kw.setdefault("bootstrap", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return continuous_did(pdf, **COLS, **kw)


@pytest.fixture(scope="module")
def staggered():
    d = moderndid.gen_cont_did_data(n=400, seed=3)
    return d, d.to_pandas()


@pytest.fixture(scope="module")
def two_period():
    d = moderndid.gen_cont_did_data(n=300, num_time_periods=2, seed=5)
    return d, d.to_pandas()


@pytest.mark.parametrize("num_knots,control", [(0, "not_yet_treated"), (2, "never_treated")])
def test_dose_curves_match_moderndid(staggered, num_knots, control):
    d, pdf = staggered
    m = _md(d, num_knots=num_knots, control_group=control.replace("_", ""))
    lv = _ours(pdf, num_knots=num_knots, control_group=control)
    sl = _ours(pdf, num_knots=num_knots, control_group=control, target="slope")
    np.testing.assert_allclose(lv.keys, m.dose, atol=1e-12)
    np.testing.assert_allclose(lv.estimates, m.att_d, atol=1e-8, rtol=0)
    np.testing.assert_allclose(sl.estimates, m.acrt_d, atol=1e-8, rtol=0)
    np.testing.assert_allclose(lv.att_d, sl.att_d, atol=0)
    assert abs(lv.overall["att"] - m.overall_att) < 1e-8
    assert abs(lv.overall["acrt"] - m.overall_acrt) < 1e-8


def test_standard_errors_one_cohort(two_period):
    """One cohort: ACRT(d)'s influence function is moderndid's; the others by closed forms."""
    d, pdf = two_period
    m = _md(d, num_knots=1)
    lv = _ours(pdf, num_knots=1)
    sl = _ours(pdf, num_knots=1, target="slope")
    n = m.acrt_d_inf_func.shape[0]
    np.testing.assert_allclose(np.sqrt(np.diag(sl.vcov())), np.sqrt((m.acrt_d_inf_func ** 2).sum(0)) / n,
                               rtol=1e-6, atol=0)
    wide = pdf.pivot(index="id", columns="time_period", values="Y")
    g = pdf.groupby("id")["G"].first()
    dy = wide[2] - wide[1]
    t, c = dy[g == 2].to_numpy(), dy[g == 0].to_numpy()
    ctrl = ((c - c.mean()) ** 2).sum() / c.size ** 2  # variance of the comparison mean (moderndid omits it)
    se_treated = np.sqrt((m.att_d_inf_func ** 2).sum(0)) / n
    np.testing.assert_allclose(np.sqrt(np.diag(lv.vcov())), np.sqrt(se_treated ** 2 + ctrl), rtol=1e-6)
    se_att_o = np.sqrt(((t - t.mean()) ** 2).sum() / t.size ** 2 + ctrl)
    assert lv.overall_se_analytic["att"] == pytest.approx(se_att_o, rel=1e-6)
    # moderndid scales the cohort's ACRT^o influence function by n / n_cell instead of n / n_cohort
    se_md = np.sqrt((m.overall_acrt_inf_func ** 2).sum()) / n * (n / t.size)
    assert lv.overall_se_analytic["acrt"] == pytest.approx(se_md, rel=1e-6)


def test_event_study(staggered):
    """ACRT by event time matches moderndid; ATT by event time is R did's dynamic aggregation (csdid)."""
    from tests.peers import aggte_csdid

    d, pdf = staggered
    m = _md(d, aggregation="eventstudy", target_parameter="slope")
    sl = _ours(pdf, aggregation="eventstudy", target="slope")
    np.testing.assert_array_equal(sl.keys, m.event_study.event_times)
    np.testing.assert_allclose(sl.estimates, m.event_study.att_by_event, atol=1e-8, rtol=0)
    assert sl.overall["acrt"] == pytest.approx(m.overall_att.overall_att, abs=1e-8)
    lv = _ours(pdf, aggregation="eventstudy", target="level")
    ref = aggte_csdid(pdf, "Y", "id", "time_period", "G", control_group="not_yet_treated", est_method="reg",
                      kinds=("dynamic",))
    ov = ref[ref["key"] == "overall"].iloc[0]
    assert lv.overall["att"] == pytest.approx(ov["att"], abs=1e-8)
    assert lv.overall_se_analytic["att"] == pytest.approx(ov["se"], rel=1e-6)
    ref = ref[ref["key"] != "overall"]
    np.testing.assert_allclose(lv.estimates, ref["att"].to_numpy(float), atol=1e-8, rtol=0)
    np.testing.assert_allclose(lv.to_frame()["se"], ref["se"].to_numpy(float), rtol=1e-6, atol=0)


def test_bootstrap_partition_invariant_and_consistent(staggered):
    _, pdf = staggered
    kw = dict(bootstrap=True, n_boot=400, seed=11, target="slope")
    a = _ours(pdf, npartitions=1, **kw)
    b = _ours(pdf, npartitions=3, **kw)
    np.testing.assert_array_equal(a.estimates, b.estimates)
    np.testing.assert_array_equal(a.vcov(), b.vcov())
    np.testing.assert_array_equal(a.draws, b.draws)
    f = a.to_frame()
    ratio = f["se"] / f["se_analytic"]
    assert 0.85 < ratio.median() < 1.15
    assert (f["band_upper"] - f["band_lower"] >= f["ci_upper"] - f["ci_lower"] - 1e-12).all()


def test_known_dose_response():
    d = moderndid.gen_cont_did_data(n=4000, seed=8, dose_linear_effect=0.5, dose_quadratic_effect=1.0)
    r = _ours(d.to_pandas(), degree=2, n_grid=9)
    grid = r.keys
    f = r.to_frame()
    z = (f["estimate"] - (0.5 * grid + grid ** 2)) / f["se"]
    assert np.all(np.abs(z) < 4), z
    sl = _ours(d.to_pandas(), degree=2, n_grid=9, target="slope")
    zs = (sl.estimates - (0.5 + 2 * grid)) / sl.to_frame()["se"]
    assert np.all(np.abs(zs) < 4), zs


def test_errors_and_plot(staggered):
    _, pdf = staggered
    with pytest.raises(SpecError, match="cck' needs two periods and one treated cohort"):
        _ours(pdf, dose_method="cck", bootstrap=True, n_boot=50)
    with pytest.raises(SpecError, match="target"):
        _ours(pdf, target="bogus")
    bad = pdf.copy()
    bad.loc[bad["G"] == 3, "D"] = 0.0
    with pytest.raises(ValueError, match="cohort 3 .*dose <= 0"):
        _ours(bad)
    pre = pdf.copy()
    pre.loc[(pre["G"] > 0) & (pre["time_period"] < pre["G"]), "D"] = 0.0  # dose coded 0 before treatment
    with pytest.raises(ValueError, match="unit .* changes over time"):
        _ours(pre)
    import matplotlib

    matplotlib.use("Agg")
    r = _ours(pdf, bootstrap=True, n_boot=100, seed=1)
    ax = r.plot(backend="matplotlib")
    assert len(ax.lines) >= 1 and len(ax.collections) == 2
    fig = r.plot()  # bokeh: estimate line, pointwise interval and uniform band
    assert len(fig.renderers) == 3
    assert "dose" in r.to_frame().columns and "ATT^o" in r.summary()
    assert isinstance(r.to_frame(), pd.DataFrame)


@pytest.mark.parametrize("discrete", [False, True])
def test_knots_are_exact_quantiles_without_gathering_doses(discrete):
    """The histogram-then-gather knots equal np.quantile of every treated dose repeated by its post periods."""
    from dte_dask.core.blocks import UnitBlock
    from dte_dask.core.contdid import N_BINS, dose_histogram, doses_in_bins, knots_from, needed_bins

    rng = np.random.default_rng(7)
    n, T = 3000, 6
    g = rng.choice([1.0, 2.0, 4.0, np.inf], n)
    d = np.where(np.isfinite(g), rng.integers(1, 6, n) / 2 if discrete else rng.lognormal(size=n), 0.0)
    blocks = [UnitBlock(np.arange(a, b), np.arange(a, b), g[a:b], np.ones(b - a), None, np.zeros((b - a, T)),
                        d[a:b, None]) for a, b in ((0, 1000), (1000, 1700), (1700, n))]
    groups = np.array([1.0, 2.0, 4.0])
    tr = np.isfinite(g)
    edges = np.linspace(d[tr].min(), d[tr].max(), N_BINS + 1)
    for num_knots in (1, 3, 7):
        hist = sum(dose_histogram(b, 0, groups, T, edges) for b in blocks)
        bins = needed_bins(hist, num_knots)
        got = knots_from(hist, edges, [doses_in_bins(b, 0, groups, T, edges, bins) for b in blocks], num_knots)
        want = np.quantile(np.repeat(d[tr], (T - g[tr]).astype(int)), np.linspace(0, 1, num_knots + 2))[1:-1]
        np.testing.assert_array_equal(got, want)
