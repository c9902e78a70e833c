"""Stacked DiD: an explicitly built stacked data set fitted by pyfixest, diff-diff's StackedDiD,
per-cohort fits, task names and bad input."""
from __future__ import annotations

import warnings

import dask
import numpy as np
import pandas as pd
import pytest
from dask.callbacks import Callback

import dte_dask
from dte_dask.exceptions import DteDaskWarning, EstimationError, SpecError

COLS = dict(outcome="y", unit="unit", time="time", group="group")


def _frame(unbalanced: float, seed: int = 5) -> pd.DataFrame:
    df = dte_dask.simulate_panel(500, 10, seed=seed, unbalanced_share=unbalanced).data.compute(scheduler="sync")
    df["wt"] = 1.0 + (df["unit"] % 5) / 4.0
    return df


@pytest.fixture(scope="module", params=[0.0, 0.2], ids=["balanced", "unbalanced"])
def frame(request) -> pd.DataFrame:
    return _frame(request.param)


def build_stacked(df: pd.DataFrame, K: int, L: int, control: str) -> pd.DataFrame:
    """The stacked data set of Wing, Freedman & Hollingsworth, as the R reference builds it
    (hollina/stacked-did-weights ``create_sub_exp`` + ``compute_weights``; diff-diff's rules):
    one sub-experiment per cohort a with a + K >= first period and a + L <= last period, clean
    controls, and Q = (treated share) / (control share) per (sub-experiment, event time) from
    observation counts."""
    g = df["group"].replace(0, np.inf)
    subs = []
    for a in sorted(x for x in g.unique() if np.isfinite(x)):
        if a + K < df["time"].min() or a + L > df["time"].max():
            continue
        clean = {"not_yet_treated": g > a + L, "strict": g > a + L - K, "never_treated": np.isinf(g)}[control]
        if not clean.any():
            continue
        sub = df[((g == a) | clean) & df["time"].between(a + K, a + L)].copy()
        sub["event_time"] = sub["time"] - a
        sub["treat"] = (sub["group"] == a).astype(float)
        sub["stack"] = a
        subs.append(sub)
    st = pd.concat(subs, ignore_index=True)
    st["unit_stack"] = st["unit"].astype(str) + "_" + st["stack"].astype(str)
    st["time_stack"] = st["time"].astype(str) + "_" + st["stack"].astype(str)
    tot = st.groupby(["event_time", "treat"]).size().unstack(fill_value=0)
    sub_n = st.groupby(["stack", "event_time", "treat"]).size().unstack(fill_value=0).reset_index()
    et = sub_n["event_time"]
    sub_n["Qc"] = (sub_n[1.0] / tot.loc[et, 1.0].to_numpy()) / (sub_n[0.0] / tot.loc[et, 0.0].to_numpy())
    st = st.merge(sub_n[["stack", "event_time", "Qc"]], on=["stack", "event_time"])
    st["Q"] = np.where(st["treat"] == 1, 1.0, st["Qc"])
    return st


def _feols(data: pd.DataFrame, **kw):
    pf = pytest.importorskip("pyfixest")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pf.feols("y ~ i(event_time, treat, ref=-1) | unit_stack + time_stack", data=data,
                        vcov={"CRV1": "unit"}, fixef_tol=1e-14, **kw)


@pytest.mark.peer
@pytest.mark.parametrize("control", ["not_yet_treated", "strict", "never_treated"])
def test_matches_pyfixest_on_explicit_stack(frame, control):
    res = dte_dask.stacked_did(frame, **COLS, window=(-2, 2), control=control, allow_unbalanced_panel=True)
    st = build_stacked(frame, -2, 2, control)
    m = _feols(st, weights="Q")
    ref = m.tidy()
    np.testing.assert_allclose(res.coef, ref["Estimate"].to_numpy(), atol=1e-8, rtol=0)
    np.testing.assert_allclose(res.se, ref["Std. Error"].to_numpy(), rtol=1e-6)
    assert res.n_obs == m._N
    assert res.n_clusters == st.loc[st.groupby("unit_stack")["y"].transform("size") > 1, "unit"].nunique()
    assert res.to_frame()["event_time"].tolist() == [-2, 0, 1, 2]


@pytest.mark.peer
def test_sampling_weights_multiply_q(frame):
    res = dte_dask.stacked_did(frame, **COLS, window=(-2, 2), weights="wt", allow_unbalanced_panel=True)
    st = build_stacked(frame, -2, 2, "not_yet_treated")
    ref = _feols(st.assign(Qw=st["Q"] * st["wt"]), weights="Qw").tidy()
    np.testing.assert_allclose(res.coef, ref["Estimate"].to_numpy(), atol=1e-8, rtol=0)
    np.testing.assert_allclose(res.se, ref["Std. Error"].to_numpy(), rtol=1e-6)


@pytest.mark.peer
def test_by_cohort_matches_each_stack_alone(frame):
    res = dte_dask.stacked_did(frame, **COLS, window=(-2, 2), allow_unbalanced_panel=True)
    st = build_stacked(frame, -2, 2, "not_yet_treated")
    by = res.by_cohort()
    assert sorted(by["cohort"].unique()) == sorted(st["stack"].unique())
    for a, sub in st.groupby("stack"):
        ref = _feols(sub, weights="Q").tidy()
        mine = by[by["cohort"] == a]
        np.testing.assert_allclose(mine["estimate"], ref["Estimate"].to_numpy(), atol=1e-8, rtol=0)
        np.testing.assert_allclose(mine["se"], ref["Std. Error"].to_numpy(), rtol=1e-6)
        assert (mine["n_treated"] == sub.loc[sub["treat"] == 1, "unit"].nunique()).all()


@pytest.mark.peer
@pytest.mark.parametrize("control", ["not_yet_treated", "strict", "never_treated"])
def test_point_estimates_match_diff_diff(control):
    """diff-diff regresses on D + event-time dummies without stack effects; with the aggregate Q
    weights the pooled coefficients are the same (balanced panel)."""
    dd = pytest.importorskip("diff_diff")
    df = _frame(0.0)
    res = dte_dask.stacked_did(df, **COLS, window=(-2, 2), control=control)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = dd.StackedDiD(kappa_pre=2, kappa_post=2, control_group=control).fit(
            df, outcome="y", unit="unit", time="time", first_treat="group")
    ref = {e: v["effect"] for e, v in fit.event_study_effects.items() if e != -1}
    np.testing.assert_allclose(res.coef, [ref[e] for e in res.event_time], atol=1e-8, rtol=0)


def test_one_task_prefix_per_cohort():
    class Keys(Callback):
        def __init__(self):
            super().__init__()
            self.keys = set()

        def _pretask(self, key, dsk, state):
            self.keys.add(key if isinstance(key, str) else key[0])

    df = _frame(0.0)
    panel = dte_dask.load_panel(df, unit="unit", time="time", outcome="y", group="group", npartitions=2, rng_block_size=64)
    with Keys() as cb, dask.config.set(scheduler="sync"):
        res = dte_dask.stacked_did(panel, window=(-2, 2))
    from dask.utils import key_split
    prefixes = {key_split(k) for k in cb.keys}
    assert {f"stacked_cohort_{c}" for c in res.options["stacks"]} <= prefixes
    assert {"stacked-counts", "stacked-scores"} <= prefixes


def test_post_average_is_mean_of_post_coefficients():
    res = dte_dask.stacked_did(_frame(0.0), **COLS, window=(-3, 2))
    pa = res.post_average()
    post = res.event_time >= 0
    assert pa["estimate"] == pytest.approx(res.coef[post].mean(), abs=1e-14)
    assert pa["n_event_times"] == 3
    assert "Stacked DiD" in res.summary()


def test_trimmed_events_warn():
    with pytest.warns(DteDaskWarning, match=r"trimmed adoption events 8 \(its window is not inside the panel's "
                      r"periods 1\.\.10\) for window=\(-3, 3\)"):
        res = dte_dask.stacked_did(_frame(0.0), **COLS, window=(-3, 3))
    assert res.options["stacks"] == [4, 6]
    with pytest.warns(DteDaskWarning, match=r"events 4, 8 \(their windows are not inside the panel's periods 1\.\.10\)"):
        res = dte_dask.stacked_did(_frame(0.0), **COLS, window=(-4, 3))
    assert res.options["stacks"] == [6]


BAD = {
    "window-not-pair": (dict(window=5), SpecError, "window must be a pair"),
    "window-without-reference": (dict(window=(0, 3)), SpecError, r"must contain the reference event time -1"),
    "window-without-zero": (dict(window=(-4, -2)), SpecError, r"event time 0"),
    "unknown-control": (dict(control="nevertreated"), SpecError, r"control='nevertreated' is not one of"),
    "unknown-weighting": (dict(weighting="population"), SpecError, r"weighting='population' is not one of"),
    "window-too-wide": (dict(window=(-9, 9)), EstimationError, r"no adoption event has its whole window=\(-9, 9\)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case):
    kw, exc, msg = BAD[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DteDaskWarning)
        with pytest.raises(exc, match=msg):
            dte_dask.stacked_did(_frame(0.0), **COLS, **kw)
