"""HonestDiD sensitivity analysis: parity with R HonestDiD through moderndid's port, closed forms,
properties of the robust intervals, the event-study adapter, and bad input.

moderndid 0.2's port differs from R HonestDiD in three places that the parity tests work around
(documented in the tests): its Delta^RM omits the earliest pre-period first difference from the
maximum (we compare against our union restricted to the same differences, ``pre_diffs``); its
Delta^RM with a sign or shape restriction adds a post-period difference as a candidate maximum (not
compared); and its FLCI stops its search over h at a relative tolerance of 1e-6, which at M = 0
moves the endpoints by ~3e-5 (we check M = 0 against the exact GLS closed form instead).
"""
from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
from scipy import optimize, stats

import dte_dask
from dte_dask.exceptions import SpecError
from dte_dask.regression_results import RegressionResult
from dte_dask.sensitivity import event_study_inputs, honest_did
from dte_dask.sensitivity.flci import compute_flci, folded_normal_quantile, max_bias
from dte_dask.sensitivity.intervals import robust_interval
from dte_dask.sensitivity.restrictions import delta_sd

FLCI_TOL = 1e-6


@pytest.fixture(scope="module")
def mpdta_cs():
    mp = dte_dask.datasets.load_mpdta()
    return dte_dask.att_gt(mp, outcome="lemp", unit="countyreal", time="year", group="first_treat",
                           control_group="never_treated", base_period="universal", bootstrap=False)


@pytest.fixture(scope="module")
def mpdta_inputs(mpdta_cs):
    return event_study_inputs(mpdta_cs)


@pytest.fixture(scope="module")
def sim_es():
    df = dte_dask.simulate_panel(400, 8, seed=3).data.compute(scheduler="sync")
    return dte_dask.event_study(df, outcome="y", unit="unit", time="time", group="group", window=(-4, 3),
                                bin_endpoints=False)


def _mdid():
    return pytest.importorskip("moderndid.didhonest", reason="moderndid[didhonest] (cvxpy) not installed")


def _raw(inputs):
    b, S, _, npre, npost = inputs
    return dict(betahat=b, sigma=S, num_pre_periods=npre, num_post_periods=npost)


# ---------------------------------------------------------------------------------------------
# the adapter and the covariance of our results


def test_inputs_from_cs_dynamic_aggregation(mpdta_cs, mpdta_inputs):
    b, S, e, npre, npost = mpdta_inputs
    assert e.tolist() == [-4, -3, -2, 0, 1, 2, 3] and (npre, npost) == (3, 4)
    agg = mpdta_cs.aggregate("dynamic")
    keep = agg.keys != -1  # the universal base period: estimate 0, variance 0
    np.testing.assert_allclose(b, agg.att[keep], rtol=0, atol=0)
    np.testing.assert_allclose(np.sqrt(np.diag(S)), agg.se_analytic[keep], rtol=1e-12)
    V = agg.vcov()
    assert V.shape == (7 + 1, 7 + 1) and np.allclose(V, V.T) and V[~keep][:, ~keep].item() == 0.0
    assert event_study_inputs(agg)[2].tolist() == e.tolist()


def test_inputs_from_regression_results(sim_es):
    b, S, e, npre, npost = event_study_inputs(sim_es)
    assert e.tolist() == [-4, -3, -2, 0, 1, 2, 3] and (npre, npost) == (3, 4)
    np.testing.assert_array_equal(S, sim_es.vcov())
    np.testing.assert_array_equal(b, sim_es.coef)
    assert sim_es.vcov() is not sim_es.cov


def test_inputs_from_sun_abraham_and_stacked():
    df = dte_dask.simulate_panel(300, 8, seed=5).data.compute(scheduler="sync")
    cols = dict(outcome="y", unit="unit", time="time", group="group")
    for res in (dte_dask.sun_abraham(df, **cols), dte_dask.stacked_did(df, **cols, window=(-3, 2))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # binned endpoints
            b, S, e, npre, npost = event_study_inputs(res)
        assert npre >= 1 and npost >= 1 and S.shape == (b.size, b.size) and np.all(np.diff(e) > 0)
        r = honest_did(res, restriction="smoothness", M=[0.0, 0.05])
        assert np.all(r.lb <= r.ub)


# ---------------------------------------------------------------------------------------------
# parity with moderndid (the R HonestDiD port)


def test_flci_matches_moderndid(mpdta_inputs):
    mh = _mdid()
    b, S, _, npre, npost = mpdta_inputs
    worst = 0.0
    for l_vec in (np.eye(npost)[0], np.full(npost, 1 / npost)):
        ours = honest_did(**_raw(mpdta_inputs), restriction="smoothness", M=[0.005, 0.01, 0.02], l_vec=l_vec)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = mh.create_sensitivity_results_sm(b, S, npre, npost, method="FLCI", m_vec=[0.005, 0.01, 0.02],
                                                   l_vec=l_vec)
        worst = max(worst, np.max(np.abs(ours.lb - ref["lb"].to_numpy())), np.max(np.abs(ours.ub - ref["ub"].to_numpy())))
    assert worst < FLCI_TOL


@pytest.mark.parametrize("method", ["Conditional", "C-LF"])
def test_smoothness_conditional_matches_moderndid(mpdta_inputs, method):
    mh = _mdid()
    b, S, _, npre, npost = mpdta_inputs
    Ms = [0.0, 0.02]
    ours = honest_did(**_raw(mpdta_inputs), restriction="smoothness", method=method, M=Ms, grid_points=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = mh.create_sensitivity_results_sm(b, S, npre, npost, method=method, m_vec=Ms, grid_points=100)
    step = ours.grid_step
    assert np.all(np.abs(ours.lb - ref["lb"].to_numpy()) <= step * 1.0001)
    assert np.all(np.abs(ours.ub - ref["ub"].to_numpy()) <= step * 1.0001)


def test_smoothness_cf_hybrid_matches_moderndid(mpdta_inputs):
    mh = _mdid()
    b, S, _, npre, npost = mpdta_inputs
    ours = honest_did(**_raw(mpdta_inputs), restriction="smoothness", method="C-F", M=[0.01], grid_points=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = mh.create_sensitivity_results_sm(b, S, npre, npost, method="C-F", m_vec=[0.01], grid_points=100)
    assert abs(ours.lb[0] - ref["lb"][0]) <= ours.grid_step[0] and abs(ours.ub[0] - ref["ub"][0]) <= ours.grid_step[0]


def _rm_vs_moderndid(inputs, method, Ms, grid_points, **kw):
    """Our Delta^RM restricted to moderndid's pre-period differences, and moderndid, on the same grid."""
    mh = _mdid()
    b, S, _, npre, npost = inputs
    full = honest_did(**_raw(inputs), restriction="relative_magnitude", method=method, M=Ms, grid_points=grid_points, **kw)
    p = replace(full.problem, pre_diffs=tuple(range(1, npre)))
    ours = [robust_interval(p, m, method) for m in Ms]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = mh.create_sensitivity_results_rm(b, S, npre, npost, method=method, m_bar_vec=Ms, grid_points=grid_points, **kw)
    for iv, lo, hi, flo, fhi in zip(ours, ref["lb"], ref["ub"], full.lb, full.ub):
        assert abs(iv.lb - lo) <= iv.step * 1.0001 and abs(iv.ub - hi) <= iv.step * 1.0001
        assert flo <= iv.lb + 1e-12 and fhi >= iv.ub - 1e-12  # more pieces in the union: never narrower
    return full, ref


def test_relative_magnitudes_conditional_matches_moderndid(mpdta_inputs):
    _rm_vs_moderndid(mpdta_inputs, "Conditional", [0.5, 1.0], 100)


def test_relative_magnitudes_clf_matches_moderndid(mpdta_inputs):
    _rm_vs_moderndid(mpdta_inputs, "C-LF", [1.0], 100)


@pytest.mark.slow
def test_relative_magnitudes_and_breakdown_match_moderndid_on_a_grid(mpdta_inputs, sim_es):
    # the simulated event study (its breakdown lies inside this M grid; mpdta's C-LF intervals are
    # checked in test_relative_magnitudes_clf_matches_moderndid); a coarse grid keeps this near 30 s
    Ms = [0.0, 1.0, 2.0]
    for inputs in (event_study_inputs(sim_es),):
        full, ref = _rm_vs_moderndid(inputs, "C-LF", Ms, 100)
        excl = (ref["lb"].to_numpy() > 0) | (ref["ub"].to_numpy() < 0)
        ok = np.cumprod(excl).astype(bool)
        bd_ref = float(np.array(Ms)[ok][-1]) if ok.any() else np.nan
        p = replace(full.problem, pre_diffs=tuple(range(1, inputs[3])))
        ivs = [robust_interval(p, m, "C-LF") for m in Ms]
        res = replace(full, lb=np.array([i.lb for i in ivs]), ub=np.array([i.ub for i in ivs]))
        assert res.breakdown == bd_ref or (np.isnan(res.breakdown) and np.isnan(bd_ref))


@pytest.mark.slow
@pytest.mark.parametrize("ours,theirs,kind", [
    (dict(restriction="combined", method="C-LF"), dict(method="C-LF", bound="deviation from linear trend"), "rm"),
    (dict(restriction="smoothness", method="C-LF", bias_direction="positive"), dict(method="C-LF", bias_direction="positive"), "sm"),
    (dict(restriction="smoothness", method="C-LF", monotonicity_direction="decreasing"),
     dict(method="C-LF", monotonicity_direction="decreasing"), "sm"),
])
def test_other_restrictions_match_moderndid(mpdta_inputs, ours, theirs, kind):
    mh = _mdid()
    b, S, _, npre, npost = mpdta_inputs
    Ms = [0.0, 1.0] if kind == "rm" else [0.0, 0.01, 0.03]
    grid = dict(grid_points=100, grid_lb=-0.2, grid_ub=0.2)
    res = honest_did(**_raw(mpdta_inputs), M=Ms, **grid, **ours)
    fn = mh.create_sensitivity_results_rm if kind == "rm" else mh.create_sensitivity_results_sm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = fn(b, S, npre, npost, **({"m_bar_vec": Ms} if kind == "rm" else {"m_vec": Ms}), **grid, **theirs)
    np.testing.assert_allclose(res.lb, ref["lb"].to_numpy(), atol=res.grid_step.max() * 1.0001, rtol=0)
    np.testing.assert_allclose(res.ub, ref["ub"].to_numpy(), atol=res.grid_step.max() * 1.0001, rtol=0)


def test_original_interval_matches_moderndid(mpdta_inputs):
    mh = _mdid()
    b, S, _, npre, npost = mpdta_inputs
    ref = mh.construct_original_cs(b, S, npre, npost)
    res = honest_did(**_raw(mpdta_inputs), restriction="smoothness", M=[0.0])
    np.testing.assert_allclose(res.original, (ref.lb, ref.ub), rtol=1e-13)
    row = res.to_frame().iloc[-1]
    assert row["method"] == "Original" and np.isnan(row["M"]) and row["lb"] == res.original[0]


# ---------------------------------------------------------------------------------------------
# closed forms and properties


def _gls_interval(b, S, npre, l_vec, alpha=0.05):
    """theta_hat and se from GLS in beta = slope * t + (0, tau): the linear-extrapolation estimator."""
    npost = l_vec.size
    t = np.concatenate([-np.arange(npre, 0, -1), np.arange(1, npost + 1)]).astype(float)
    X = np.column_stack([t, np.vstack([np.zeros((npre, npost)), np.eye(npost)])])
    Si = np.linalg.inv(S)
    cov = np.linalg.inv(X.T @ Si @ X)
    coef = cov @ X.T @ Si @ b
    est, se = float(l_vec @ coef[1:]), float(np.sqrt(l_vec @ cov[1:, 1:] @ l_vec))
    z = stats.norm.ppf(1 - alpha / 2)
    return est - z * se, est + z * se


@pytest.mark.parametrize("npre", [1, 3])
def test_smoothness_at_m0_is_the_linear_extrapolation_interval(mpdta_inputs, npre):
    b, S, _, n_pre_all, npost = mpdta_inputs
    sel = np.r_[np.arange(n_pre_all - npre, n_pre_all), np.arange(n_pre_all, n_pre_all + npost)]
    bb, SS = b[sel], S[np.ix_(sel, sel)]
    for l_vec in (np.eye(npost)[1], np.full(npost, 0.25)):
        res = honest_did(betahat=bb, sigma=SS, num_pre_periods=npre, num_post_periods=npost,
                         restriction="smoothness", M=[0.0], l_vec=l_vec)
        np.testing.assert_allclose([res.lb[0], res.ub[0]], _gls_interval(bb, SS, npre, l_vec), rtol=1e-9, atol=1e-12)
    if npre == 1:  # one pre-period: theta_hat = l'beta_post + (sum_t t l_t) beta_{-1}
        l_vec = np.eye(npost)[0]
        res = honest_did(betahat=bb, sigma=SS, num_pre_periods=1, num_post_periods=npost, restriction="smoothness", M=[0.0])
        v = np.r_[1.0, l_vec]
        half = stats.norm.ppf(0.975) * np.sqrt(v @ SS @ v)
        np.testing.assert_allclose([res.lb[0], res.ub[0]], [v @ bb - half, v @ bb + half], rtol=1e-12)


@pytest.mark.parametrize("M", [0.0, 0.02, 0.3])
def test_flci_half_length_closed_form_diagonal_sigma(M):
    s1, s2 = 0.07, 0.11
    b = np.array([0.03, -0.2])
    res = honest_did(betahat=b, sigma=np.diag([s1**2, s2**2]), num_pre_periods=1, num_post_periods=1,
                     restriction="smoothness", M=[M])
    sd = np.hypot(s1, s2)  # v = (1, 1): theta_hat = beta_1 + beta_{-1}, worst bias M
    c = optimize.brentq(lambda q: stats.norm.cdf(q - M / sd) - stats.norm.cdf(-q - M / sd) - 0.95, 0, 20)
    np.testing.assert_allclose([res.lb[0], res.ub[0]], [b.sum() - sd * c, b.sum() + sd * c], rtol=1e-10)
    assert abs(folded_normal_quantile(0.95, 0.0) - stats.norm.ppf(0.975)) < 1e-12


def test_max_bias_formula_against_a_linear_program():
    rng = np.random.default_rng(0)
    for npre, npost in [(2, 1), (3, 4), (5, 2)]:
        l_vec = rng.normal(size=npost)
        v = rng.normal(size=npre)
        m = np.arange(npre, 0, -1)
        v[-1] += float(np.arange(1, npost + 1) @ l_vec) - float(m @ v)  # sum_m m v_{-m} = sum_t t l_t
        poly = delta_sd(npre, npost, 0.7)
        w = np.r_[v, l_vec]
        lp = optimize.linprog(-w, A_ub=poly.A, b_ub=poly.d, bounds=[(None, None)] * (npre + npost), method="highs")
        assert abs(-lp.fun - max_bias(v, l_vec, 0.7)) < 1e-9


def test_flci_is_optimal_among_perturbed_estimators(mpdta_inputs):
    b, S, _, npre, npost = mpdta_inputs
    l_vec = np.eye(npost)[0]
    f = compute_flci(b, S, npre, l_vec, 0.02)
    rng = np.random.default_rng(1)
    m = np.arange(npre, 0, -1).astype(float)
    for _ in range(20):  # feasible perturbations keep sum_m m v_{-m} fixed
        d = rng.normal(size=npre) * 0.05
        d -= m * (m @ d) / (m @ m)
        vp = f.v[:npre] + d
        w = np.r_[vp, l_vec]
        h = np.sqrt(w @ S @ w)
        assert h * folded_normal_quantile(0.95, max_bias(vp, l_vec, 0.02) / h) >= f.half_length - 1e-12


def test_intervals_widen_with_m(mpdta_inputs):
    """Nested restriction sets give nested conditional / hybrid intervals (up to the grid step; the
    grid moves with M); the FLCI recentres as M changes (v depends on M) but never gets shorter."""
    for kw in (dict(restriction="smoothness", M=np.linspace(0, 0.05, 6), method="C-LF", grid_points=200),
               dict(restriction="relative_magnitude", M=np.linspace(0, 2, 5), grid_points=200)):
        res = honest_did(**_raw(mpdta_inputs), **kw)
        slack = res.grid_step[1:] + res.grid_step[:-1]
        assert np.all(np.diff(res.lb) <= slack) and np.all(np.diff(res.ub) >= -slack)
        assert np.all(res.lb <= res.original[1]) and np.all(res.ub >= res.original[0])
    res = honest_did(**_raw(mpdta_inputs), restriction="smoothness", M=np.linspace(0, 0.05, 6))
    assert np.all(np.diff(res.ub - res.lb) >= -1e-10)


def test_breakdown_value(sim_es):
    res = honest_did(sim_es, event_time=1, restriction="smoothness", M=np.linspace(0, 0.3, 7))
    excl = (res.lb > 0) | (res.ub < 0)
    if not excl[0]:
        assert np.isnan(res.breakdown)
        return
    expected = res.M[-1] if excl.all() else res.M[int(np.argmin(excl)) - 1]
    assert res.breakdown == expected
    refined = res.breakdown_value(tol=1e-4)
    assert res.breakdown <= refined <= res.breakdown + 0.05 + 1e-12
    iv = robust_interval(res.problem, refined, "FLCI")
    assert iv.lb > 0 or iv.ub < 0


def test_mpdta_summary_and_frame(mpdta_cs):
    res = dte_dask.honest_did(mpdta_cs, restriction="relative_magnitude", M=[0.0, 0.5, 1.0], grid_points=200)
    df = res.to_frame()
    assert list(df.columns) == ["M", "lb", "ub", "method", "delta"] and len(df) == 4
    assert (df["method"].iloc[:3] == "C-LF").all() and (df["delta"].iloc[:3] == "DeltaRM").all()
    text = res.summary()
    assert "Breakdown value" in text and "event time 0" in text and str(res) == text


def test_linear_programming_fallback_agrees_with_vertex_enumeration(mpdta_inputs, monkeypatch):
    """Large problems solve LPs (and find the truncation ends by Newton steps on the dual value)
    instead of enumerating dual vertices; both give the same intervals."""
    from dte_dask.sensitivity import arp

    b, S, _, npre, _ = mpdta_inputs
    one_post = dict(betahat=b[:npre + 1], sigma=S[:npre + 1, :npre + 1], num_pre_periods=npre, num_post_periods=1)
    cases = [(_raw(mpdta_inputs), dict(restriction="smoothness", method="Conditional", M=[0.0, 0.02])),
             (_raw(mpdta_inputs), dict(restriction="combined", method="Conditional", M=[0.5])),
             (_raw(mpdta_inputs), dict(restriction="smoothness", method="C-F", M=[0.01])),
             (one_post, dict(restriction="relative_magnitude", method="Conditional", M=[1.0]))]
    for raw, kw in cases:
        fast = honest_did(**raw, grid_points=100, **kw)
        monkeypatch.setattr(arp, "_MAX_SUBSETS", 0)
        slow = honest_did(**raw, grid_points=100, **kw)
        monkeypatch.setattr(arp, "_MAX_SUBSETS", 200_000)
        np.testing.assert_array_equal(fast.lb, slow.lb)
        np.testing.assert_array_equal(fast.ub, slow.ub)


# ---------------------------------------------------------------------------------------------
# errors


def _reg_result(event_time, coef, cov):
    k = len(event_time)
    return RegressionResult(estimator="event_study", event_time=np.asarray(event_time), coef=np.asarray(coef, float),
                            se=np.sqrt(np.diag(cov)), cov=np.asarray(cov, float), binned=np.zeros(k, bool),
                            alpha=0.05, df_t=99, n_obs=1000, n_units=100, n_clusters=100, ref=-1, ssc=1.0)


def test_errors_name_the_argument(mpdta_inputs):
    raw = _raw(mpdta_inputs)
    with pytest.raises(SpecError, match="no pre-period"):
        honest_did(_reg_result([0, 1, 2], [0.1, 0.2, 0.3], np.eye(3) * 0.01))
    with pytest.raises(SpecError, match="num_pre_periods"):
        honest_did(betahat=[0.1, 0.2], sigma=np.eye(2), num_pre_periods=0, num_post_periods=2)
    singular = np.ones((3, 3)) * 0.01
    with pytest.raises(SpecError, match="sigma is singular"):
        honest_did(_reg_result([-2, 0, 1], [0.0, 0.1, 0.2], singular))
    with pytest.raises(SpecError, match="positive semi-definite"):
        honest_did(betahat=[0.0, 0.1], sigma=[[0.01, 0.02], [0.02, 0.01]], num_pre_periods=1, num_post_periods=1)
    with pytest.raises(SpecError, match="M must be"):
        honest_did(**raw, M=[0.5, -0.1])
    with pytest.raises(SpecError, match="restriction='shape'"):
        honest_did(**raw, restriction="shape")
    with pytest.raises(SpecError, match="method='FLCI'"):
        honest_did(**raw, restriction="relative_magnitude", method="FLCI")
    with pytest.raises(SpecError, match="method='ARP'"):
        honest_did(**raw, restriction="smoothness", method="ARP")
    with pytest.raises(SpecError, match="bias_direction and monotonicity_direction"):
        honest_did(**raw, bias_direction="positive", monotonicity_direction="increasing")
    with pytest.raises(SpecError, match="event_time=7"):
        honest_did(**raw, event_time=7)
    with pytest.raises(SpecError, match="l_vec"):
        honest_did(**raw, l_vec=[1.0, 0.0])
    with pytest.raises(SpecError, match="not consecutive"):
        honest_did(_reg_result([-3, 0, 2], [0.0, 0.1, 0.2], np.eye(3) * 0.01))


def test_non_dynamic_aggregation_is_refused(mpdta_cs):
    with pytest.raises(SpecError, match="'group' aggregation"):
        honest_did(mpdta_cs.aggregate("group"))


def test_lazy_export_and_no_dask_import():
    assert dte_dask.honest_did is honest_did
    import dte_dask.sensitivity.arp as arp_mod
    import dte_dask.sensitivity.flci as flci_mod
    for mod in (arp_mod, flci_mod):
        assert "dask" not in mod.__dict__


# ---------------------------------------------------------------------------------------------
# pre-test power (Roth 2022)


def test_pretest_power_one_pre_period_closed_form():
    from dte_dask.sensitivity.pretest import pretest_power

    S = np.array([[0.04, 0.012], [0.012, 0.09]])
    s = 0.25  # delta_pre = -s at t = -1, delta_post = s at t = 1
    res = pretest_power(sigma=S, num_pre_periods=1, num_post_periods=1, slope=[s])
    z, sd = stats.norm.ppf(0.975), 0.2
    lo, hi = (-z * sd + s) / sd, (z * sd + s) / sd  # standardised box for beta_pre ~ N(-s, sd^2)
    pass_prob = stats.norm.cdf(hi) - stats.norm.cdf(lo)
    trunc_mean = -s + sd * (stats.norm.pdf(lo) - stats.norm.pdf(hi)) / pass_prob
    np.testing.assert_allclose(res.power, [1 - pass_prob], rtol=1e-10)
    np.testing.assert_allclose(res.conditional_bias[0], [s + 0.012 / 0.04 * (trunc_mean + s)], rtol=1e-10)
    np.testing.assert_allclose(res.bias[0], [s])
    detect = res.slope_for_power
    for p, slope in detect.items():  # power at the reported slopes
        assert abs(pretest_power(sigma=S, num_pre_periods=1, num_post_periods=1, slope=[slope]).power[0] - p) < 1e-8


def test_pretest_power_against_monte_carlo(mpdta_inputs):
    b, S, _, npre, npost = mpdta_inputs
    res = dte_dask.pretest_power(betahat=b, sigma=S, num_pre_periods=npre, num_post_periods=npost, slope=[0.02])
    rng = np.random.default_rng(0)
    t = np.r_[-np.arange(npre, 0, -1), np.arange(1, npost + 1)].astype(float)
    X = rng.multivariate_normal(0.02 * t, S, size=200_000)
    ok = np.all(np.abs(X[:, :npre]) <= stats.norm.ppf(0.975) * np.sqrt(np.diag(S)[:npre]), axis=1)
    assert abs(res.power[0] - (1 - ok.mean())) < 4 * np.sqrt(0.25 / X.shape[0])
    mc = X[ok, npre:].mean(axis=0)
    mc_se = X[ok, npre:].std(axis=0) / np.sqrt(ok.sum())
    assert np.all(np.abs(res.conditional_bias[0] - mc) < 4 * mc_se)
    df = res.to_frame()
    assert list(df.columns) == ["slope", "power", "pass_prob", "event_time", "bias", "conditional_bias"]
    assert "power" in res.summary()
