"""dte_dask against installed peers (csdid, which ports R `did` line by line, and moderndid) on
simulated panels, for the options the mpdta references do not cover."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import dte_dask

from . import peers

pytestmark = pytest.mark.peer
COLS = dict(outcome="y", unit="unit", time="time", group="group")
ATT_ATOL, SE_RTOL = 1e-8, 1e-6


@pytest.fixture(scope="module")
def sim() -> pd.DataFrame:
    df = dte_dask.simulate_panel(1200, 6, seed=7, selection=True).data.compute(scheduler="synchronous")
    rng = np.random.default_rng(0)
    w = pd.Series(rng.uniform(0.5, 2.0, df["unit"].nunique()), index=np.sort(df["unit"].unique()))
    return df.assign(w=df["unit"].map(w), female=df["female"].astype(float))


CASES = {
    "ipw-covariates": dict(covariates=["age", "bmi"], est_method="ipw"),
    "reg-covariates": dict(covariates=["age", "bmi", "female"], est_method="reg"),
    "dr-covariates": dict(covariates=["age", "bmi"], est_method="dr"),
    "nyt-anticipation1": dict(control_group="not_yet_treated", anticipation=1, covariates=["age"]),
    "universal-base": dict(base_period="universal", covariates=["bmi"]),
    "weights": dict(weights="w", covariates=["age"]),
    "weights-nyt-ipw": dict(weights="w", control_group="not_yet_treated", est_method="ipw", covariates=["bmi"]),
}


def _ours(df, **kw):
    res = dte_dask.att_gt(df, **COLS, bootstrap=False, **kw)
    return res, res.to_frame()


def _compare(ours: pd.DataFrame, ref: pd.DataFrame, atol=ATT_ATOL, rtol=SE_RTOL):
    ref = ref.sort_values(["group", "time"]).reset_index(drop=True)
    np.testing.assert_array_equal(ours["group"].to_numpy(), ref["group"].to_numpy())
    np.testing.assert_array_equal(ours["time"].to_numpy(), ref["time"].to_numpy())
    np.testing.assert_allclose(ours["estimate"], ref["att"], rtol=0, atol=atol)
    ok = ref["se"].notna()
    np.testing.assert_allclose(ours.loc[ok, "se"], ref.loc[ok, "se"], rtol=rtol)


@pytest.mark.parametrize("case", list(CASES))
def test_attgt_matches_csdid(sim, case):
    pytest.importorskip("csdid")
    kw = CASES[case]
    res, ours = _ours(sim, **kw)
    _compare(ours, peers.att_gt_csdid(sim, **COLS, **kw))


@pytest.mark.parametrize("case", ["ipw-covariates", "nyt-anticipation1", "universal-base"])
def test_attgt_matches_moderndid(sim, case):
    pytest.importorskip("moderndid")
    kw = CASES[case]
    _, ours = _ours(sim, **kw)
    _compare(ours, peers.att_gt_moderndid(sim, **COLS, **kw))


@pytest.mark.parametrize("case", ["dr-covariates", "nyt-anticipation1", "weights"])
def test_aggregations_match_csdid(sim, case):
    pytest.importorskip("csdid")
    kw = CASES[case]
    res, _ = _ours(sim, **kw)
    kinds = peers.supported_kinds("csdid", kw.get("anticipation", 0))
    ref = peers.aggte_csdid(sim, **COLS, **kw, kinds=kinds)
    for kind in kinds:
        agg = res.aggregate(kind)
        r = ref[ref["agg"] == kind]
        o = r[r["key"] == "overall"].iloc[0]
        assert agg.overall_att == pytest.approx(o["att"], abs=ATT_ATOL)
        assert agg.overall_se == pytest.approx(o["se"], rel=SE_RTOL)
        if kind != "simple":
            parts = r[r["key"] != "overall"]
            f = agg.to_frame()
            np.testing.assert_array_equal(f[agg.key_name].astype(str).to_numpy(), parts["key"].to_numpy())
            np.testing.assert_allclose(f["estimate"], parts["att"], atol=ATT_ATOL)
            np.testing.assert_allclose(f["se"], parts["se"], rtol=SE_RTOL)


@pytest.mark.parametrize("control_group", ["never_treated", "not_yet_treated"])
def test_unbalanced_panel_matches_csdid(control_group):
    pytest.importorskip("csdid")
    df = dte_dask.simulate_panel(1500, 6, seed=3, unbalanced_share=0.1).data.compute(scheduler="synchronous")
    kw = dict(control_group=control_group, allow_unbalanced_panel=True)
    res, ours = _ours(df, **kw)
    assert not dte_dask.load_panel(df, **COLS, allow_unbalanced_panel=True).is_balanced
    _compare(ours, peers.att_gt_csdid(df, **COLS, **kw))
    ref = peers.aggte_csdid(df, **COLS, **kw, kinds=("simple", "dynamic"))
    dyn = res.aggregate("dynamic")
    parts = ref[(ref["agg"] == "dynamic") & (ref["key"] != "overall")]
    np.testing.assert_allclose(dyn.att, parts["att"], atol=ATT_ATOL)
    np.testing.assert_allclose(dyn.se, parts["se"], rtol=SE_RTOL)
