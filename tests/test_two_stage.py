"""Gardner two-stage DiD: pyfixest's did2s (point estimates and GMM SEs, static and event-time),
diff-diff's TwoStageDiD (point estimates), the identity with imputation, partition invariance."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import dte_dask

COLS = dict(outcome="y", unit="unit", time="time", group="group")
MPDTA = dict(outcome="lemp", unit="countyreal", time="year", group="first_treat")


def _frame(unbalanced: float = 0.0, seed: int = 3, n: int = 200, covariate: bool = False) -> pd.DataFrame:
    df = dte_dask.simulate_panel(n, 6, seed=seed, unbalanced_share=unbalanced).data.compute(scheduler="sync")
    if covariate:
        rng = np.random.default_rng(seed)
        df["x1"] = rng.normal(size=len(df)) + 0.1 * df["time"]
        df["y"] = df["y"] + 0.5 * df["x1"]
    return df


def _no_singletons(df: pd.DataFrame, cols: dict = COLS) -> pd.DataFrame:
    """Units with at least two untreated observations (or none treated): pyfixest's did2s drops
    first-stage singletons (fixef_rm) and then fails on mismatched residual lengths."""
    d = df.dropna(subset=[cols["outcome"]])
    g, t = d[cols["group"]], d[cols["time"]]
    n0 = ((g == 0) | (t < g)).groupby(d[cols["unit"]]).transform("sum")
    return df.loc[d.index[n0 >= 2]]


def _did2s(df: pd.DataFrame, res, cols: dict = COLS, covariates=None, weights=None, cluster=None):
    """pyfixest did2s, static (~ D) and event-time (~ h0 + h1 + ...) second stages."""
    pf = pytest.importorskip("pyfixest")
    d = df.dropna(subset=[cols["outcome"]]).copy()
    g, t = d[cols["group"]], d[cols["time"]]
    d["D"] = (g > 0) & (t >= g)
    # units never observed untreated cannot be imputed: drop them as we do
    never0 = d.groupby(cols["unit"])["D"].transform("all")
    d = d[~never0]
    rel = np.where(d[cols["group"]] > 0, d[cols["time"]] - d[cols["group"]], -999)
    post = res.event_time[res.event_time >= 0]
    names = []
    for h in post:
        d[f"h{h}"] = (rel == h).astype(float)
        names.append(f"h{h}")
    fs = f"~ {' + '.join(covariates) if covariates else '0'} | {cols['unit']} + {cols['time']}"
    kw = dict(yname=cols["outcome"], first_stage=fs, treatment="D", cluster=cluster or cols["unit"],
              weights=weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        static = pf.did2s(d.copy(), second_stage="~ D", **kw)
        dyn = pf.did2s(d.copy(), second_stage="~ " + " + ".join(names), **kw)
    return static, dyn, names


def _check(res, static, dyn, names, tol: float = 5e-6, coef_tol: float | None = None) -> None:
    """pyfixest's iterative demeaning (its default fixef_tol) leaves its stage-1 fit, hence its
    coefficients, about 1e-6 off the exact solution (up to 1.5e-5 on some panels)."""
    coef_tol = tol if coef_tol is None else coef_tol
    att = res.other.set_index("term").loc["ATT"]
    assert abs(att["coef"] - static.coef().iloc[0]) < coef_tol
    assert abs(att["se"] - static.se().iloc[0]) < tol * max(1.0, static.se().iloc[0])
    np.testing.assert_allclose(res.coef, dyn.coef()[names], atol=coef_tol, rtol=0)
    np.testing.assert_allclose(res.se, dyn.se()[names], atol=tol, rtol=tol)


@pytest.mark.peer
@pytest.mark.parametrize("unbalanced", [0.0, 0.2], ids=["balanced", "unbalanced"])
@pytest.mark.parametrize("covariate", [False, True], ids=["nocov", "cov"])
def test_matches_pyfixest_did2s(unbalanced, covariate):
    df = _no_singletons(_frame(unbalanced, covariate=covariate))
    cov = ["x1"] if covariate else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = dte_dask.two_stage_did(df, **COLS, covariates=cov, allow_unbalanced_panel=True)
    _check(res, *_did2s(df, res, covariates=cov))


@pytest.mark.peer
def test_matches_pyfixest_did2s_weighted():
    df = _no_singletons(_frame(0.0, seed=4))
    rng = np.random.default_rng(1)
    w = pd.Series(rng.uniform(0.5, 2.0, df["unit"].nunique()), index=np.sort(df["unit"].unique()))
    df["w"] = df["unit"].map(w)
    res = dte_dask.two_stage_did(df, **COLS, weights="w")
    _check(res, *_did2s(df, res, weights="w"))


@pytest.mark.peer
def test_matches_pyfixest_did2s_clustered():
    df = _no_singletons(_frame(0.0, seed=7))
    df["cl"] = df["unit"] // 4
    res = dte_dask.two_stage_did(df, **COLS, cluster="cl")
    assert res.n_clusters < res.n_units
    _check(res, *_did2s(df, res, cluster="cl"), coef_tol=3e-5)


@pytest.mark.peer
def test_matches_pyfixest_did2s_mpdta():
    """pyfixest's stage-1 demeaning stops at its fixef_tol: its ATT on mpdta is 5.7e-6 off ours with one
    OpenBLAS kernel (AVX-512) and under 5e-6 with another; diff-diff's exact fit is checked to 1e-8
    in the next test."""
    df = _no_singletons(dte_dask.datasets.load_mpdta(), MPDTA)
    res = dte_dask.two_stage_did(df, **MPDTA)
    _check(res, *_did2s(df, res, MPDTA), coef_tol=2e-5)


def _check_diff_diff(df, cols: dict, se_rtol: float, covariates=None, **kw) -> None:
    """Point estimates (to 1e-8) and GMM SEs (to ``se_rtol``) against diff-diff's TwoStageDiD, a
    direct solve that keeps first-stage singletons, as we do."""
    dd = pytest.importorskip("diff_diff")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = dte_dask.two_stage_did(df, **cols, covariates=covariates, **kw)
        fit = dd.TwoStageDiD().fit(df, outcome=cols["outcome"], unit=cols["unit"], time=cols["time"],
                                   first_treat=cols["group"], covariates=covariates)
        es = fit.aggregate("event_study").to_dataframe()
    es = es[~es["is_reference"]].set_index("event_time")
    np.testing.assert_allclose(res.coef, es.loc[res.event_time, "att"], atol=1e-8, rtol=0)
    assert abs(res.other["coef"].iloc[0] - fit.overall_att) < 1e-8
    np.testing.assert_allclose(res.se, es.loc[res.event_time, "se"], rtol=se_rtol)
    assert abs(res.other["se"].iloc[0] / fit.overall_se - 1.0) < se_rtol


@pytest.mark.peer
def test_matches_diff_diff_mpdta():
    """The real panel: estimates to 1e-8, GMM SEs to 1e-8 relative."""
    _check_diff_diff(dte_dask.datasets.load_mpdta(), MPDTA, se_rtol=1e-8)


@pytest.mark.peer
@pytest.mark.parametrize("covariate", [False, True], ids=["nocov", "cov"])
def test_matches_diff_diff(covariate):
    _check_diff_diff(_frame(0.2, seed=6, covariate=covariate), COLS, se_rtol=1e-10,
                     covariates=["x1"] if covariate else None, allow_unbalanced_panel=True)


@pytest.mark.parametrize("unbalanced", [0.0, 0.2], ids=["balanced", "unbalanced"])
def test_point_estimates_equal_imputation(unbalanced):
    """Gardner's stage-2 means of residualized outcomes are BJS's averages of imputed effects."""
    df = _frame(unbalanced, seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = dte_dask.two_stage_did(df, **COLS, allow_unbalanced_panel=True)
        imp = dte_dask.imputation_did(df, **COLS, allow_unbalanced_panel=True)
    np.testing.assert_array_equal(ts.event_time, imp.event_time)
    np.testing.assert_allclose(ts.coef, imp.coef, atol=1e-12, rtol=0)
    assert abs(ts.other["coef"].iloc[0] - imp.other["coef"].iloc[0]) < 1e-12


def test_partition_invariance():
    df = _frame(0.2, seed=8, covariate=True)
    kw = dict(covariates=["x1"], allow_unbalanced_panel=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = dte_dask.two_stage_did(df, **COLS, **kw, npartitions=1)
        b = dte_dask.two_stage_did(df, **COLS, **kw, npartitions=4)
    np.testing.assert_allclose(a.coef, b.coef, atol=1e-12, rtol=0)
    np.testing.assert_allclose(a.cov, b.cov, atol=1e-12, rtol=0)


@pytest.mark.peer
@pytest.mark.parametrize("covariate", [False, True], ids=["nocov", "cov"])
def test_leads_match_pyfixest_did2s(covariate):
    """Second-stage leads: did2s with ``second_stage = ~ i(rel_year, ref = c(-1, Inf))`` (one dummy per
    event time but -1, never treated left out); the post-treatment rows are those without leads."""
    pf = pytest.importorskip("pyfixest")
    df = _no_singletons(_frame(0.0, seed=11, covariate=covariate))
    cov = ["x1"] if covariate else None
    res = dte_dask.two_stage_did(df, **COLS, covariates=cov, pretrends=10)
    base = dte_dask.two_stage_did(df, **COLS, covariates=cov)
    g, t = df["group"], df["time"]
    leads = sorted({int(e) for e in (t - g)[(g > 0) & (t - g < -1)]})
    assert len(leads) >= 3 and res.event_time.tolist() == leads + base.event_time.tolist() and res.ref == -1
    post = res.event_time >= 0
    np.testing.assert_array_equal(res.coef[post], base.coef)
    np.testing.assert_allclose(res.se[post], base.se, rtol=1e-13)
    d = df.copy()
    d["D"] = ((d["group"] > 0) & (d["time"] >= d["group"])).astype(float)
    rel = np.where(d["group"] > 0, d["time"] - d["group"], -999)
    names = []
    for e in res.event_time:
        names.append(f"e{e}".replace("-", "m"))
        d[names[-1]] = (rel == e).astype(float)
    fs = f"~ {'x1' if covariate else '0'} | unit + time"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = pf.did2s(d, yname="y", first_stage=fs, second_stage="~ " + " + ".join(names), treatment="D",
                     cluster="unit")
    np.testing.assert_allclose(res.coef, m.coef()[names], atol=3e-5, rtol=0)  # pyfixest demeaning: see _check
    np.testing.assert_allclose(res.se, m.se()[names], atol=5e-6, rtol=5e-6)
    # fewer leads: the latest pre-periods only, the others unchanged
    two = dte_dask.two_stage_did(df, **COLS, covariates=cov, pretrends=2)
    assert two.event_time.tolist() == [-3, -2] + base.event_time.tolist()
    np.testing.assert_array_equal(two.coef[:2], res.coef[len(leads) - 2:len(leads)])
