"""triple_did against moderndid's ``ddd`` / ``agg_ddd`` (a port of R ``triplediff``) on its own DGPs
with covariates; partition invariance, bootstrap, clustering, job specs, bad input."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dte_dask
from dte_dask.exceptions import PanelError, SpecError

md = pytest.importorskip("moderndid")
from moderndid.core.data import gen_ddd_2periods, gen_ddd_mult_periods

COVS = ["cov1", "cov2", "cov3", "cov4"]
COLS = dict(outcome="y", unit="id", time="time", group="group", partition="partition")
CG = {"never_treated": "nevertreated", "not_yet_treated": "notyettreated"}


def quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


@pytest.fixture(scope="module")
def mp() -> pd.DataFrame:
    """Staggered DDD (cohorts 2 and 3, never treated 0, three periods), 400 units, 4 covariates."""
    return gen_ddd_mult_periods(n=400, dgp_type=1, random_state=3)["data"].to_pandas()


def peer(df, control_group="never_treated", base_period="universal", est_method="dr", **kw):
    return quiet(md.ddd, df, yname="y", tname="time", idname="id", gname=kw.pop("gname", "group"),
                 pname="partition", xformla="~cov1+cov2+cov3+cov4", control_group=CG[control_group],
                 base_period=base_period, est_method=est_method, boot=False, **kw)


def ours(df, **kw):
    kw.setdefault("bootstrap", False)
    return quiet(dte_dask.triple_did, df, **{**COLS, **kw.pop("cols", {})}, covariates=COVS, **kw)


def by_cell(res):
    return {(int(g), int(t)): k for k, (g, t) in enumerate(zip(res.group, res.time))}


@pytest.mark.parametrize("control_group, base_period, est_method", [
    ("never_treated", "universal", "dr"), ("never_treated", "varying", "reg"), ("never_treated", "universal", "ipw"),
    ("not_yet_treated", "universal", "dr"), ("not_yet_treated", "varying", "ipw")])
def test_staggered_cells_match_moderndid(mp, control_group, base_period, est_method) -> None:
    m = peer(mp, control_group, base_period, est_method)
    r = ours(mp, control_group=control_group, base_period=base_period, est_method=est_method)
    idx = by_cell(r)
    k = np.array([idx[(int(g), int(t))] for g, t in zip(m.groups, m.times)])
    assert r.att.size == k.size
    np.testing.assert_allclose(r.att[k], m.att, rtol=0, atol=1e-8 if est_method != "ipw" else 1e-6)
    se_gmm = np.array([np.nan if v is None else v for v in r.options["se_gmm"]])[k]
    gmm = np.isfinite(se_gmm)
    assert gmm.any() == (control_group == "not_yet_treated")  # cell (2, 2): never treated and cohort 3
    se = np.where(gmm, se_gmm, r.se_analytic[k])
    # ipw: moderndid's propensity-score Hessian is statsmodels' at the last IRLS weights (~1e-6 relative)
    np.testing.assert_allclose(se, m.se, rtol=1e-9 if est_method != "ipw" else 5e-6, atol=1e-8, equal_nan=True)
    # the whole cell covariance (influence functions), not only its diagonal
    V = m.inf_func_mat.T @ m.inf_func_mat / m.n ** 2
    np.testing.assert_allclose(r.cov_aug[np.ix_(k, k)], V, rtol=5e-6, atol=1e-10)
    if gmm.any():  # triplediff's GMM SE sqrt(1 / (n 1'Omega^-1 1)) counts the cell's n_c units as n:
        n_c = float(mp["id"].nunique())  # (its IF SE is sqrt((n_c - 1) / (n_c^2 1'Omega^-1 1)); here n_c = n)
        np.testing.assert_allclose(se_gmm[gmm], r.se_analytic[k][gmm] * n_c / np.sqrt(m.n * (n_c - 1)), rtol=1e-6)


@pytest.fixture(scope="module")
def dr_pair(mp):
    return peer(mp), ours(mp)


def r_agg_se(m, keepers: np.ndarray) -> float:
    """R triplediff's (and R did's) aggregation SE from moderndid's cell influence functions:
    pg-weighted average plus the estimated-weights term ``wif`` (get_weight_influence)."""
    pg = np.array([np.mean(m.unit_groups == g) for g in m.groups])
    w = pg[keepers] / pg[keepers].sum()
    ind = (m.unit_groups[:, None] == m.groups[keepers][None, :]) - pg[keepers][None, :]
    wif = ind / pg[keepers].sum() - ind.sum(axis=1, keepdims=True) * (pg[keepers] / pg[keepers].sum() ** 2)[None, :]
    psi = m.inf_func_mat[:, keepers] @ w + wif @ m.att[keepers]
    return float(np.sqrt(np.mean(psi ** 2) / m.n))


@pytest.mark.parametrize("kind, peer_kind", [("simple", "simple"), ("dynamic", "eventstudy"), ("group", "group"),
                                             ("calendar", "calendar")])
def test_aggregations_match_agg_ddd(dr_pair, kind, peer_kind) -> None:
    m, r = dr_pair
    a = quiet(md.agg_ddd, m, type=peer_kind, boot=False, cband=False)
    agg = r.aggregate(kind)
    f = agg.to_frame()
    assert agg.overall_att == pytest.approx(a.overall_att, abs=1e-8)
    if kind != "simple":
        np.testing.assert_allclose(f["estimate"], a.att_egt, atol=1e-8)
    post = m.groups <= m.times
    if kind == "group":  # no estimated weights inside a group: agg_ddd's SEs are R's
        assert agg.overall_se == pytest.approx(a.overall_se, rel=1e-7)
        np.testing.assert_allclose(f["se"], a.se_egt, rtol=1e-7)
    elif kind == "simple":  # agg_ddd leaves out the estimated-weights term that R triplediff / did add
        assert agg.overall_se == pytest.approx(r_agg_se(m, np.flatnonzero(post)), rel=1e-7)
    elif kind == "dynamic":
        for e, se in zip(f["event_time"], f["se"]):
            if e != -1:
                assert se == pytest.approx(r_agg_se(m, np.flatnonzero(m.times - m.groups == e)), rel=1e-7)
    else:
        for t, se in zip(f["time"], f["se"]):
            assert se == pytest.approx(r_agg_se(m, np.flatnonzero(post & (m.times == t))), rel=1e-7)


def test_two_period_with_weights_matches_moderndid() -> None:
    df = gen_ddd_2periods(n=500, dgp_type=1, random_state=7)["data"].to_pandas()
    df["group"] = np.where(df["state"] == 1, 2, 0)
    w = np.random.default_rng(0).uniform(0.5, 2.0, df["id"].max() + 1)
    df["w"] = w[df["id"]]
    for method in ("dr", "reg"):
        m = quiet(md.ddd, df, yname="y", tname="time", idname="id", gname="state", pname="partition",
                  xformla="~cov1+cov2+cov3+cov4", weightsname="w", est_method=method, boot=False)
        r = ours(df, est_method=method, weights="w")
        k = by_cell(r)[(2, 2)]
        n = df["id"].nunique()
        assert r.att[k] == pytest.approx(m.att, abs=1e-8)
        # the two-period ddd_panel reports sd(IF, ddof=1) / sqrt(n); the multi-period path (and R did) sqrt(IF'IF) / n
        assert r.se_analytic[k] == pytest.approx(np.sqrt(np.mean(m.att_inf_func ** 2) / n), abs=1e-8, rel=1e-9)
        assert r.se_analytic[k] == pytest.approx(m.se * np.sqrt((n - 1) / n), abs=1e-8, rel=1e-9)


def test_clustered_se_is_the_cluster_sum_of_moderndids_influence_functions(mp, dr_pair) -> None:
    m, _ = dr_pair
    r = ours(mp, cluster="cluster")
    clusters = mp.drop_duplicates("id").sort_values("id")["cluster"].to_numpy()
    idx = by_cell(r)
    k = np.array([idx[(int(g), int(t))] for g, t in zip(m.groups, m.times)])
    np.testing.assert_allclose(r.se_analytic[k], cluster_se(m.inf_func_mat, clusters, m.n), rtol=1e-7, equal_nan=True)


@pytest.fixture(scope="module")
def boot_runs(mp):
    kw = dict(control_group="not_yet_treated", bootstrap=True, n_boot=999, seed=11, cluster="cluster")
    return ours(mp, npartitions=1, **kw), ours(mp, npartitions=3, **kw)


def test_bit_identical_for_any_partitioning(boot_runs) -> None:
    a, b = boot_runs
    for name in ("att", "se_analytic", "se_boot", "cov_aug", "draws_aug"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.crit == b.crit


def test_bootstrap_agrees_with_analytic_and_gives_uniform_bands(boot_runs) -> None:
    r, _ = boot_runs
    ok = np.isfinite(r.se_analytic)
    np.testing.assert_allclose(r.se_boot[ok], r.se_analytic[ok], rtol=0.15)  # 999 draws: IQR SE within ~15%
    z = 1.959963984540054
    assert z < r.crit < 3.0  # sup-t over 4 correlated cells: above the pointwise, below Bonferroni-like values
    dyn = r.aggregate("dynamic")
    f = dyn.to_frame()
    assert np.all(f["band_lower"].dropna() <= f["ci_lower"].dropna())


def test_known_effects_are_recovered() -> None:
    """gen_ddd_2periods: the true ATT is 0; at n=4000 the 95% interval covers it (dr, two-period)."""
    sim = gen_ddd_2periods(n=4000, dgp_type=1, random_state=5)
    df = sim["data"].to_pandas()
    df["group"] = np.where(df["state"] == 1, 2, 0)
    r = ours(df)
    k = by_cell(r)[(2, 2)]
    assert abs(r.att[k] - sim["true_att"]) < 1.96 * r.se_analytic[k]


def cluster_se(inf_func_mat: np.ndarray, clusters: np.ndarray, n: int) -> np.ndarray:
    S = pd.DataFrame(inf_func_mat).groupby(clusters).sum().to_numpy()
    se = np.sqrt(np.diag(S.T @ S)) / n
    return np.where(se > 1e-7, se, np.nan)


def test_real_household_panel_unbalanced_with_covariates_and_clusters() -> None:
    """Cai (2016), shipped with moderndid: 3,659 households, 2000-2008, unbalanced (361 households
    miss years), insurance for tobacco farmers (sector) in treated counties from 2003, clustered by
    county; covariates held at each household's first observed year (triplediff wants them time
    invariant)."""
    df = md.load_cai2016().to_pandas()
    df["G"] = np.where(df["treatment"] == 1, 2003, 0)
    covs = ["hhsize", "age", "educ_scale"]
    for c in covs:
        df[c] = df.groupby("hhno")[c].transform("first")
    m = quiet(md.ddd, df, yname="checksaving_ratio", tname="year", idname="hhno", gname="G", pname="sector",
              xformla="~hhsize+age+educ_scale", allow_unbalanced_panel=True, boot=False)
    r = quiet(dte_dask.triple_did, df, outcome="checksaving_ratio", unit="hhno", time="year", group="G",
              partition="sector", covariates=covs, cluster="county", allow_unbalanced_panel=True, bootstrap=False)
    assert r.n_units == df["hhno"].nunique() == m.n
    idx = by_cell(r)
    k = np.array([idx[(int(g), int(t))] for g, t in zip(m.groups, m.times)])
    np.testing.assert_allclose(r.att[k], m.att, rtol=0, atol=1e-8)
    counties = df.drop_duplicates("hhno").sort_values("hhno")["county"].to_numpy()
    np.testing.assert_allclose(r.se_analytic[k], cluster_se(m.inf_func_mat, counties, m.n), rtol=1e-7,
                               equal_nan=True)


def test_unbalanced_staggered_gmm_matches_moderndid(mp) -> None:
    """Rows missing at random; not-yet-treated controls: cell (2, 2) combines two comparison
    cohorts over the units observed in both periods."""
    d = mp[np.random.default_rng(1).random(len(mp)) >= 0.08]
    m = peer(d, "not_yet_treated", allow_unbalanced_panel=True)
    r = ours(d, control_group="not_yet_treated", allow_unbalanced_panel=True)
    idx = by_cell(r)
    k = np.array([idx[(int(g), int(t))] for g, t in zip(m.groups, m.times)])
    np.testing.assert_allclose(r.att[k], m.att, rtol=0, atol=1e-8)
    se_gmm = np.array([np.nan if v is None else v for v in r.options["se_gmm"]])[k]
    assert np.isfinite(se_gmm).sum() == 1
    np.testing.assert_allclose(np.where(np.isfinite(se_gmm), se_gmm, r.se_analytic[k]), m.se, rtol=1e-7,
                               equal_nan=True)
    np.testing.assert_allclose(r.cov_aug[np.ix_(k, k)], m.inf_func_mat.T @ m.inf_func_mat / m.n ** 2, rtol=1e-6,
                               atol=1e-9)


def test_job_spec_runs_triple_did(mp, dr_pair, tmp_path: Path) -> None:
    from dte_dask.jobs.runner import run_job
    from dte_dask.jobs.spec import parse_job

    path = tmp_path / "ddd.parquet"
    mp.to_parquet(path)
    job = parse_job({"name": "ddd", "output": str(tmp_path / "out"),
                     "data": {"source": str(path), "unit": "id", "time": "time", "outcome": "y", "group": "group",
                              "covariates": ["partition", *COVS]},
                     "estimators": [{"kind": "triple_did", "options": {"partition": "partition"},
                                     "aggregations": ["dynamic"]}],
                     "inference": {"bootstrap": False}, "report": False, "cluster": {"performance_report": False}})
    from distributed import Client

    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:
        quiet(run_job, job, client=client, progress=False, echo=lambda *_: None)
    got = pd.read_csv(tmp_path / "out" / "estimators" / "triple_did.csv")
    _, r = dr_pair
    np.testing.assert_allclose(got["estimate"], r.to_frame()["estimate"], rtol=1e-12)
    with pytest.raises(SpecError, match="est_method"):
        parse_job({"data": {"source": str(path), "unit": "id", "time": "time", "outcome": "y", "group": "group"},
                   "estimators": [{"kind": "triple_did", "options": {"partition": "partition", "est_method": "x"}}]})


def test_bad_input_is_named(mp) -> None:
    with pytest.raises(SpecError, match="partition"):
        quiet(dte_dask.triple_did, mp, outcome="y", unit="id", time="time", group="group")
    bad = mp.copy()
    bad.loc[bad["id"] == 5, "partition"] = 2
    with pytest.raises(PanelError, match="unit 5 has another value"):
        ours(bad)
    bad = mp.copy()
    bad.loc[(bad["id"] == 7) & (bad["time"] == 3), "partition"] = 1 - bad.loc[bad["id"] == 7, "partition"].iloc[0]
    with pytest.raises(PanelError, match="constant within a unit"):
        ours(bad)
    with pytest.raises(SpecError, match="cannot also be a covariate"):
        quiet(dte_dask.triple_did, mp, **COLS, covariates=["partition"])


def test_without_never_treated_the_last_cohort_is_the_control(mp) -> None:
    d = mp[mp["group"] != 0]
    m = peer(d, "not_yet_treated")
    for cg in ("not_yet_treated", "never_treated"):  # never_treated: the last cohort is coerced (R did)
        r = ours(d, control_group=cg)
        k = by_cell(r)[(2, 2)]
        j = int(np.flatnonzero((m.groups == 2) & (m.times == 2))[0])
        assert r.att[k] == pytest.approx(m.att[j], abs=1e-8)
        assert r.se_analytic[k] == pytest.approx(m.se[j], rel=1e-8)
        assert 3 not in set(r.group.astype(int))
