"""dte_dask's ATT(g,t) on real public panels, cell by cell and aggregation by aggregation against
csdid (a line-by-line port of R ``did``), with analytic standard errors.

The data ship inside packages of the ``test`` extra and are loaded at test time (the tests skip,
naming the package, when it is absent):

* EHEC (``moderndid.core.data.load_ehec``; Rambachan & Roth 2023, via Callaway's Medicaid example):
  46 US states, 2008-2019, share of low-income childless adults with health insurance; staggered
  Medicaid expansion 2014-2019 with the 16 never-expanding states coded **NaN** in ``yexp2``
  (R ``did`` codes them 0); state population weights ``W``.
* NSW / LaLonde (``moderndid.core.data.load_nsw``; LaLonde 1986, Dehejia & Wahba, as in DRDID):
  two periods (1975, 1978), 425 experimental trainees against 15,992 CPS comparison units,
  covariates age, educ, black, married, nodegree, hisp, re74: a strongly imbalanced design.
* Favara & Imbs (``moderndid.core.data.load_favara_imbs``; Favara & Imbs 2015 AER, via de
  Chaisemartin & D'Haultfoeuille 2024): US counties 1994-2005, change in log loan volume, with
  sampling weights ``w1``; the cohort is the first year a county's state allowed interstate
  branching (``inter_bra > 0``), never-deregulated counties coded 0; counties with a missing
  outcome are dropped (both sides see the same balanced panel).
"""
from __future__ import annotations

import warnings

import dask
import numpy as np
import pandas as pd
import pytest

import dte_dask

from . import peers

pytestmark = pytest.mark.peer
ATT_ATOL, SE_RTOL = 1e-8, 1e-6
KINDS = ("simple", "dynamic", "group", "calendar")


@pytest.fixture(autouse=True)
def _sync_quiet():
    with dask.config.set(scheduler="sync"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _moderndid_data():
    pytest.importorskip("moderndid", reason="the real panels ship with moderndid (test extra)")
    pytest.importorskip("csdid", reason="csdid (test extra) is the reference")
    from moderndid.core import data

    return data


@pytest.fixture(scope="module")
def ehec() -> pd.DataFrame:
    return _moderndid_data().load_ehec().to_pandas()


@pytest.fixture(scope="module")
def nsw() -> pd.DataFrame:
    df = _moderndid_data().load_nsw().to_pandas()
    return df.assign(group=np.where(df["experimental"] == 1, 1978, 0))[
        ["id", "year", "re", "group", "age", "educ", "black", "married", "nodegree", "hisp", "re74"]]


@pytest.fixture(scope="module")
def favara() -> pd.DataFrame:
    df = _moderndid_data().load_favara_imbs().to_pandas()
    bad = df.loc[df["Dl_vloans_b"].isna(), "county"].unique()
    df = df[~df["county"].isin(bad)]
    df = df[df.groupby("county")["year"].transform("nunique") == df["year"].nunique()]
    first = df[df["inter_bra"] > 0].groupby("county")["year"].min()
    return df.assign(group=df["county"].map(first).fillna(0).astype(np.int64))[
        ["county", "year", "Dl_vloans_b", "group", "w1", "Dl_hpi"]]


EHEC = dict(outcome="dins", unit="stfips", time="year", group="yexp2")
NSW = dict(outcome="re", unit="id", time="year", group="group")
NSW_X = ["age", "educ", "black", "married", "nodegree", "hisp", "re74"]
FAVARA = dict(outcome="Dl_vloans_b", unit="county", time="year", group="group")


def compare_with_csdid(df: pd.DataFrame, cols: dict, **kw) -> dict[str, float]:
    """ATT(g,t) and the four aggregations against csdid; returns the worst differences."""
    res = dte_dask.att_gt(df, **cols, bootstrap=False, **kw)
    ours = res.to_frame()
    ref = peers.att_gt_csdid(df, **cols, **kw).sort_values(["group", "time"]).reset_index(drop=True)
    np.testing.assert_array_equal(ours["group"].to_numpy(), ref["group"].to_numpy())
    np.testing.assert_array_equal(ours["time"].to_numpy(), ref["time"].to_numpy())
    ok = ref["se"].notna()
    assert ours["estimate"].notna().all() and ref["att"].notna().all()
    np.testing.assert_allclose(ours["estimate"], ref["att"], rtol=0, atol=ATT_ATOL)
    np.testing.assert_allclose(ours.loc[ok, "se_analytic"], ref.loc[ok, "se"], rtol=SE_RTOL)
    worst = {"cells": len(ours), "att": float(np.max(np.abs(ours["estimate"] - ref["att"]))),
             "se_rel": float(np.max(np.abs(ours.loc[ok, "se_analytic"] / ref.loc[ok, "se"] - 1)))}
    agg = peers.aggte_csdid(df, **cols, **kw, kinds=KINDS)
    for kind in KINDS:
        a = res.aggregate(kind)
        r = agg[agg["agg"] == kind]
        o = r[r["key"] == "overall"].iloc[0]
        att = [a.overall_att - o["att"]]
        se = [a.overall_se / o["se"] - 1]
        assert a.overall_att == pytest.approx(o["att"], abs=ATT_ATOL), kind
        assert a.overall_se == pytest.approx(o["se"], rel=SE_RTOL), kind
        if kind != "simple":
            parts = r[r["key"] != "overall"]
            f = a.to_frame()
            np.testing.assert_array_equal(f[a.key_name].astype(str).to_numpy(), parts["key"].to_numpy())
            np.testing.assert_allclose(f["estimate"], parts["att"], rtol=0, atol=ATT_ATOL)
            np.testing.assert_allclose(f["se"], parts["se"], rtol=SE_RTOL)
            att += list(f["estimate"].to_numpy() - parts["att"].to_numpy())
            se += list(f["se"].to_numpy() / parts["se"].to_numpy() - 1)
        worst[f"{kind}_att"] = float(np.max(np.abs(att)))
        worst[f"{kind}_se_rel"] = float(np.max(np.abs(se)))
    return worst


# ----------------------------------------------------------------------------- (i) EHEC: NaN cohorts
def test_ehec_never_treated_coded_nan_is_never_treated(ehec):
    assert ehec["yexp2"].isna().groupby(ehec["stfips"]).all().sum() == 16
    panel = dte_dask.load_panel(ehec, **EHEC)
    assert panel.n_units == 46 and panel.n_periods == 12 and panel.cohort_sizes[np.inf] == 16
    nan = dte_dask.att_gt(ehec, **EHEC, bootstrap=False).to_frame()
    zero = dte_dask.att_gt(ehec.assign(yexp2=ehec["yexp2"].fillna(0)), **EHEC, bootstrap=False).to_frame()
    pd.testing.assert_frame_equal(nan, zero, rtol=0, atol=0)
    na = dte_dask.att_gt(ehec.assign(yexp2=ehec["yexp2"].astype("Int64")), **EHEC, bootstrap=False).to_frame()
    pd.testing.assert_frame_equal(nan, na, rtol=0, atol=0)


@pytest.mark.parametrize("kw", [dict(), dict(control_group="not_yet_treated"), dict(weights="W"),
                                dict(weights="W", control_group="not_yet_treated", base_period="universal")],
                         ids=["never", "not-yet", "weights", "weights-nyt-universal"])
def test_ehec_matches_csdid(ehec, kw):
    worst = compare_with_csdid(ehec, EHEC, **kw)
    assert worst["cells"] >= 50


def test_ehec_matches_moderndid(ehec):
    res = dte_dask.att_gt(ehec, **EHEC, weights="W", bootstrap=False).to_frame()
    ref = peers.att_gt_moderndid(ehec, **EHEC, weights="W")
    np.testing.assert_allclose(res["estimate"], ref["att"], rtol=0, atol=ATT_ATOL)
    np.testing.assert_allclose(res["se_analytic"], ref["se"], rtol=SE_RTOL)


# ----------------------------------------------------------------------------- (ii) NSW: two periods, imbalance
def test_nsw_is_two_periods_with_strong_imbalance(nsw):
    panel = dte_dask.load_panel(nsw, **NSW, covariates=NSW_X)
    assert panel.n_periods == 2 and panel.cohort_sizes == {1.0: 425, np.inf: 15992}


NSW_METHODS = ["reg", "dr", "ipw"]  # dr / ipw need the IRLS logit with step-halving (core/logit.py)


@pytest.mark.parametrize("method", NSW_METHODS)
def test_nsw_matches_csdid(nsw, method):
    compare_with_csdid(nsw, NSW, covariates=NSW_X, est_method=method)


def test_nsw_without_covariates_matches_csdid(nsw):
    compare_with_csdid(nsw, NSW)


# ----------------------------------------------------------------------------- (iii) Favara-Imbs: sampling weights
def test_favara_imbs_panel(favara):
    panel = dte_dask.load_panel(favara, **FAVARA, weights="w1")
    assert panel.n_periods == 12 and panel.n_units == favara["county"].nunique() > 900
    assert len([g for g in panel.cohort_sizes if np.isfinite(g)]) >= 5 and panel.cohort_sizes[np.inf] > 100


@pytest.mark.parametrize("kw", [dict(weights="w1"), dict(weights="w1", control_group="not_yet_treated"),
                                dict(weights="w1", covariates=["Dl_hpi"], est_method="reg")],
                         ids=["weights", "weights-nyt", "weights-reg-covariate"])
def test_favara_imbs_matches_csdid(favara, kw):
    df = favara.dropna(subset=kw.get("covariates", []))
    if kw.get("covariates"):
        df = df[df.groupby("county")["year"].transform("size") == 12]
    compare_with_csdid(df, FAVARA, **kw)


# ----------------------------------------------------------------------------- checks on a real panel
def test_checks_on_ehec_agree_with_att_gt(ehec):
    """Placebo with a one-period shift = att_gt's pre-period cell (varying base); the randomization
    statistic = att_gt's aggregate; both with the state weights and NaN-coded never-treated states."""
    from dte_dask import checks

    res = dte_dask.att_gt(ehec, **EHEC, weights="W", est_method="ipw", bootstrap=False)
    cells = res.to_frame()
    pl = checks.placebo_check(ehec, **EHEC, weights="W", est_method="ipw", shifts=1).to_frame()
    assert len(pl) == 5
    for _, row in pl.iterrows():
        cell = cells[(cells["group"] == row["cohort"]) & (cells["time"] == row["cohort"] - 1)].iloc[0]
        assert row["estimate"] == pytest.approx(cell["estimate"], abs=1e-12)
        assert row["se"] == pytest.approx(cell["se_analytic"], rel=1e-9)
    ri = checks.randomization_check(ehec, **EHEC, weights="W", est_method="ipw", aggregate="group", n_perm=9, seed=1)
    assert ri.observed == pytest.approx(res.aggregate("group").overall_att, abs=1e-12)
