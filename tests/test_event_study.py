"""TWFE event study: pyfixest parity (balanced and unbalanced), an LSDV oracle, inference, bad input."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import dte_dask
from dte_dask.exceptions import EstimationError, SpecError

COLS = dict(outcome="y", unit="unit", time="time", group="group")
NEVER = -1000  # relative time given to never-treated units in the pyfixest formulas (its dummy is all 0)


def _frame(unbalanced: float, seed: int = 3) -> pd.DataFrame:
    df = dte_dask.simulate_panel(400, 8, seed=seed, unbalanced_share=unbalanced).data.compute(scheduler="sync")
    rng = np.random.default_rng(seed)
    df["x1"] = df["bmi"] * np.sin(df["time"]) + rng.normal(size=len(df))  # time-varying covariate
    df["wt"] = 1.0 + (df["unit"] % 7) / 3.0  # sampling weight, constant within unit
    df["cl"] = df["unit"] // 7  # clusters of whole units
    df["treated"] = (df["group"] > 0).astype(float)
    df["rel"] = np.where(df["group"] > 0, df["time"] - df["group"], NEVER)
    return df


@pytest.fixture(scope="module", params=[0.0, 0.25], ids=["balanced", "unbalanced"])
def frame(request) -> pd.DataFrame:
    return _frame(request.param)


def _feols(df: pd.DataFrame, fml: str, **kw) -> pd.DataFrame:
    """pyfixest with a tight demeaning tolerance, so that the reference itself is exact on
    unbalanced panels (its default 1e-8 agrees with dte_dask to ~2e-8 relative in the SEs)."""
    pf = pytest.importorskip("pyfixest")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the all-zero never-treated dummy is dropped with a warning
        m = pf.feols(fml, data=df, fixef_tol=1e-14, **kw)
    tid = m.tidy()
    return m, tid[tid.index.str.startswith("rel")]


CASES = {
    "all-event-times": (dict(), "y ~ i(rel, treated, ref=-1) | unit + time", {}),
    "binned": (dict(window=(-3, 3)), "y ~ i(relw, treated, ref=-1) | unit + time", {}),
    "dropped-outside": (dict(window=(-2, 2), bin_endpoints=False), "y ~ i(relw, treated, ref=-1) | unit + time", {}),
    # clustered by unit: the per-dummy-layout meat of core.within.unit_meat, never the (n, m) scores
    "covariate-weights": (dict(window=(-3, 3), covariates=["x1"], weights="wt"),
                          "y ~ i(relw, treated, ref=-1) + x1 | unit + time", dict(weights="wt")),
    "covariate-weights-cluster": (dict(window=(-3, 3), covariates=["x1"], weights="wt", cluster="cl"),
                                  "y ~ i(relw, treated, ref=-1) + x1 | unit + time",
                                  dict(weights="wt", vcov={"CRV1": "cl"})),
}


@pytest.mark.peer
@pytest.mark.parametrize("case", list(CASES))
def test_matches_pyfixest(frame, case):
    kw, fml, pf_kw = CASES[case]
    df = frame.copy()
    if "window" in kw:
        K, L = kw["window"]
        inside = df["rel"].between(K, L) | (df["group"] == 0)
        if kw.get("bin_endpoints", True):
            df["relw"] = np.where(df["group"] > 0, df["rel"].clip(K, L), NEVER)
        else:
            df = df[inside].assign(relw=lambda d: d["rel"])
    res = dte_dask.event_study(frame, **COLS, allow_unbalanced_panel=True, **kw)
    m, ref = _feols(df, fml, vcov=pf_kw.get("vcov", {"CRV1": "unit"}), weights=pf_kw.get("weights"))
    np.testing.assert_allclose(res.coef, ref["Estimate"].to_numpy(), rtol=0, atol=1e-8)
    np.testing.assert_allclose(res.se, ref["Std. Error"].to_numpy(), rtol=1e-6)
    out = res.to_frame()
    np.testing.assert_allclose(out["ci_lower"], ref["2.5%"].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(out["ci_upper"], ref["97.5%"].to_numpy(), rtol=1e-6)
    assert res.n_obs == m._N
    expected = sorted(int(s.split("::")[1].split(":")[0]) for s in ref.index)
    assert out["event_time"].tolist() == expected
    if "covariates" in kw:
        cov = m.tidy().loc["x1"]
        np.testing.assert_allclose(res.other["coef"], cov["Estimate"], atol=1e-8, rtol=0)
        np.testing.assert_allclose(res.other["se"], cov["Std. Error"], rtol=1e-6)


@pytest.mark.peer
@pytest.mark.parametrize("fn", ["event_study", "stacked_did", "sun_abraham"])
def test_unbalanced_panel_keeps_every_row_by_default(fn):
    """No extra argument: the regression estimators use every observed row of an unbalanced panel,
    as pyfixest does (balancing stays an option: allow_unbalanced_panel=False)."""
    df = _frame(0.25)
    assert df.groupby("unit").size().nunique() > 1  # unbalanced
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = getattr(dte_dask, fn)(df, **COLS)
        kept = getattr(dte_dask, fn)(df, **COLS, allow_unbalanced_panel=True)
        balanced = getattr(dte_dask, fn)(df, **COLS, allow_unbalanced_panel=False)
    np.testing.assert_array_equal(default.coef, kept.coef)
    assert default.n_obs == kept.n_obs == len(df) or fn == "stacked_did"
    assert balanced.n_units < default.n_units
    if fn == "event_study":  # pyfixest on the same data: no argument on our side (CRV1 by unit is ours)
        _, ref = _feols(df, "y ~ i(rel, treated, ref=-1) | unit + time", vcov={"CRV1": "unit"})
        np.testing.assert_allclose(default.coef, ref["Estimate"].to_numpy(), rtol=0, atol=1e-8)
        np.testing.assert_allclose(default.se, ref["Std. Error"].to_numpy(), rtol=1e-6)


def _lsdv(df: pd.DataFrame, dummies: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Least squares with explicit unit and time dummies, CRV1 with fixest's nested factor."""
    units, periods = np.unique(df["unit"]), np.unique(df["time"])
    D = np.column_stack([(df["rel"] == e).to_numpy(float) for e in dummies])
    U = (df["unit"].to_numpy()[:, None] == units[None, :]).astype(float)
    Tm = (df["time"].to_numpy()[:, None] == periods[None, 1:]).astype(float)
    X = np.hstack([D, U, Tm])
    y = df["y"].to_numpy()
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    e = y - X @ beta
    XtXi = np.linalg.pinv(X.T @ X)
    S = np.vstack([X[df["unit"].to_numpy() == u].T @ e[df["unit"].to_numpy() == u] for u in units])
    N, G, k = len(y), len(units), len(dummies) + len(periods)
    V = (N - 1) / (N - k) * G / (G - 1) * XtXi @ S.T @ S @ XtXi
    return beta[:len(dummies)], np.sqrt(np.diag(V))[:len(dummies)]


def test_matches_dense_lsdv_oracle():
    """Independent of pyfixest: an unbalanced panel with no singletons, dense dummies, lstsq."""
    df = _frame(0.2, seed=8)
    df = df[df["unit"] <= 60]
    counts = df.groupby("unit")["y"].transform("size")
    df = df[counts >= 2]
    res = dte_dask.event_study(df, **COLS, allow_unbalanced_panel=True)
    events = sorted(e for e in df.loc[df["group"] > 0, "rel"].unique() if e != -1)
    coef, se = _lsdv(df, events)
    np.testing.assert_allclose(res.coef, coef, atol=1e-10, rtol=0)
    np.testing.assert_allclose(res.se, se, rtol=1e-8)


def test_post_average_pretrend_and_frame():
    df = _frame(0.0)
    res = dte_dask.event_study(df, **COLS, window=(-3, 3))
    post = res.event_time >= 0
    pa = res.post_average()
    a = post / post.sum()
    assert pa["estimate"] == pytest.approx(float(res.coef[post].mean()), abs=1e-14)
    assert pa["se"] == pytest.approx(float(np.sqrt(a @ res.cov @ a)), rel=1e-12)
    pre = res.event_time < 0
    pt = res.pretrend_test()
    w = res.coef[pre] @ np.linalg.solve(res.cov[np.ix_(pre, pre)], res.coef[pre])
    assert pt["df"] == int(pre.sum()) and pt["statistic"] == pytest.approx(w, rel=1e-10)
    out = res.to_frame()
    assert list(out.columns[:5]) == ["event_time", "estimate", "se", "ci_lower", "ci_upper"]
    assert out.loc[out["binned"], "event_time"].tolist() == [-3, 3]
    text = res.summary()
    assert "event study" in text and "Pre-trend Wald test" in text
    with pytest.raises(SpecError, match="by_cohort"):
        res.by_cohort()


def test_event_time_in_time_units():
    """Periods two years apart: event times (window, ref, output) are in years."""
    df = _frame(0.0)
    twice = df.assign(time=df["time"] * 2, group=df["group"] * 2)
    a = dte_dask.event_study(df, **COLS, window=(-3, 3))
    b = dte_dask.event_study(twice, **COLS, window=(-6, 6), ref=-2)
    np.testing.assert_allclose(a.coef, b.coef, rtol=1e-13, atol=1e-13)
    assert (b.event_time == 2 * a.event_time).all()
    with pytest.raises(SpecError, match="multiple of the period step 2"):
        dte_dask.event_study(twice, **COLS, window=(-3, 3), ref=-2)


def test_bootstrap_band():
    df = _frame(0.0)
    a = dte_dask.event_study(df, **COLS, window=(-3, 3), bootstrap=True, n_boot=399, seed=7)
    b = dte_dask.event_study(df, **COLS, window=(-3, 3), bootstrap=True, n_boot=399, seed=7)
    np.testing.assert_array_equal(a.draws, b.draws)
    assert a.draws.shape == (399, a.coef.size)
    np.testing.assert_allclose(a.se_boot, a.se, rtol=0.2)  # Monte Carlo agreement with CRV1
    out = a.to_frame()
    assert a.band_crit > a.crit > 1.9
    assert ((out["band_upper"] - out["band_lower"]) > (out["ci_upper"] - out["ci_lower"]) * 0.9).all()


def test_panel_input_equals_frame_input():
    df = _frame(0.25)
    panel = dte_dask.load_panel(df, unit="unit", time="time", outcome="y", group="group",
                                covariates=["x1", "age"], allow_unbalanced_panel=True)
    a = dte_dask.event_study(panel, window=(-3, 3), covariates=["x1"])
    b = dte_dask.event_study(df, **COLS, window=(-3, 3), covariates="x1", allow_unbalanced_panel=True)
    np.testing.assert_array_equal(a.coef, b.coef)
    np.testing.assert_array_equal(a.se, b.se)


BAD = {
    "window-not-pair": (dict(window=(3,)), SpecError, "window must be a pair"),
    "window-strings": (dict(window=("a", "b")), SpecError, "pair of integers"),
    "window-reversed": (dict(window=(3, -3)), SpecError, "K must be smaller than L"),
    "ref-on-binned-endpoint": (dict(window=(-3, 3), ref=-3), SpecError, "ref=-3 must lie strictly inside"),
    "ref-outside-window": (dict(window=(-2, 2), ref=-4, bin_endpoints=False), SpecError, "ref=-4 must lie inside"),
    "ref-not-event-time": (dict(ref=-50), SpecError, "ref=-50 is not an event time"),
    "bin-endpoints-not-bool": (dict(window=(-3, 3), bin_endpoints="yes"), SpecError, "bin_endpoints"),
    "n-boot": (dict(bootstrap=True, n_boot=1), SpecError, "n_boot"),
    "unknown-covariate": (dict(covariates=["nope"]), Exception, "nope"),
    "time-invariant-covariate": (dict(covariates=["age"]), EstimationError, "'age'|age is collinear"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case):
    kw, exc, msg = BAD[case]
    with pytest.raises(exc, match=msg):
        dte_dask.event_study(_frame(0.0), **COLS, **kw)


def test_unknown_panel_covariate_is_named():
    panel = dte_dask.load_panel(_frame(0.0), unit="unit", time="time", outcome="y", group="group", covariates=["x1"])
    with pytest.raises(SpecError, match=r"\['bmi'\] are not covariates of the panel"):
        dte_dask.event_study(panel, covariates=["bmi"])


def test_all_event_times_without_never_treated_is_collinear():
    df = _frame(0.0)
    df = df[df["group"] > 0]
    with pytest.raises(EstimationError, match=r"event_time=\d+(, event_time=\d+)* (is|are) collinear"):
        dte_dask.event_study(df, **COLS)
    res = dte_dask.event_study(df, **COLS, window=(-3, 3))  # binning identifies it
    assert np.isfinite(res.se).all()
