"""Robust nuisance fits: the propensity logit by IRLS with step-halving (core/logit.py).

The real-data case is the NSW job-training evaluation panel (LaLonde 1986; Dehejia & Wahba; the
``nsw_long`` data of R DRDID, shipped with moderndid and loaded from it, offline): 425 experimental
treated units against 15,992 CPS comparison units, 1975 and 1978, covariates on very different
scales (re74 in dollars). Plain Newton from the intercept-only start overshoots there; R did,
csdid, moderndid and drdid all estimate the cell (DR ATT about -871 dollars).

Independent references: csdid and moderndid (R did's algorithm), drdid (DRDID's 2x2 estimators),
statsmodels GLM Binomial for the logit itself. Property tests are seeded (derandomised) and small.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dte_dask
from dte_dask.core import kernels, logit
from dte_dask.core.regression import logit_grad_hess
from dte_dask.exceptions import (
    DegenerateCellWarning,
    DteDaskWarning,
    NuisanceFitWarning,
)

from . import peers
from .warm_helpers import record_warm_starts

COV = ["age", "educ", "black", "married", "nodegree", "hisp", "re74"]
NSW = dict(outcome="re", unit="id", time="year", group="g", covariates=COV, bootstrap=False)
ATT_ATOL, SE_RTOL = 1e-8, 1e-6
PROPERTY = settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def nsw() -> pd.DataFrame:
    pytest.importorskip("moderndid")
    from moderndid.core.data import load_nsw

    df = load_nsw().to_pandas()
    df["g"] = np.where(df["experimental"] == 1, 1978, 0)
    return df[["id", "year", "re", "g", *COV]].reset_index(drop=True)


def _fit(df, **kw):
    """att_gt, and the dte_dask warnings it raised."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = dte_dask.att_gt(df, **kw)
    return res, [w for w in rec if issubclass(w.category, DteDaskWarning)]


@pytest.fixture(scope="module")
def nsw_fits(nsw):
    return {m: _fit(nsw, est_method=m, **NSW) for m in ("dr", "ipw", "reg")}


# ----------------------------------------------------------------------------- NSW, real data
def test_nsw_every_method_estimates_the_cell_without_warnings(nsw_fits):
    for method, (res, warned) in nsw_fits.items():
        assert not warned, (method, [str(w.message) for w in warned])
        assert np.isfinite(res.att).all() and np.isfinite(res.se_analytic).all()
    assert nsw_fits["dr"][0].att[0] == pytest.approx(-871.327149, abs=1e-5)


@pytest.mark.peer
@pytest.mark.parametrize("peer", ["csdid", "moderndid"])
@pytest.mark.parametrize("method", ["dr", "ipw", "reg"])
def test_nsw_matches_peers(nsw, nsw_fits, peer, method):
    pytest.importorskip(peer)
    ref = peers.ATT_GT[peer](nsw, outcome="re", unit="id", time="year", group="g", covariates=COV, est_method=method)
    res = nsw_fits[method][0]
    assert res.att[0] == pytest.approx(ref["att"].iloc[0], abs=ATT_ATOL, rel=0)
    assert res.se_analytic[0] == pytest.approx(ref["se"].iloc[0], rel=SE_RTOL)


@pytest.mark.peer
@pytest.mark.parametrize("method", ["dr", "ipw", "reg"])
def test_nsw_matches_drdid_2x2(nsw, nsw_fits, method):
    est = pytest.importorskip("drdid._estimators")
    fn = {"dr": est.drdid_panel, "ipw": est.std_ipw_did_panel, "reg": est.reg_did_panel}[method]
    wide = nsw.pivot(index="id", columns="year", values="re")
    x = nsw[nsw["year"] == 1975].set_index("id").loc[wide.index]
    X = np.column_stack([np.ones(len(x)), x[COV].to_numpy(float)])
    att, inf = fn(wide[1978].to_numpy(), wide[1975].to_numpy(), (x["g"] > 0).to_numpy(float), X)
    res = nsw_fits[method][0]
    assert res.att[0] == pytest.approx(att, abs=ATT_ATOL, rel=0)
    assert res.se_analytic[0] == pytest.approx(np.sqrt(np.sum(inf**2)) / len(inf), rel=SE_RTOL)


@pytest.mark.parametrize("method", ["dr", "ipw", "reg"])
def test_nsw_units_of_covariates_do_not_matter(nsw, nsw_fits, method):
    """Dollars or thousands of dollars (or years times 1e4): the same ATT to 1e-8."""
    df = nsw.assign(re74=nsw["re74"] / 1000.0, age=nsw["age"] * 1e4, educ=nsw["educ"] * 1e-4)
    res, warned = _fit(df, est_method=method, **NSW)
    assert not warned
    ref = nsw_fits[method][0]
    assert res.att[0] == pytest.approx(ref.att[0], abs=ATT_ATOL, rel=0)
    assert res.se_analytic[0] == pytest.approx(ref.se_analytic[0], rel=1e-10)


def test_nsw_identical_across_partitions(nsw, nsw_fits):
    """Step-halving (an extra reduction for a rejected step) keeps results bit-identical."""
    p = dte_dask.load_panel(nsw.sample(frac=1.0, random_state=0), unit="id", time="year", outcome="re", group="g",
                            covariates=COV, npartitions=5, rng_block_size=1024)
    res = dte_dask.att_gt(p, est_method="dr", bootstrap=False)
    p1 = dte_dask.load_panel(nsw, unit="id", time="year", outcome="re", group="g", covariates=COV,
                             npartitions=1, rng_block_size=1024)
    ref = dte_dask.att_gt(p1, est_method="dr", bootstrap=False)
    np.testing.assert_array_equal(res.att, ref.att)
    np.testing.assert_array_equal(res.se_analytic, ref.se_analytic)


def test_nsw_non_convergence_is_reported_with_the_cell(nsw, monkeypatch):
    monkeypatch.setattr(logit, "GLM_MAXIT", 2)
    res, warned = _fit(nsw, est_method="ipw", **NSW)
    msgs = [str(w.message) for w in warned if w.category is NuisanceFitWarning]
    assert any("ATT(g=1978, t=1978)" in m and "did not converge in 2 IRLS iterations" in m for m in msgs), msgs
    assert np.isfinite(res.att[0])  # R keeps the last iterate too


# ----------------------------------------------------------------------------- the logit itself
def _irls(X, d, w, warm=None):
    """Drive IrlsLogit on in-memory designs, as graph/attgt.py does over blocks. ``X, d, w`` are
    one design or lists of designs (one per cell, fitted together). ``warm``: (K, p) warm starts,
    the intercept-only start their fallback (as ``kernels.LogitPasses.warm`` sets them up)."""
    many = isinstance(X, list)
    Xs, ds, ws = (X, d, w) if many else ([X], [d], [w])
    K, p = len(Xs), Xs[0].shape[1]
    swd, swc = np.array([w_ @ d_ for d_, w_ in zip(ds, ws)]), np.array([w_ @ (1 - d_) for d_, w_ in zip(ds, ws)])
    gamma0 = logit.intercept_start(swd, swc, p)
    scale = np.array([len(w_) / w_.sum() for w_ in ws])
    if warm is None:
        fit = logit.IrlsLogit(gamma0, np.ones(K, bool), scale)
    else:
        fit = logit.IrlsLogit(warm, np.ones(K, bool), scale, fallback=gamma0, dev_null=kernels.null_deviance(swd, swc))
    while (prop := fit.proposal()) is not None:
        at, mask = prop
        grad, hess, dev, n01, n999 = np.zeros((K, p)), np.zeros((K, p, p)), np.zeros(K), np.zeros(K), np.zeros(K)
        for k in np.flatnonzero(mask):
            grad[k], hess[k], ll = logit_grad_hess(Xs[k], ds[k], ws[k], at[k])
            eta = Xs[k] @ at[k]
            dev[k], n01[k], n999[k] = -2 * ll, logit.eta_extreme(eta), logit.overlap_count(eta)
        fit.update(grad, hess, dev, n01, n999)
    return fit.result()


def _statsmodels_logit(X, d, w):
    sm = pytest.importorskip("statsmodels.api")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sm.GLM(d, X, family=sm.families.Binomial(), freq_weights=w).fit(tol=1e-13, maxiter=100).params


def test_nsw_logit_needs_halving_and_matches_statsmodels(nsw):
    x = nsw[nsw["year"] == 1975]
    X = np.column_stack([np.ones(len(x)), x[COV].to_numpy(float)])
    d, w = (x["g"] > 0).to_numpy(float), np.ones(len(x))
    # the failure mode: a full Newton step from the intercept-only start increases the deviance
    g0 = logit.intercept_start(np.array([d.sum()]), np.array([(1 - d).sum()]), X.shape[1])[0]
    gr, H, ll0 = logit_grad_hess(X, d, w, g0)
    assert logit_grad_hess(X, d, w, g0 + np.linalg.solve(H, gr))[2] < ll0
    fit = _irls(X, d, w)
    assert fit.ok[0] and fit.converged[0] and fit.halvings[0] >= 1 and fit.iterations[0] <= logit.GLM_MAXIT
    ref = _statsmodels_logit(X, d, w)
    np.testing.assert_allclose(X @ fit.gamma[0], X @ ref, rtol=0, atol=1e-8)


def test_warm_start_reaches_the_same_fit_in_fewer_passes_and_falls_back_when_worse(nsw):
    """A start near the solution (a sample's fit) gives the cold fit's coefficients in fewer passes;
    a start worse than the intercept-only fit (here: fitted probabilities numerically 0 or 1) is
    dropped for the intercept-only start and gives the cold fit too. Both cells fitted at once."""
    x = nsw[nsw["year"] == 1975]
    X = np.column_stack([np.ones(len(x)), x[COV].to_numpy(float)])
    d, w = (x["g"] > 0).to_numpy(float), np.ones(len(x))
    cold = _irls(X, d, w)
    sample = np.random.default_rng(0).permutation(len(x))[: len(x) // 2]
    near = _irls(X[sample], d[sample], w[sample]).gamma[0]
    far = np.r_[50.0, np.zeros(X.shape[1] - 1)]
    fit = _irls([X, X], [d, d], [w, w], warm=np.vstack([near, far]))
    for k in range(2):
        np.testing.assert_allclose(X @ fit.gamma[k], X @ cold.gamma[0], rtol=0, atol=1e-9)
        assert fit.converged[k] and fit.ok[k] and not fit.separated[k]
    assert fit.null_deviance[0] == pytest.approx(cold.null_deviance[0], rel=1e-12)  # the analytic null deviance
    assert fit.null_deviance[1] == pytest.approx(cold.null_deviance[0], rel=1e-12)  # the fallback's, evaluated
    warm_only = _irls(X, d, w, warm=near[None])
    assert warm_only.passes < cold.passes
    with pytest.raises(ValueError, match="null deviance"):
        logit.IrlsLogit(near[None], np.ones(1, bool), fallback=near[None])


def test_cells_fitted_together_halve_their_steps_independently(nsw):
    """A cell that needs step-halving (NSW) and one that does not, fitted at once: each gets
    exactly the coefficients of its own fit."""
    x = nsw[nsw["year"] == 1975]
    X1 = np.column_stack([np.ones(len(x)), x[COV].to_numpy(float)])
    d1, w1 = (x["g"] > 0).to_numpy(float), np.ones(len(x))
    rng = np.random.default_rng(3)
    X2 = np.column_stack([np.ones(500), rng.normal(size=(500, len(COV)))])
    d2, w2 = (rng.uniform(size=500) < 0.4).astype(float), rng.uniform(0.5, 2, 500)
    both = _irls([X1, X2], [d1, d2], [w1, w2])
    one, two = _irls(X1, d1, w1), _irls(X2, d2, w2)
    assert both.halvings[0] >= 1 and both.halvings[1] == 0
    np.testing.assert_array_equal(both.gamma, np.vstack([one.gamma, two.gamma]))
    np.testing.assert_array_equal(both.iterations, np.r_[one.iterations, two.iterations])


@PROPERTY
@given(n=st.integers(150, 1500), share=st.floats(0.01, 0.5), log_scale=st.floats(-4, 4),
       weighted=st.booleans(), seed=st.integers(0, 2**16))
def test_logit_matches_statsmodels(n, share, log_scale, weighted, seed):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 3))
    d = (rng.uniform(size=n) < 1 / (1 + np.exp(-(np.log(share / (1 - share)) + Z @ [0.8, -0.5, 0.3])))).astype(float)
    if d.sum() < 2 or d.sum() > n - 2:
        return
    X = np.column_stack([np.ones(n), Z[:, 0] * 10**log_scale, Z[:, 1], (Z[:, 2] > 0) * 1e3])
    w = rng.uniform(0.5, 2.0, n) if weighted else np.ones(n)
    fit = _irls(X, d, w)
    assert fit.ok[0] and fit.converged[0], fit
    eta, ref = X @ fit.gamma[0], X @ _statsmodels_logit(X, d, w)
    np.testing.assert_allclose(eta, ref, rtol=0, atol=1e-8 * (1 + np.abs(ref).max()))


def test_exact_collinearity_is_singular_and_perfect_separation_detected():
    rng = np.random.default_rng(1)
    z = rng.normal(size=300)
    d = (rng.uniform(size=300) < 0.3).astype(float)
    fit = _irls(np.column_stack([np.ones(300), z, 2 * z]), d, np.ones(300))
    assert fit.singular[0] and not fit.ok[0]
    fit = _irls(np.column_stack([np.ones(300), z + 10 * d]), d, np.ones(300))
    assert fit.separated[0] and not fit.ok[0]


# ----------------------------------------------------------------------------- att_gt properties
def _two_period(n, share, seed, *, sep=0.0, eps=None, scale=1.0, weighted=False):
    """Two-period panel: x1 shifted by ``sep`` for the treated; x2 = x1 + eps z when ``eps``."""
    rng = np.random.default_rng(seed)
    d = (rng.uniform(size=n) < share).astype(float)
    d[:2] = [1.0, 0.0]
    x1 = rng.normal(size=n) + sep * d
    x2 = x1 + eps * rng.normal(size=n) if eps is not None else rng.normal(size=n)
    y0 = x1 + rng.normal(size=n)
    y1 = y0 + 0.5 * x2 + d + rng.normal(size=n)
    ids = np.arange(n)
    w = rng.uniform(0.5, 2.0, n) if weighted else np.ones(n)
    return pd.DataFrame({"id": np.r_[ids, ids], "year": np.r_[np.ones(n), 2 * np.ones(n)].astype(int),
                         "y": np.r_[y0, y1], "x1": np.r_[x1, x1] * scale, "x2": np.r_[x2, x2],
                         "w": np.r_[w, w], "g": np.r_[d, d] * 2})


def _same_as_csdid_or_warned(df, method, weighted=False):
    """The property: the csdid estimate to 1e-8 (SE 1e-6), or a warning naming the cell; a NaN
    cell always comes with a DegenerateCellWarning."""
    pytest.importorskip("csdid")
    kw = dict(outcome="y", unit="id", time="year", group="g", covariates=["x1", "x2"], est_method=method,
              weights="w" if weighted else None)
    res, warned = _fit(df, bootstrap=False, **kw)
    assert all("ATT(g=2, t=2)" in str(w.message) for w in warned)
    if np.isnan(res.att[0]):
        assert any(w.category is DegenerateCellWarning for w in warned)
        return res, warned
    if not warned:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = peers.att_gt_csdid(df, **kw)
        assert res.att[0] == pytest.approx(ref["att"].iloc[0], abs=ATT_ATOL, rel=0)
        assert res.se_analytic[0] == pytest.approx(ref["se"].iloc[0], rel=SE_RTOL)
    return res, warned


@pytest.mark.peer
@PROPERTY
@given(share=st.floats(0.01, 0.5), sep=st.floats(0.0, 8.0), method=st.sampled_from(["dr", "ipw"]),
       weighted=st.booleans(), seed=st.integers(0, 2**16))
def test_treated_share_and_near_separation(share, sep, method, weighted, seed):
    _same_as_csdid_or_warned(_two_period(500, share, seed, sep=sep, weighted=weighted), method, weighted)


@pytest.mark.peer
@PROPERTY
@given(log_eps=st.floats(-10, -1), method=st.sampled_from(["dr", "ipw", "reg"]), seed=st.integers(0, 2**16))
def test_nearly_collinear_covariates(log_eps, method, seed):
    _same_as_csdid_or_warned(_two_period(400, 0.3, seed, eps=10**log_eps), method)


@PROPERTY
@given(log_scale=st.floats(-4, 4), share=st.floats(0.01, 0.5), method=st.sampled_from(["dr", "ipw", "reg"]),
       seed=st.integers(0, 2**16))
def test_rescaled_covariate_gives_the_same_att(log_scale, share, method, seed):
    kw = dict(outcome="y", unit="id", time="year", group="g", covariates=["x1", "x2"], est_method=method,
              bootstrap=False)
    a, wa = _fit(_two_period(400, share, seed, sep=0.5), **kw)
    b, wb = _fit(_two_period(400, share, seed, sep=0.5, scale=10**log_scale), **kw)
    assert [str(w.message) for w in wa] == [str(w.message) for w in wb]
    np.testing.assert_allclose(b.att, a.att, rtol=0, atol=ATT_ATOL)
    np.testing.assert_allclose(b.se_analytic, a.se_analytic, rtol=1e-8)


@pytest.mark.parametrize("method, weights", [("dr", None), ("ipw", None), ("dr", "w")])
def test_warm_start_on_awkward_data_gives_the_cold_fit(method, weights, monkeypatch):
    """Unit ids sorted by cohort (each sampled RNG block holds a single cohort: the sample is a
    poor picture of the panel), a covariate in dollars next to the others, sampling weights: the
    warm-started fit (47 RNG blocks) gives the cold fit's (one RNG block) estimates."""
    from dte_dask.core import kernels_cov

    starts = record_warm_starts(monkeypatch, kernels_cov)
    sim = dte_dask.simulate_panel(3000, 6, seed=4, selection=True).data.compute(scheduler="synchronous")
    first = sim.groupby("unit")["group"].first().sort_values(kind="stable")
    sim["unit"] = sim["unit"].map({u: i for i, u in enumerate(first.index)})
    rng = np.random.default_rng(0)
    units = sim["unit"].to_numpy()
    sim["income"] = rng.lognormal(10.5, 0.6, first.size)[units]
    sim["w"] = rng.uniform(0.5, 2.0, first.size)[units]
    kw = dict(unit="unit", time="time", outcome="y", group="group", covariates=["age", "bmi", "income"], weights=weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cold, warm = (dte_dask.att_gt(dte_dask.load_panel(sim, **kw, rng_block_size=bs, npartitions=3),
                                      est_method=method, bootstrap=False) for bs in (1 << 20, 64))
    assert len(starts) == 1 and starts[0].any()  # the cold fit takes no sample
    assert np.isfinite(cold.att).all()
    np.testing.assert_allclose(warm.att, cold.att, rtol=0, atol=1e-10)
    np.testing.assert_allclose(warm.se_analytic, cold.se_analytic, rtol=1e-10)
