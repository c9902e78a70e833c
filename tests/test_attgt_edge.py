"""Edge cases of att_gt: R did's conventions, degenerate cells, bad options."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import dte_dask
from dte_dask.exceptions import DegenerateCellWarning, EstimationError, PanelWarning, SpecError

KW = dict(outcome="lemp", unit="countyreal", time="year", group="first_treat", bootstrap=False)


@pytest.fixture(scope="module")
def mpdta():
    return dte_dask.datasets.load_mpdta()


def test_no_never_treated_coerces_last_cohort(mpdta):
    """R did 2.5.1: the latest cohort becomes the control group and periods from it on are dropped."""
    treated = mpdta[mpdta["first_treat"] > 0]
    with pytest.warns(PanelWarning, match="coerced as 'never-treated'"):
        res = dte_dask.att_gt(treated, **KW).to_frame()
    manual = treated[treated["year"] < 2007].assign(first_treat=lambda d: d["first_treat"].where(d["first_treat"] != 2007, 0))
    expected = dte_dask.att_gt(manual, **KW).to_frame()
    pd.testing.assert_frame_equal(res, expected)


def test_early_treated_units_are_dropped_with_warning(mpdta):
    df = mpdta.copy()
    df.loc[df["countyreal"].isin(df["countyreal"].unique()[:3]), "first_treat"] = 2003
    with pytest.warns(PanelWarning, match="Dropped 3 units"):
        res = dte_dask.att_gt(df, **KW)
    assert res.n_units == 497


def test_anticipation_drops_units_without_clean_pre_period(mpdta):
    with pytest.warns(PanelWarning, match="Dropped 20 units"):  # cohort 2004 has no period before 2004 - 1
        res = dte_dask.att_gt(mpdta, anticipation=1, **KW)
    f = res.to_frame()
    assert set(f["group"]) == {2006, 2007}
    row = f.query("group == 2006 and time == 2006").iloc[0]
    wide = mpdta.pivot(index="countyreal", columns="year", values="lemp")
    g = mpdta.groupby("countyreal")["first_treat"].first()
    d = wide[2006] - wide[2004]  # base period g - 1 - anticipation
    assert row["estimate"] == pytest.approx(d[g == 2006].mean() - d[g == 0].mean(), abs=1e-12)


def test_collinear_covariate_gives_nan_cell_with_warning(mpdta):
    df = mpdta.assign(lpop2=2 * mpdta["lpop"])
    with pytest.warns(DegenerateCellWarning, match=r"ATT\(g=2004, t=2004\), .* are NaN: singular"):
        res = dte_dask.att_gt(df, covariates=["lpop", "lpop2"], est_method="reg", **KW)
    assert np.isnan(res.att).all()
    with pytest.raises(EstimationError, match="NaN for cells"):
        res.aggregate("dynamic")


def test_perfect_separation_gives_nan_with_reason(mpdta):
    g = mpdta["first_treat"]
    df = mpdta.assign(sep=np.where(g == 2004, 1.0, 0.0) + 0.01 * mpdta["lpop"])
    with pytest.warns(DegenerateCellWarning, match="separation"):
        res = dte_dask.att_gt(df, covariates=["sep"], est_method="ipw", **KW)
    f = res.to_frame()
    assert f.loc[f["group"] == 2004, "estimate"].isna().all()
    assert f.loc[f["group"] == 2006, "estimate"].notna().all()
    assert np.isfinite(res.aggregate("dynamic", na_rm=True).overall_att)


@pytest.mark.parametrize("bad,match", [
    (dict(control_group="notyettreated"), "control_group"),
    (dict(base_period="fixed"), "base_period"),
    (dict(est_method="ols"), "est_method"),
    (dict(anticipation=-1), "anticipation"),
    (dict(alpha=1.5), "alpha"),
    (dict(boot_weights="webb", bootstrap=True), "boot_weights"),
])
def test_bad_options_raise_spec_error(mpdta, bad, match):
    kw = {**KW, **bad}
    with pytest.raises(SpecError, match=match):
        dte_dask.att_gt(mpdta, **kw)


def test_unbalanced_without_covariates_matches_four_means(mpdta):
    df = mpdta.drop(index=mpdta.index[::7])  # drop every 7th row
    res = dte_dask.att_gt(df, allow_unbalanced_panel=True, **KW).to_frame()
    row = res.query("group == 2006 and time == 2007").iloc[0]
    g = df.groupby("countyreal")["first_treat"].first()
    def mean(cohort_mask, year):
        sub = df[(df["year"] == year) & df["countyreal"].map(cohort_mask)]
        return sub["lemp"].mean()
    treated, never = (g == 2006), (g == 0)
    expected = (mean(treated, 2007) - mean(treated, 2005)) - (mean(never, 2007) - mean(never, 2005))
    assert row["estimate"] == pytest.approx(expected, abs=1e-12)


def test_dates_as_periods(mpdta):
    df = mpdta.assign(date=pd.to_datetime(mpdta["year"].astype(str) + "-01-01"),
                      gdate=pd.to_datetime(mpdta["first_treat"].where(mpdta["first_treat"] > 0).astype("Int64").astype(str) + "-01-01", errors="coerce"))
    a = dte_dask.att_gt(mpdta, **KW).to_frame()
    b = dte_dask.att_gt(df, outcome="lemp", unit="countyreal", time="date", group="gdate", bootstrap=False).to_frame()
    np.testing.assert_allclose(b["estimate"], a["estimate"], atol=1e-14)
    assert list(b["event_time"]) == list(a["event_time"])
    assert b["group"].iloc[0] == pd.Timestamp("2004-01-01")
    d = dte_dask.att_gt(df, outcome="lemp", unit="countyreal", time="date", group="gdate", bootstrap=False).aggregate("group").to_frame()
    assert d["group"].iloc[0] == pd.Timestamp("2004-01-01")
