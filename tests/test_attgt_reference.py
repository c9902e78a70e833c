"""ATT(g,t) and every aggregation on mpdta against the reference values of R `did`'s algorithm.

References (tests/reference/, see its README): analytic SEs, dr, varying base; computed with csdid
0.4.3 and agreeing with moderndid and differences to 3e-17 and with the R vignette.
"""
from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd
import pytest

import dte_dask

from .warm_helpers import record_passes, record_warm_starts

REF = pathlib.Path(__file__).parent / "reference"
CONFIGS = [("nt", "never_treated", None), ("nyt", "not_yet_treated", None),
           ("nt_x", "never_treated", ["lpop"]), ("nyt_x", "not_yet_treated", ["lpop"])]
ATT_ATOL, SE_RTOL = 1e-10, 1e-8


@pytest.fixture(scope="module")
def mpdta() -> pd.DataFrame:
    return dte_dask.datasets.load_mpdta()


@pytest.fixture(scope="module", params=CONFIGS, ids=[c[0] for c in CONFIGS])
def fitted(request, mpdta):
    prefix, cg, cov = request.param
    res = dte_dask.att_gt(mpdta, outcome="lemp", unit="countyreal", time="year", group="first_treat",
                          covariates=cov, control_group=cg, est_method="dr", bootstrap=False)
    return prefix, res


def test_attgt_cells_match_reference(fitted):
    prefix, res = fitted
    ref = pd.read_csv(REF / f"mpdta_{prefix}_attgt.csv")
    got = res.to_frame()
    np.testing.assert_array_equal(got["group"].to_numpy(), ref["group"].to_numpy())
    np.testing.assert_array_equal(got["time"].to_numpy(), ref["time"].to_numpy())
    np.testing.assert_allclose(got["estimate"], ref["att"], rtol=0, atol=ATT_ATOL)
    np.testing.assert_allclose(got["se"], ref["se"], rtol=SE_RTOL)
    assert (got["event_time"] == got["time"] - got["group"]).all()


@pytest.mark.parametrize("kind", ["simple", "dynamic", "group", "calendar"])
def test_aggregations_match_reference(fitted, kind):
    prefix, res = fitted
    ref = pd.read_csv(REF / f"mpdta_{prefix}_aggte.csv")
    ref = ref[ref["agg"] == kind]
    agg = res.aggregate(kind)
    overall = ref[ref["key"] == "overall"].iloc[0]
    assert agg.overall_att == pytest.approx(overall["att"], abs=ATT_ATOL, rel=0)
    assert agg.overall_se == pytest.approx(overall["se"], rel=SE_RTOL)
    if kind == "simple":
        return
    parts = ref[ref["key"] != "overall"]
    got = agg.to_frame()
    np.testing.assert_array_equal(got[agg.key_name].astype(float).to_numpy(), parts["key"].astype(float).to_numpy())
    np.testing.assert_allclose(got["estimate"], parts["att"], rtol=0, atol=ATT_ATOL)
    np.testing.assert_allclose(got["se"], parts["se"], rtol=SE_RTOL)


def test_vignette_values(mpdta):
    """Printed values of the R `did` vignette (4 decimals)."""
    res = dte_dask.att_gt(mpdta, outcome="lemp", unit="countyreal", time="year", group="first_treat", bootstrap=False)
    f = res.to_frame().set_index(["group", "time"])
    assert round(f.loc[(2004, 2006), "estimate"], 4) == -0.1373
    assert round(res.aggregate("simple").overall_att, 4) == -0.0400


def test_without_covariates_all_estimators_coincide(mpdta):
    """With no covariates dr, ipw and reg reduce to the same 2x2 DiD (DRDID, REFERENCE §1.2)."""
    kw = dict(outcome="lemp", unit="countyreal", time="year", group="first_treat", bootstrap=False)
    frames = [dte_dask.att_gt(mpdta, est_method=m, **kw).to_frame() for m in ("dr", "ipw", "reg")]
    for f in frames[1:]:
        np.testing.assert_allclose(f["estimate"], frames[0]["estimate"], atol=1e-12)
        np.testing.assert_allclose(f["se"], frames[0]["se"], rtol=1e-10)


def test_closed_form_2x2(mpdta):
    """ATT(g,t) = mean change of cohort g minus mean change of never-treated (computed with pandas)."""
    res = dte_dask.att_gt(mpdta, outcome="lemp", unit="countyreal", time="year", group="first_treat", bootstrap=False)
    wide = mpdta.pivot(index="countyreal", columns="year", values="lemp")
    g = mpdta.groupby("countyreal")["first_treat"].first()
    for row in res.to_frame().itertuples():
        base = row.time - 1 if row.time < row.group else row.group - 1
        d = wide[row.time] - wide[base]
        expected = d[g == row.group].mean() - d[g == 0].mean()
        assert row.estimate == pytest.approx(expected, abs=1e-12)


def test_treatment_indicator_gives_same_result(mpdta):
    kw = dict(outcome="lemp", unit="countyreal", time="year", bootstrap=False)
    a = dte_dask.att_gt(mpdta, group="first_treat", **kw).to_frame()
    # mpdta's `treat` means "ever treated"; build the absorbing 0/1 indicator instead
    d = mpdta.assign(d=((mpdta["first_treat"] > 0) & (mpdta["year"] >= mpdta["first_treat"])).astype(int))
    b = dte_dask.att_gt(d, treatment="d", **kw).to_frame()
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("prefix, control_group", [("nt_x", "never_treated"), ("nyt_x", "not_yet_treated")])
def test_warm_started_logit_matches_reference(mpdta, prefix, control_group, monkeypatch):
    """On a panel of many RNG blocks the propensity logit is first fitted on a sample of them
    (``kernels.sample_logit``) and the fit on the whole panel starts there: the same R values, and
    the same bits for any partitioning."""
    from dte_dask.core import kernels_cov

    starts = record_warm_starts(monkeypatch, kernels_cov)
    passes = record_passes(monkeypatch)
    ref = pd.read_csv(REF / f"mpdta_{prefix}_attgt.csv")
    fits = []
    for nparts in (1, 4):
        panel = dte_dask.load_panel(mpdta, unit="countyreal", time="year", outcome="lemp", group="first_treat",
                                    covariates=["lpop"], rng_block_size=50, npartitions=nparts)
        fits.append(dte_dask.att_gt(panel, control_group=control_group, est_method="dr", bootstrap=False))
    assert len(starts) == 2 and all(s.any() for s in starts)  # 10 RNG blocks: warm-started cells
    assert passes[0] == "stats" and "moments" not in passes  # the moments rode in the last logit pass
    got = fits[0].to_frame()
    np.testing.assert_allclose(got["estimate"], ref["att"], rtol=0, atol=ATT_ATOL)
    np.testing.assert_allclose(got["se"], ref["se"], rtol=SE_RTOL)
    np.testing.assert_array_equal(fits[1].att, fits[0].att)
    np.testing.assert_array_equal(fits[1].se_analytic, fits[0].se_analytic)
