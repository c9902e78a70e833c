"""Sun–Abraham: equality with Callaway–Sant'Anna where theory says so, diff-diff's SunAbraham, and a
saturated pyfixest regression aggregated by hand for the options diff-diff lacks."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import dte_dask
from dte_dask.exceptions import SpecError

COLS = dict(outcome="y", unit="unit", time="time", group="group")


def _frame(unbalanced: float, seed: int = 5, n: int = 500) -> pd.DataFrame:
    return dte_dask.simulate_panel(n, 8, seed=seed, unbalanced_share=unbalanced).data.compute(scheduler="sync")


@pytest.mark.parametrize("base_period", ["universal", "varying"])
def test_equals_cs_dynamic_with_never_treated_controls(base_period):
    """Balanced panel, never-treated controls, no covariates: delta(g, e) is the 2x2 DiD of cohort g
    against the never treated between g-1 and g+e, i.e. CS's ATT(g, g+e) with base period g-1, and
    both estimators weight cohorts by size. The universal base period makes every event time equal;
    the varying one only e >= 0 (its pre-period cells are short differences)."""
    df = _frame(0.0)
    sa = dte_dask.sun_abraham(df, **COLS).to_frame()
    cs = dte_dask.att_gt(df, **COLS, control_group="never_treated", base_period=base_period,
                         bootstrap=False).aggregate("dynamic").to_frame()
    m = cs.merge(sa, on="event_time", suffixes=("_cs", "_sa"))
    post = m["event_time"] >= 0
    np.testing.assert_allclose(m.loc[post, "estimate_sa"], m.loc[post, "estimate_cs"], atol=1e-10, rtol=0)
    pre_gap = np.abs(m.loc[~post, "estimate_sa"] - m.loc[~post, "estimate_cs"]).max()
    if base_period == "universal":
        assert len(m) == len(sa) and pre_gap < 1e-10
    else:
        assert pre_gap > 1e-3


@pytest.mark.peer
@pytest.mark.parametrize("unbalanced", [0.0, 0.2], ids=["balanced", "unbalanced"])
def test_matches_diff_diff(unbalanced):
    dd = pytest.importorskip("diff_diff")
    df = _frame(unbalanced)
    res = dte_dask.sun_abraham(df, **COLS, allow_unbalanced_panel=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = dd.SunAbraham(control_group="never_treated").fit(df, outcome="y", unit="unit", time="time",
                                                               first_treat="group")
    ref = fit.event_study_effects
    np.testing.assert_allclose(res.coef, [ref[e]["effect"] for e in res.event_time], atol=1e-8, rtol=0)
    np.testing.assert_allclose(res.se, [ref[e]["se"] for e in res.event_time], rtol=1e-6)


def _saturated_reference(df: pd.DataFrame, last: int | None, window: tuple[int, int] | None) -> pd.DataFrame:
    """Sun–Abraham by hand: pyfixest's saturated regression, then cohort shares and W V W'."""
    pf = pytest.importorskip("pyfixest")
    d = df.copy()
    g = d["group"]
    if last is not None:  # the last cohort is a control; periods from its treatment on are dropped
        d = d[d["time"] < last]
        g = d["group"].where(d["group"] != last, 0)
    rel = d["time"] - g
    if window is not None:  # treated observations outside the window are dropped
        keep = (g == 0) | rel.between(*window)
        d, g, rel = d[keep], g[keep], rel[keep]
    treated = (g > 0) & (rel != -1)
    d = d.assign(cell=np.where(treated, g.astype(str) + "_" + rel.astype(str), "ref"), rel=rel, g=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = pf.feols("y ~ i(cell, ref='ref') | unit + time", data=d, vcov={"CRV1": "unit"}, fixef_tol=1e-14)
    coef = m.coef()
    cells = [c.split("::")[1] for c in coef.index]
    n = d[treated].groupby("cell").size()
    ge = pd.DataFrame({"cell": cells, "e": [int(c.split("_")[1]) for c in cells], "n": n.loc[cells].to_numpy()})
    events = sorted(ge["e"].unique())
    W = np.zeros((len(events), len(cells)))
    for j, (e, k) in enumerate(zip(ge["e"], ge["n"])):
        W[events.index(e), j] = k
    W /= W.sum(axis=1, keepdims=True)
    V = W @ m._vcov @ W.T
    return pd.DataFrame({"event_time": events, "coef": W @ coef.to_numpy(), "se": np.sqrt(np.diag(V))})


@pytest.mark.peer
@pytest.mark.parametrize("unbalanced", [0.0, 0.2], ids=["balanced", "unbalanced"])
@pytest.mark.parametrize("case", ["last_treated", "window"])
def test_matches_saturated_pyfixest(unbalanced, case):
    df = _frame(unbalanced)
    kw = dict(control="last_treated") if case == "last_treated" else dict(window=(-3, 2))
    res = dte_dask.sun_abraham(df, **COLS, allow_unbalanced_panel=True, **kw)
    ref = _saturated_reference(df, 7 if case == "last_treated" else None, kw.get("window"))
    assert res.event_time.tolist() == ref["event_time"].tolist()
    np.testing.assert_allclose(res.coef, ref["coef"], atol=1e-8, rtol=0)
    np.testing.assert_allclose(res.se, ref["se"], rtol=1e-6)


def test_by_cohort_weights():
    res = dte_dask.sun_abraham(_frame(0.2), **COLS, allow_unbalanced_panel=True)
    by = res.by_cohort()
    np.testing.assert_allclose(by.groupby("event_time")["weight"].sum(), 1.0, rtol=1e-14)
    iw = (by["estimate"] * by["weight"]).groupby(by["event_time"]).sum()
    np.testing.assert_allclose(iw.to_numpy(), res.coef, rtol=1e-12)
    assert set(by["cohort"]) == {3, 5, 7}


def test_bad_input():
    df = _frame(0.0)
    with pytest.raises(SpecError, match=r"control='not_yet' is not one of"):
        dte_dask.sun_abraham(df, **COLS, control="not_yet")
    with pytest.raises(SpecError, match=r"window=\(0, 3\) must contain the reference event time -1"):
        dte_dask.sun_abraham(df, **COLS, window=(0, 3))
    with pytest.raises(SpecError, match=r"column 'group' has no never-treated units; use control_group='last_treated'"):
        dte_dask.sun_abraham(df[df["group"] > 0], **COLS)


@pytest.mark.filterwarnings("ignore::dte_dask.exceptions.DteDaskWarning")  # stacked_did trims events
def test_compare_estimators_lines_up_effects():
    df = _frame(0.0, n=800)
    cmp = dte_dask.compare_estimators(df, **COLS, window=(-3, 3))
    tab = cmp.table
    assert tab["event_time"].tolist() == [-3, -2, 0, 1, 2, 3]
    # Sun–Abraham equals CS (universal base) where both estimate
    np.testing.assert_allclose(tab["sun_abraham_estimate"], tab["att_gt_estimate"], atol=1e-10, rtol=0)
    # binned event-study endpoints are not comparable and are left out
    assert tab.loc[tab["event_time"].isin([-3, 3]), "event_study_estimate"].isna().all()
    corr = cmp.correlation
    assert list(corr.columns) == ["att_gt", "event_study", "stacked_did", "sun_abraham", "imputation_did",
                                 "two_stage_did", "etwfe"]
    np.testing.assert_allclose(np.diag(corr), 1.0)
    assert corr.loc["att_gt", "sun_abraham"] == pytest.approx(1.0, abs=1e-12)
    assert "Correlation" in cmp.summary()
    from dte_dask.estimators.compare import line_up
    again = line_up({k: cmp.results[k] for k in ("att_gt", "sun_abraham")}, window=(-3, 3))
    np.testing.assert_array_equal(again.table["sun_abraham_estimate"], tab["sun_abraham_estimate"])
    with pytest.raises(SpecError, match="estimators"):
        dte_dask.compare_estimators(df, **COLS, estimators=["twfe"])
