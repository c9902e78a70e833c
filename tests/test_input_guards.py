"""Guards on input that used to fail late, or silently: windows beyond the panel, clustering by
the unit column, NaN cells named by their labels, pre-tests without pre-periods, all-zero weights,
cohorts after the last period."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import dte_dask
from dte_dask.exceptions import DteDaskWarning, EstimationError, PanelWarning, SpecError

COLS = dict(outcome="lemp", unit="countyreal", time="year", group="first_treat")


@pytest.fixture(scope="module")
def mpdta() -> pd.DataFrame:
    return dte_dask.datasets.load_mpdta()


@pytest.fixture(scope="module")
def panel(mpdta):
    return dte_dask.load_panel(mpdta, **COLS)


# ----------------------------------------------------------------------------- B: windows
def test_huge_event_study_window_is_clipped(panel) -> None:
    with pytest.warns(DteDaskWarning, match=r"window=\(-1000000000, 1000000000\) .* clipped to \(-4, 3\)"):
        big = dte_dask.event_study(panel, window=(-10**9, 10**9))
    ref = dte_dask.event_study(panel, window=None)  # every event time its own dummy: the same regression
    assert np.allclose(big.coef, ref.coef, rtol=1e-12, atol=1e-14) and np.array_equal(big.event_time, ref.event_time)
    assert not big.binned.any()  # a clipped side pools nothing


def test_window_inside_the_panel_is_untouched(panel) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DteDaskWarning)
        res = dte_dask.event_study(panel, window=(-3, 2))
    assert res.binned.tolist() == [True, False, False, False, True]
    assert res.to_frame()["event_time"].tolist() == [-3, -2, 0, 1, 2]


@pytest.mark.parametrize("fn", ["event_study", "stacked_did", "sun_abraham", "compare_estimators"])
def test_window_without_overlap_names_window(panel, fn) -> None:
    with pytest.raises(SpecError, match=r"window=\(10, 50\)"):
        getattr(dte_dask, fn)(panel, window=(10, 50))


def test_sun_abraham_and_stacked_clip(panel) -> None:
    with pytest.warns(DteDaskWarning, match=r"clipped to \(-4, 3\)"):
        sa = dte_dask.sun_abraham(panel, window=(-10**9, 10**9))
    assert np.array_equal(sa.coef, dte_dask.sun_abraham(panel).coef)
    with pytest.warns(DteDaskWarning, match=r"clipped to \(-1, 3\)"):
        st = dte_dask.stacked_did(panel, window=(-1, 10**9))
    assert st.to_frame()["event_time"].max() <= 3


# ----------------------------------------------------------------------------- D: cluster = unit
def test_cluster_on_the_unit_column_is_unit_clustering(mpdta, panel) -> None:
    a = dte_dask.att_gt(mpdta, **COLS, n_boot=99, seed=2)
    b = dte_dask.att_gt(mpdta, **COLS, cluster="countyreal", n_boot=99, seed=2)
    c = dte_dask.att_gt(panel, cluster="countyreal", n_boot=99, seed=2)
    assert np.array_equal(a.se_analytic, b.se_analytic) and np.array_equal(a.se, b.se)
    assert np.array_equal(a.se, c.se)
    for fn in ("event_study", "stacked_did", "sun_abraham"):
        kw = dict(window=(-1, 2)) if fn == "stacked_did" else {}
        r0 = getattr(dte_dask, fn)(mpdta, **COLS, **kw)
        r1 = getattr(dte_dask, fn)(mpdta, **COLS, cluster="countyreal", **kw)
        assert np.array_equal(r0.se, r1.se) and r0.n_clusters == r1.n_clusters, fn


# ----------------------------------------------------------------------------- E: labels, pre-tests, weights
def test_nan_cells_are_named_by_their_labels(mpdta) -> None:
    df = mpdta.assign(lpop2=2 * mpdta["lpop"])  # collinear: every cell NaN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = dte_dask.att_gt(df, **COLS, covariates=["lpop", "lpop2"], est_method="reg", bootstrap=False)
    with pytest.raises(EstimationError, match=r"NaN for cells \(g, t\) \[\(2004, 2004\), \(2004, 2005\), .*\(12 in all\)") as err:
        res.aggregate("dynamic")
    assert "np.float64" not in str(err.value)


def test_nan_cells_with_dates_are_named_by_dates(mpdta) -> None:
    ft = mpdta["first_treat"]
    df = mpdta.assign(year=pd.to_datetime(mpdta["year"].astype(str) + "-01-01"),
                      first_treat=pd.to_datetime(ft.where(ft > 0).astype("Int64").astype(str), errors="coerce"),
                      lpop2=2 * mpdta["lpop"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = dte_dask.att_gt(df, **COLS, covariates=["lpop", "lpop2"], est_method="reg", bootstrap=False)
    with pytest.raises(EstimationError, match=r"\(g, t\) \[\('2004-01-01', '2004-01-01'\)"):
        res.aggregate("group")


@pytest.mark.parametrize("fn", ["att_gt", "event_study"])
def test_pretest_without_pre_periods_warns_with_the_reason(mpdta, fn) -> None:
    df = mpdta[mpdta["first_treat"].isin([0, 2004])]  # treated in the 2nd period: no pre-period to test
    kw = dict(bootstrap=False) if fn == "att_gt" else {}
    res = getattr(dte_dask, fn)(df, **COLS, **kw)
    with pytest.warns(DteDaskWarning, match=r"No pre-treatment periods to test: .*"):
        pt = res.pretrend_test()
    assert pt["df"] == 0 and np.isnan(pt["p_value"]) and pt["reason"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DteDaskWarning)
        assert "not available (" in res.summary()


def test_all_zero_weights_refused(mpdta) -> None:
    with pytest.raises(SpecError, match=r"column 'w' \(weights\) is zero for all 500 units"):
        dte_dask.att_gt(mpdta.assign(w=0.0), **COLS, weights="w", bootstrap=False)
    with pytest.raises(SpecError, match=r"column 'w' \(weights\)"):
        dte_dask.event_study(mpdta.assign(w=0.0), **COLS, weights="w")


@pytest.mark.parametrize("w", [-1.0, np.nan])
def test_negative_or_missing_weights_refused(mpdta, w) -> None:
    df = mpdta.assign(w=np.where(mpdta["countyreal"] == mpdta["countyreal"].iloc[0], w, 1.0))
    with pytest.raises(dte_dask.exceptions.PanelError, match=r"column 'w' \(weights\) must be finite and non-negative"):
        dte_dask.att_gt(df, **COLS, weights="w", bootstrap=False)


# ----------------------------------------------------------------------------- F: late cohorts
def test_cohort_after_the_last_period_warns_once(mpdta) -> None:
    df = mpdta.assign(first_treat=mpdta["first_treat"].replace(2007, 2050))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        late = dte_dask.att_gt(df, **COLS, bootstrap=False)
    msgs = [str(w.message) for w in rec if issubclass(w.category, PanelWarning) and "after the last period" in str(w.message)]
    assert len(msgs) == 1 and "131 units" in msgs[0] and "[2050]" in msgs[0] and "(2007)" in msgs[0], msgs
    never = dte_dask.att_gt(mpdta.assign(first_treat=mpdta["first_treat"].replace(2007, 0)), **COLS, bootstrap=False)
    assert np.array_equal(late.att, never.att, equal_nan=True)  # R's convention: never treated


def test_placebo_shifts_beyond_the_panel_are_clipped(panel) -> None:
    from dte_dask import checks

    with pytest.warns(DteDaskWarning, match=r"shifts=1000000000 is beyond the panel's 5 periods; clipped to 3"):
        big = checks.placebo_check(panel, shifts=10**9)
    assert big.table.equals(checks.placebo_check(panel, shifts=3).table)


def test_randomization_check_validates_seed_and_n_perm_before_any_work() -> None:
    from dte_dask.checks import randomization_check

    df = dte_dask.datasets.load_mpdta()
    kw = dict(outcome="lemp", unit="countyreal", time="year", group="first_treat")
    with pytest.raises(SpecError, match="seed"):
        randomization_check(df, **kw, seed=-1)
    with pytest.raises(SpecError, match="n_perm"):
        randomization_check(df, **kw, n_perm=0)
