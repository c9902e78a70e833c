"""Borusyak–Jaravel–Spiess imputation: diff-diff's ImputationDiD (point estimates, Theorem 3
conservative SEs, auxiliary partitions, leave-out), Test 1 against pyfixest, partition invariance."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import dte_dask
from dte_dask.exceptions import DteDaskWarning

COLS = dict(outcome="y", unit="unit", time="time", group="group")
MPDTA = dict(outcome="lemp", unit="countyreal", time="year", group="first_treat")


def _frame(unbalanced: float = 0.0, seed: int = 3, n: int = 240, covariate: bool = False) -> pd.DataFrame:
    df = dte_dask.simulate_panel(n, 7, seed=seed, unbalanced_share=unbalanced).data.compute(scheduler="sync")
    if covariate:  # a time-varying covariate correlated with the outcome
        rng = np.random.default_rng(seed)
        df["x1"] = rng.normal(size=len(df)) + 0.1 * df["time"]
        df["y"] = df["y"] + 0.5 * df["x1"]
    return df


def _dd(df: pd.DataFrame, cols: dict = COLS, covariates=None, **kw):
    dd = pytest.importorskip("diff_diff")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = dd.ImputationDiD(**kw).fit(df, outcome=cols["outcome"], unit=cols["unit"], time=cols["time"],
                                         first_treat=cols["group"], covariates=covariates)
        es = fit.aggregate("event_study").to_dataframe()
    es = es[~es["is_reference"]].set_index("event_time")
    return fit, es


def _check(res, fit, es, se_rtol: float = 1e-10) -> None:
    post = res.event_time >= 0
    ref = es.loc[res.event_time[post]]
    np.testing.assert_allclose(res.coef[post], ref["att"], atol=1e-8, rtol=0)
    np.testing.assert_allclose(res.se[post], ref["se"], rtol=se_rtol)
    att = res.other.set_index("term").loc["ATT"]
    assert abs(att["coef"] - fit.overall_att) < 1e-8
    assert abs(att["se"] - fit.overall_se) < se_rtol * fit.overall_se
    assert len(ref) == int(post.sum())


@pytest.mark.peer
@pytest.mark.parametrize("unbalanced", [0.0, 0.2], ids=["balanced", "unbalanced"])
@pytest.mark.parametrize("covariate", [False, True], ids=["nocov", "cov"])
def test_matches_diff_diff(unbalanced, covariate):
    df = _frame(unbalanced, covariate=covariate)
    cov = ["x1"] if covariate else None
    res = dte_dask.imputation_did(df, **COLS, covariates=cov, allow_unbalanced_panel=True)
    fit, es = _dd(df, covariates=cov)
    _check(res, fit, es)


@pytest.mark.peer
@pytest.mark.parametrize("partition", ["cohort", "horizon"])
def test_aux_partitions_match_diff_diff(partition):
    df = _frame(0.2, seed=7)
    res = dte_dask.imputation_did(df, **COLS, aux_partition=partition, allow_unbalanced_panel=True)
    fit, es = _dd(df, aux_partition=partition)
    _check(res, fit, es)


@pytest.mark.peer
def test_leave_out_matches_diff_diff():
    df = _frame(0.0, seed=9)
    res = dte_dask.imputation_did(df, **COLS, leave_out=True)
    fit, es = _dd(df, leave_one_out=True)
    _check(res, fit, es)
    plain = dte_dask.imputation_did(df, **COLS)
    assert (res.se > plain.se).all()  # leaving a unit out of its own average inflates the residuals


@pytest.mark.peer
def test_matches_diff_diff_mpdta():
    df = dte_dask.datasets.load_mpdta()
    res = dte_dask.imputation_did(df, **MPDTA)
    fit, es = _dd(df, MPDTA)
    _check(res, fit, es)


@pytest.mark.peer
def test_pretrend_test1_matches_pyfixest():
    """Test 1: OLS on the untreated observations with dummies for the last 2 pre-periods."""
    pf = pytest.importorskip("pyfixest")
    df = _frame(0.0, seed=4)
    res = dte_dask.imputation_did(df, **COLS, pretrends=2)
    d = df[(df["group"] == 0) | (df["time"] < df["group"])].copy()
    rel = np.where(d["group"] > 0, d["time"] - d["group"], 99)
    d["pre2"], d["pre1"] = (rel == -2).astype(float), (rel == -1).astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = pf.feols("y ~ pre2 + pre1 | unit + time", data=d, vcov={"CRV1": "unit"})
    pre = res.event_time < 0
    assert list(res.event_time[pre]) == [-2, -1]
    np.testing.assert_allclose(res.coef[pre], ref.coef()[["pre2", "pre1"]], atol=1e-8, rtol=0)
    np.testing.assert_allclose(res.se[pre], ref.se()[["pre2", "pre1"]], rtol=1e-6)
    assert np.isfinite(res.pretrend_test()["p_value"])
    plain = dte_dask.imputation_did(df, **COLS)
    np.testing.assert_array_equal(res.coef[~pre], plain.coef)


def test_horizons_subset_and_weights_scale_invariance():
    df = _frame(0.0, seed=5)
    full = dte_dask.imputation_did(df, **COLS)
    sub = dte_dask.imputation_did(df, **COLS, horizons=[0, 2])
    keep = np.isin(full.event_time, [0, 2])
    np.testing.assert_allclose(sub.coef, full.coef[keep], atol=1e-12)
    np.testing.assert_allclose(sub.se, full.se[keep], rtol=1e-10)
    df["w"] = 3.0
    w = dte_dask.imputation_did(df, **COLS, weights="w")
    np.testing.assert_allclose(w.coef, full.coef, atol=1e-10)
    np.testing.assert_allclose(w.se, full.se, rtol=1e-9)


def test_units_never_untreated_are_dropped_with_a_warning():
    """Treated units observed only from their first treated period on (unbalanced panel)."""
    df = _frame(0.0, seed=6)
    treated = df.loc[df["group"] > 0, "unit"].unique()[:10]
    late = df["unit"].isin(treated) & (df["time"] < df["group"])
    df2 = df[~late]
    with pytest.warns(DteDaskWarning, match="dropped 10 units that are never observed untreated"):
        res = dte_dask.imputation_did(df2, **COLS, allow_unbalanced_panel=True)
    ref = dte_dask.imputation_did(df2[~df2["unit"].isin(treated)], **COLS, allow_unbalanced_panel=True)
    np.testing.assert_allclose(res.coef, ref.coef, atol=1e-12)
    np.testing.assert_allclose(res.se, ref.se, rtol=1e-10)


def test_partition_invariance():
    df = _frame(0.2, seed=8, covariate=True)
    kw = dict(covariates=["x1"], allow_unbalanced_panel=True, pretrends=1)
    a = dte_dask.imputation_did(df, **COLS, **kw, npartitions=1)
    b = dte_dask.imputation_did(df, **COLS, **kw, npartitions=4)
    np.testing.assert_allclose(a.coef, b.coef, atol=1e-12, rtol=0)
    np.testing.assert_allclose(a.cov, b.cov, atol=1e-12, rtol=0)
    pd.testing.assert_frame_equal(a.other, b.other, check_exact=False, atol=1e-12, rtol=0)


def _dense_bjs(df: pd.DataFrame, wcol: str):
    """BJS by brute force (dense design): estimate sum(w tau)/sum(w) and the Theorem 3 SE with
    cohort x horizon auxiliary averages (eq. 8), clustered by unit."""
    d = df.dropna(subset=["y"]).reset_index(drop=True)
    treated = ((d["group"] > 0) & (d["time"] >= d["group"])).to_numpy()
    units, ui = np.unique(d["unit"], return_inverse=True)
    times, ti_ = np.unique(d["time"], return_inverse=True)
    A = np.zeros((len(d), len(units) + len(times) - 1))
    A[np.arange(len(d)), ui] = 1.0
    has_t = ti_ > 0
    A[np.flatnonzero(has_t), len(units) + ti_[has_t] - 1] = 1.0
    y = d["y"].to_numpy()
    A0, A1 = A[~treated], A[treated]
    coef = np.linalg.lstsq(A0, y[~treated], rcond=None)[0]
    tau = y[treated] - A1 @ coef
    w = d.loc[treated, wcol].to_numpy()
    w = w / w.sum()
    est = w @ tau
    v = np.zeros(len(d))
    v[treated] = w
    v[~treated] = -A0 @ np.linalg.lstsq(A0.T @ A0, A1.T @ w, rcond=None)[0]
    eps = np.zeros(len(d))
    eps[~treated] = y[~treated] - A0 @ coef
    cell = (d.loc[treated, "group"].astype(str) + ":" + (d.loc[treated, "time"] - d.loc[treated, "group"]).astype(str)).to_numpy()
    tilde = np.zeros(treated.sum())
    for c in np.unique(cell):
        m = cell == c
        tilde[m] = (w[m] ** 2 @ tau[m]) / (w[m] ** 2).sum()  # one observation per unit and cell
    eps[treated] = tau - tilde
    psi = np.bincount(ui, v * eps)
    return est, float(np.sqrt(psi @ psi))


def test_estimand_weights():
    df = _frame(0.0, seed=12, n=120)
    post = (df["group"] > 0) & (df["time"] >= df["group"])
    rng = np.random.default_rng(0)
    df["wtr"] = np.where(post, rng.uniform(0.2, 3.0, len(df)), 0.0)
    df["h0"] = (post & (df["time"] == df["group"])).astype(float)
    res = dte_dask.imputation_did(df, **COLS, estimand_weights="wtr")
    other = res.other.set_index("term")
    est, se = _dense_bjs(df, "wtr")
    assert abs(other.loc["weighted", "coef"] - est) < 1e-10
    assert abs(other.loc["weighted", "se"] / se - 1.0) < 1e-10
    plain = dte_dask.imputation_did(df, **COLS)
    np.testing.assert_allclose(res.coef, plain.coef, atol=1e-12)  # the weights column is not a regressor
    h0 = dte_dask.imputation_did(df, **COLS, estimand_weights="h0").other.set_index("term").loc["weighted"]
    assert abs(h0["coef"] - plain.coef[plain.event_time == 0][0]) < 1e-12
    assert abs(h0["se"] - plain.se[plain.event_time == 0][0]) < 1e-12
