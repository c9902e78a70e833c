"""Wooldridge ETWFE: diff-diff's WooldridgeDiD (cells and the four aggregations), pyfixest's
saturated regression (CRV1 SEs), the identity with imputation, partition invariance."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import dte_dask
from dte_dask.exceptions import EstimationError

COLS = dict(outcome="y", unit="unit", time="time", group="group")
MPDTA = dict(outcome="lemp", unit="countyreal", time="year", group="first_treat")


def _frame(unbalanced: float = 0.0, seed: int = 3, n: int = 200) -> pd.DataFrame:
    return dte_dask.simulate_panel(n, 6, seed=seed, unbalanced_share=unbalanced).data.compute(scheduler="sync")


def _fit(df, cols=COLS, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dte_dask.etwfe(df, **cols, allow_unbalanced_panel=True, **kw)


def _check_dd(res, df, cols, control_group):
    dd = pytest.importorskip("diff_diff")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = dd.WooldridgeDiD(control_group=control_group).fit(df, outcome=cols["outcome"], unit=cols["unit"],
                                                              time=cols["time"], cohort=cols["group"])
        for kind in ("group", "calendar", "event_study"):
            f.aggregate(kind)
    cells = res.by_cohort()
    ref = np.array([f.group_time_effects[(g, t)]["att"] for g, t in zip(cells["cohort"], cells["period"])])
    np.testing.assert_allclose(cells["coef"], ref, atol=1e-8, rtol=0)
    assert len(cells) == len(f.group_time_effects)
    np.testing.assert_allclose(res.coef, [f.event_study_effects[e]["att"] for e in res.event_time], atol=1e-8, rtol=0)
    o = res.other
    assert abs(o.loc[o["type"] == "simple", "coef"].iloc[0] - f.overall_att) < 1e-8
    grp, cal = o[o["type"] == "group"], o[o["type"] == "calendar"]
    np.testing.assert_allclose(grp["coef"], [f.group_effects[g]["att"] for g in grp["label"]], atol=1e-8, rtol=0)
    np.testing.assert_allclose(cal["coef"], [f.calendar_effects[t]["att"] for t in cal["label"]], atol=1e-8, rtol=0)
    # SEs: equal on panels without singleton units; diff-diff keeps units observed once in N and G
    # (pyfixest and we drop them), a constant factor of its small-sample correction
    ratio = res.se / np.array([f.event_study_effects[e]["se"] for e in res.event_time])
    d = df.dropna(subset=[cols["outcome"]])
    singletons = int((d.groupby(cols["unit"]).size() == 1).sum())
    if singletons == 0:
        np.testing.assert_allclose(ratio, 1.0, rtol=1e-10)
    else:
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-10)
        assert abs(ratio[0] - 1.0) < 1e-4


@pytest.mark.peer
@pytest.mark.parametrize("unbalanced", [0.0, 0.2], ids=["balanced", "unbalanced"])
@pytest.mark.parametrize("control_group", ["not_yet_treated", "never_treated"])
def test_matches_diff_diff(unbalanced, control_group):
    df = _frame(unbalanced)
    _check_dd(_fit(df, control_group=control_group), df, COLS, control_group)


@pytest.mark.peer
def test_matches_diff_diff_mpdta():
    df = dte_dask.datasets.load_mpdta()
    _check_dd(_fit(df, MPDTA), df, MPDTA, "not_yet_treated")


@pytest.mark.peer
def test_cell_ses_match_pyfixest_and_aggregates_are_w_v_w():
    pf = pytest.importorskip("pyfixest")
    df = _frame(0.2, seed=5).dropna(subset=["y"])
    res = _fit(df)
    d = df.copy()
    names = []
    for g, t in zip(res.by_cohort()["cohort"], res.by_cohort()["period"]):
        c = f"d_{g}_{t}"
        d[c] = ((d["group"] == g) & (d["time"] == t)).astype(float)
        names.append(c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = pf.feols(f"y ~ {' + '.join(names)} | unit + time", data=d, vcov={"CRV1": "unit"})
    cells = res.by_cohort()
    np.testing.assert_allclose(cells["coef"], ref.coef()[names], atol=1e-8, rtol=0)
    np.testing.assert_allclose(cells["se"], ref.se()[names], rtol=1e-6)  # pyfixest demeans iteratively
    V = ref.vcov if not callable(ref.vcov) else ref._vcov
    n = cells["n"].to_numpy()
    post = (cells["event_time"] >= 0).to_numpy()
    w = np.where(post, n, 0.0) / n[post].sum()
    simple = res.other.iloc[0]
    assert abs(simple["se"] - np.sqrt(w @ V @ w)) < 1e-6 * simple["se"]


def test_not_yet_treated_equals_imputation_on_balanced_panels():
    df = _frame(0.0, seed=9)
    et = _fit(df)
    imp = dte_dask.imputation_did(df, **COLS)
    np.testing.assert_array_equal(et.event_time, imp.event_time)
    np.testing.assert_allclose(et.coef, imp.coef, atol=1e-10, rtol=0)
    assert abs(et.other["coef"].iloc[0] - imp.other["coef"].iloc[0]) < 1e-10


def _cov_frame(unbalanced: float, seed: int = 3) -> pd.DataFrame:
    df = _frame(unbalanced, seed=seed)
    rng = np.random.default_rng(seed)
    df["x1"] = rng.normal(size=len(df)) + 0.1 * df["time"] + 0.3 * (df["group"] > 0)
    df["y"] = df["y"] + 0.5 * df["x1"] * (1 + (df["group"] > 0) * (df["time"] >= df["group"]))
    return df


@pytest.mark.peer
@pytest.mark.parametrize("unbalanced", [0.0, 0.2], ids=["balanced", "unbalanced"])
@pytest.mark.parametrize("control_group", ["not_yet_treated", "never_treated"])
def test_covariates_match_diff_diff_xtvar(unbalanced, control_group):
    """jwdid's xtvar: cell-demeaned covariate interacted with every cell, cohort and period slopes."""
    dd = pytest.importorskip("diff_diff")
    df = _cov_frame(unbalanced)
    res = _fit(df, control_group=control_group, covariates=["x1"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = dd.WooldridgeDiD(control_group=control_group).fit(df, outcome="y", unit="unit", time="time",
                                                              cohort="group", xtvar=["x1"])
        f.aggregate("event_study")
    cells = res.by_cohort()
    ref = [f.group_time_effects[(g, t)]["att"] for g, t in zip(cells["cohort"], cells["period"])]
    np.testing.assert_allclose(cells["coef"], ref, atol=1e-8, rtol=0)
    np.testing.assert_allclose(res.coef, [f.event_study_effects[e]["att"] for e in res.event_time], atol=1e-8, rtol=0)
    assert abs(res.other["coef"].iloc[0] - f.overall_att) < 1e-8
    ratio = res.se / np.array([f.event_study_effects[e]["se"] for e in res.event_time])
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-10)  # equal, or diff-diff's singleton factor
    assert abs(ratio[0] - 1.0) < 1e-4
    assert res.options["covariates"] == ["x1"]


def test_time_invariant_covariate_is_reported_as_collinear():
    with pytest.raises(EstimationError, match="collinear"):
        _fit(_frame(), covariates=["age"])


def test_partition_invariance():
    df = _frame(0.2, seed=8)
    a = _fit(df, npartitions=1, control_group="never_treated")
    b = _fit(df, npartitions=4, control_group="never_treated")
    np.testing.assert_allclose(a.coef, b.coef, atol=1e-12, rtol=0)
    np.testing.assert_allclose(a.cov, b.cov, atol=1e-12, rtol=0)
    np.testing.assert_allclose(a.other["se"], b.other["se"], atol=1e-12, rtol=0)


@pytest.mark.peer
def test_covariates_without_never_treated_match_diff_diff_xtvar():
    """Without never-treated units the periods from the last cohort's first treated period on leave the
    regression, and so do their period slopes (they used to be reported as collinear)."""
    dd = pytest.importorskip("diff_diff")
    df = _cov_frame(0.0)
    df = df[df["group"] > 0]
    res = _fit(df, covariates=["x1"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = dd.WooldridgeDiD(control_group="not_yet_treated").fit(df, outcome="y", unit="unit", time="time",
                                                                  cohort="group", xtvar=["x1"])
    cells = res.by_cohort()
    assert len(cells) == len(f.group_time_effects)
    ref = [f.group_time_effects[(g, t)]["att"] for g, t in zip(cells["cohort"], cells["period"])]
    np.testing.assert_allclose(cells["coef"], ref, atol=1e-8, rtol=0)
    assert abs(res.other["coef"].iloc[0] - f.overall_att) < 1e-8
