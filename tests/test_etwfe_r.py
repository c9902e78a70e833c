"""ETWFE with ``convention="r_etwfe"`` against R etwfe's regression written out by hand.

R ``etwfe(y ~ x, tvar, gvar, data, ivar = unit, cgroup)`` (fixest ``feols``, ``fe = "feo"``) fits

    y ~ .Dtreat:i(gvar, i.tvar, ref = gref[, ref2 = tref]) / x_dm
        + x + i(gvar, x, ref = gref) + i(tvar, x, ref = tref) | unit + tvar

with x_dm = x minus its cohort mean over all rows (``fixest::demean(x ~ gvar)``, unweighted), and
``emfx`` averages the effect of ``.Dtreat`` over the treated rows, unweighted. The reference here
builds those columns with explicit unit and period dummies and solves the (weighted) least squares
with numpy; fixest's dropping of the columns that the unit dummies absorb (the raw term and cohort
slopes of a covariate constant within units) is mirrored by leaving them out.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import linalg
from threadpoolctl import threadpool_limits

import dte_dask
from dte_dask.exceptions import SpecError

COLS = dict(outcome="y", unit="unit", time="time", group="group")


def _panel(seed: int, n: int = 150) -> pd.DataFrame:
    df = dte_dask.simulate_panel(n, 6, seed=seed).data.compute(scheduler="sync")
    rng = np.random.default_rng(seed)
    D = ((df["group"] > 0) & (df["time"] >= df["group"])).to_numpy(float)
    df["x1"] = rng.normal(size=len(df)) + 0.1 * df["time"] + 0.3 * (df["group"] > 0)
    base = df["unit"].map(pd.Series(rng.normal(0, 15000, n), index=np.sort(df["unit"].unique())))
    df["income"] = 42000.0 + base + 800.0 * df["time"] + rng.normal(0, 2000, len(df))  # dollars, time-varying
    df["wealth"] = 1000.0 * np.round(df["unit"].map(pd.Series(rng.lognormal(4, 1, n),
                                                              index=np.sort(df["unit"].unique()))))  # constant
    df["y"] = df["y"] + 0.5 * df["x1"] * (1 + D) + 2e-5 * df["income"] * (1 + 0.5 * D) + 0.4 * df["female"] * D
    df["w"] = df["unit"].map(pd.Series(rng.uniform(0.5, 2.0, n), index=np.sort(df["unit"].unique())))
    return df


def _reference(df: pd.DataFrame, covs: list[str], control: str, weights: str | None = None,
               fe: str = "unit") -> dict:
    """R etwfe's regression and emfx, by hand. Returns the cell dummies' coefficients, the cells'
    mean effects, the simple ATT and its CRV1 SE (clustered by unit), the event-time effects."""
    ug, ut = np.unique(df["group"]), np.unique(df["time"])
    gref = ug[ug > ut.max()] if (ug > ut.max()).any() else ug[ug < ut.min()]
    gref = gref.min() if gref.size else ug.max()  # no never treated: the last cohort (not-yet-treated only)
    tref = ut.min()
    xdm_all = {c: (df[c] - df.groupby("group")[c].transform("mean")).to_numpy() for c in covs}  # all rows
    t, g = df["time"].to_numpy(), df["group"].to_numpy()
    if control == "not_yet_treated":
        dtreat = ((t >= g) & (g != gref)).astype(float)
        if gref > tref:
            dtreat[t >= gref] = np.nan  # R: .Dtreat missing, the row leaves the regression
    else:
        dtreat = (t != g - 1).astype(float)
    keep = ~np.isnan(dtreat)
    df = df[keep]
    xdm = {c: v[keep] for c, v in xdm_all.items()}
    t, g, u, dtreat = t[keep], g[keep], df["unit"].to_numpy(), dtreat[keep] == 1
    if control == "not_yet_treated":
        cells = sorted({(a, b) for a, b in zip(g[dtreat], t[dtreat]) if b != tref})
    else:
        cells = sorted({(a, b) for a, b in zip(g, t) if a != gref and b != a - 1})
    cols, names = [], []
    for a, b in cells:
        cols.append(((g == a) & (t == b) & dtreat).astype(float))
        names.append(("cell", a, b))
    for c in covs:
        x = df[c].to_numpy(float)
        for a, b in cells:
            cols.append(((g == a) & (t == b) & dtreat) * xdm[c])
            names.append(("slope", a, b, c))
        varying = (df.groupby("unit")[c].nunique() > 1).any()
        if varying or fe != "unit":  # a covariate constant within units: absorbed by the unit dummies
            cols.append(x)
            names.append(("x", c))
            for a in sorted(set(g) - {gref}):
                cols.append((g == a) * x)
                names.append(("gx", a, c))
        for s in sorted(set(t) - {tref}):
            cols.append((t == s) * x)
            names.append(("tx", s, c))
    fe_codes = pd.factorize(u if fe == "unit" else g)[0]
    dummies = np.eye(fe_codes.max() + 1)[fe_codes]
    times = np.array([(t == s).astype(float) for s in sorted(set(t) - {tref})]).T
    X = np.column_stack(cols + [dummies, times])
    y = df["y"].to_numpy(float)
    w = np.ones(len(df)) if weights is None else df[weights].to_numpy(float)
    scale = np.sqrt((X ** 2).sum(axis=0))  # equilibrate: income is in dollars
    Xs, sw = X / scale, np.sqrt(w)
    with threadpool_limits(limits=1):  # small dense problems: BLAS threads only contend
        beta = linalg.lstsq(Xs * sw[:, None], y * sw, lapack_driver="gelsy")[0] / scale
        XtWX_inv = np.linalg.pinv((Xs * w[:, None]).T @ Xs) / np.outer(scale, scale)
    k = len(names)
    e = y - X @ beta
    S = pd.DataFrame(X * (w * e)[:, None]).groupby(u).sum().to_numpy()
    N, G = len(df), len(np.unique(u))
    ssc = (N - 1) / (N - k - len(set(t))) * G / (G - 1)
    V = ssc * XtWX_inv @ (S.T @ S) @ XtWX_inv
    pos = {nm: j for j, nm in enumerate(names)}
    # emfx: each treated row's effect of .Dtreat, averaged without weights
    rows = np.flatnonzero(dtreat & (g != gref))
    A = np.zeros((len(rows), X.shape[1]))
    for i, r in enumerate(rows):
        if (g[r], t[r]) not in {c for c in cells}:
            continue
        A[i, pos[("cell", g[r], t[r])]] = 1.0
        for c in covs:
            A[i, pos[("slope", g[r], t[r], c)]] = xdm[c][r]
    effects = A @ beta
    post = t[rows] >= g[rows]
    a_simple = A[post].mean(axis=0)
    cell_mean = pd.Series(effects).groupby([g[rows], t[rows]]).mean()
    ev = pd.Series(effects).groupby(t[rows] - g[rows]).mean()
    return {"dummy": {c: beta[pos[("cell",) + c]] for c in cells}, "cell": cell_mean,
            "simple": float(a_simple @ beta), "simple_se": float(np.sqrt(a_simple @ V @ a_simple)), "event": ev}


def _fit(df, covs, control, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dte_dask.etwfe(df, **COLS, covariates=covs, control_group=control, convention="r_etwfe", **kw)


def _check(res, ref, event_time_step: int = 1, se: bool = True):
    cells = res.by_cohort()
    keys = list(zip(cells["cohort"].astype(int), cells["period"].astype(int)))
    np.testing.assert_allclose(cells["dummy_coef"], [ref["dummy"][k] for k in keys], atol=1e-8, rtol=0)
    np.testing.assert_allclose(cells["coef"], [ref["cell"][k] for k in keys], atol=1e-8, rtol=0)
    simple = res.other.iloc[0]
    assert simple["type"] == "simple"
    assert abs(simple["coef"] - ref["simple"]) < 1e-8
    if se:
        assert abs(simple["se"] - ref["simple_se"]) < 1e-8 * max(1.0, ref["simple_se"])
    ev = ref["event"].drop(index=-1, errors="ignore")
    np.testing.assert_array_equal(res.event_time, ev.index.to_numpy() * event_time_step)
    np.testing.assert_allclose(res.coef, ev.to_numpy(), atol=1e-8, rtol=0)


@pytest.fixture(scope="module")
def panel_a():
    return _panel(seed=3)


@pytest.mark.parametrize("control", ["not_yet_treated", "never_treated"])
def test_matches_r_etwfe_regression_time_varying_covariate(panel_a, control):
    res = _fit(panel_a, ["x1"], control)
    _check(res, _reference(panel_a, ["x1"], control))
    assert res.options["convention"] == "r_etwfe"


@pytest.mark.parametrize("control", ["not_yet_treated", "never_treated"])
def test_matches_r_etwfe_dollars_next_to_a_dummy_with_weights(panel_a, control):
    """Income in dollars (time-varying) next to a 0/1 covariate constant within units (only its period
    slopes and cell interactions enter), weighted regression, unweighted emfx averages."""
    covs = ["income", "female"]
    res = _fit(panel_a, covs, control, weights="w")
    _check(res, _reference(panel_a, covs, control, weights="w"))


def test_r_default_cohort_effects_equal_unit_effects_for_constant_covariates(panel_a):
    """R etwfe without ``ivar`` has cohort instead of unit fixed effects (and keeps the raw term and
    cohort slopes of constant covariates): on a balanced panel with covariates constant within units
    it gives the same cells and aggregates (not the same SEs: other fixed effects, other residuals)."""
    covs = ["wealth", "female"]
    res = _fit(panel_a, covs, "not_yet_treated")
    _check(res, _reference(panel_a, covs, "not_yet_treated", fe="cohort"), se=False)


def test_no_covariates_weights_cells_by_rows_and_equals_jwdid_unweighted(panel_a):
    a = _fit(panel_a, None, "not_yet_treated")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = dte_dask.etwfe(panel_a, **COLS)
    np.testing.assert_allclose(a.coef, b.coef, atol=1e-12, rtol=0)
    _check(_fit(panel_a, None, "never_treated", weights="w"), _reference(panel_a, [], "never_treated", weights="w"))


def test_without_never_treated_the_last_cohort_is_the_reference(panel_a):
    """R: gref = the last cohort; its rows and everyone's from its first treated period on leave the
    regression (.Dtreat missing) but still count in the cohort means of x."""
    df = panel_a[panel_a["group"] > 0]
    _check(_fit(df, ["x1"], "not_yet_treated"), _reference(df, ["x1"], "not_yet_treated"))


def test_unbalanced_panel():
    """Missing periods: cohort means and emfx's cell averages over the observed rows (a unit observed
    once counts there, though it leaves the regression); SEs compared without such units, whose
    count enters fixest's small-sample factor differently (see docs/robust-did.md)."""
    df = dte_dask.simulate_panel(150, 6, seed=3, unbalanced_share=0.25).data.compute(scheduler="sync")
    df = df.dropna(subset=["y"])
    df["x1"] = np.random.default_rng(1).normal(size=len(df)) + 0.1 * df["time"]
    df["y"] = df["y"] + 0.5 * df["x1"]
    assert (df.groupby("unit").size() == 1).any()
    kw = dict(allow_unbalanced_panel=True)
    _check(_fit(df, ["x1"], "not_yet_treated", **kw), _reference(df, ["x1"], "not_yet_treated"), se=False)
    df = df[df.groupby("unit")["time"].transform("size") > 1]
    _check(_fit(df, ["x1"], "never_treated", **kw), _reference(df, ["x1"], "never_treated"))


def test_partition_invariance_and_bad_convention(panel_a):
    a = _fit(panel_a, ["x1", "female"], "never_treated", npartitions=1)
    b = _fit(panel_a, ["x1", "female"], "never_treated", npartitions=3)
    np.testing.assert_array_equal(a.coef, b.coef)
    np.testing.assert_array_equal(a.cov, b.cov)
    pd.testing.assert_frame_equal(a.by_cohort(), b.by_cohort(), check_exact=True)
    with pytest.raises(SpecError, match="convention"):
        dte_dask.etwfe(panel_a, **COLS, convention="R")


def test_job_spec_option(tmp_path):
    """``convention`` is an option of the etwfe job kind, validated by its model and passed through."""
    from dte_dask.jobs.spec import parse_job
    from tests.job_fits import fit_job, mpdta_job

    job = mpdta_job(tmp_path, [{"kind": "etwfe", "options": {"convention": "r_etwfe",
                                                             "control_group": "never_treated"}}])
    res = fit_job(job)["etwfe"]
    assert res.options["convention"] == "r_etwfe" and "dummy_coef" in res.by_cohort()
    job["estimators"] = [{"kind": "etwfe", "options": {"convention": "R"}}]
    with pytest.raises(SpecError, match="convention"):
        parse_job(job)
