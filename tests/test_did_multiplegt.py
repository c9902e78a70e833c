"""did_multiplegt against moderndid's port of R did_multiplegt_dyn, on the Favara-Imbs county
banking-deregulation panel (multi-valued, non-absorbing treatment, missing outcomes, unbalanced)
and on simulated panels with known effects."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import dte_dask
from dte_dask.exceptions import MissingColumnError, SpecError

md = pytest.importorskip("moderndid")

Y, G, T, D = "Dl_vloans_b", "county", "year", "inter_bra"


@pytest.fixture(scope="module")
def favara() -> pd.DataFrame:
    df = md.load_favara_imbs()
    return df.to_pandas() if hasattr(df, "to_pandas") else df


def _md(df, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return md.did_multiplegt(df, yname=Y, idname=G, tname=T, dname=D, **kw)


def _compare(ours, ref, clustered=False):
    est = np.r_[ref.effects.estimates, ref.placebos.estimates if ref.placebos else []]
    se = np.r_[ref.effects.std_errors, ref.placebos.std_errors if ref.placebos else []]
    fr = ours.to_frame()
    np.testing.assert_allclose(fr["estimate"], est, rtol=0, atol=1e-8)
    np.testing.assert_allclose(fr["se"], se, rtol=1e-6)
    n_sw = np.r_[ref.effects.n_switchers, ref.placebos.n_switchers if ref.placebos else []]
    n_obs = np.r_[ref.effects.n_observations, ref.placebos.n_observations if ref.placebos else []]
    np.testing.assert_array_equal(fr["n_switchers"], n_sw)
    np.testing.assert_array_equal(fr["n_obs"], n_obs)
    np.testing.assert_allclose(ours.ate["estimate"], ref.ate.estimate, rtol=0, atol=1e-8)
    if not clustered:  # moderndid's ATE SE ignores `cluster`; ours clusters it like the effects
        np.testing.assert_allclose(ours.ate["se"], ref.ate.std_error, rtol=1e-6)


@pytest.mark.parametrize("kw", [
    {},
    {"normalized": True},
    {"only_never_switchers": True},
    {"same_switchers": True, "switchers": "in"},
    {"weights": "w1"},
], ids=["default", "normalized", "only_never", "same_in", "weights"])
def test_favara_vs_moderndid(favara, kw):
    res = dte_dask.did_multiplegt(favara, Y, G, T, D, effects=5, placebo=3, npartitions=3, **kw)
    mkw = {("weightsname" if k == "weights" else k): v for k, v in kw.items()}
    _compare(res, _md(favara, effects=5, placebo=3, **mkw))


def test_favara_clustered_vs_moderndid(favara):
    # moderndid reads each unit's cluster from its row in the first period, dropping units not
    # observed then from the clustered variance; we keep every unit. Compare on the units
    # observed in the first period, where both conventions agree.
    sub = favara[favara[G].isin(favara.loc[favara[T] == favara[T].min(), G])]
    res = dte_dask.did_multiplegt(sub, Y, G, T, D, effects=4, placebo=2, cluster="state_n", npartitions=4)
    _compare(res, _md(sub, effects=4, placebo=2, cluster="state_n"), clustered=True)
    assert res.n_units == ref_units(sub) and res.n_clusters == sub["state_n"].nunique()


def ref_units(df):
    return _md(df, effects=1).n_units


def test_joint_tests_from_moderndid_influence(favara):
    """Placebo joint test and effects-equality test: Wald statistics with the covariance of the
    (moderndid) influence functions, Σ ψψ'/G² (the covariance whose diagonal is the SE²)."""
    res = dte_dask.did_multiplegt(favara, Y, G, T, D, effects=4, placebo=3, effects_equal=True)
    ref = _md(favara, effects=4, placebo=3, effects_equal=True)
    n = res.n_units
    for psi, est, got, contrast in ((ref.influence_placebos, ref.placebos.estimates, res.placebo_test, False),
                                    (ref.influence_effects, ref.effects.estimates, res.effects_equal_test, True)):
        V = psi.T @ psi / n ** 2
        if contrast:
            k = est.size
            C = np.eye(k - 1, k) - 1.0 / k
            est, V = C @ est, C @ V @ C.T
        stat = est @ np.linalg.solve(V, est)
        np.testing.assert_allclose(got["statistic"], stat, rtol=1e-6)
        assert got["df"] == est.size
    np.testing.assert_allclose(np.sqrt(np.diag(res.vcov())), res.to_frame()["se"], rtol=1e-12)


def test_partition_invariance(favara):
    a = dte_dask.did_multiplegt(favara, Y, G, T, D, effects=3, placebo=2, cluster="state_n", npartitions=1,
                                rng_block_size=16)
    b = dte_dask.did_multiplegt(favara, Y, G, T, D, effects=3, placebo=2, cluster="state_n", npartitions=5,
                                rng_block_size=16)
    np.testing.assert_array_equal(a.estimates, b.estimates)
    np.testing.assert_array_equal(a.vcov(), b.vcov())
    assert a.ate == b.ate


def _simulate(n=600, periods=8, beta=1.5, sd=0.05, seed=3, drop_rows=False):
    """Multi-valued treatment with baselines 0/1/2, increases by 1 or 2 at random periods (some
    never) and stays; Y = unit + period effects + beta * D + noise: DID_l = beta * E[step] and the
    cumulative treatment change is l * E[step], so the normalized effect is beta / l."""
    rng = np.random.default_rng(seed)
    d0 = rng.integers(0, 3, n).astype(float)
    F = rng.integers(2, periods + 3, n)  # > periods - 1: never switches
    step = rng.choice([1.0, 2.0], n)
    t = np.arange(periods)
    Dm = np.where(t[None, :] >= F[:, None], d0[:, None] + step[:, None], d0[:, None])
    Ym = rng.normal(size=(n, 1)) + 0.3 * t[None, :] + beta * Dm + sd * rng.normal(size=(n, periods))
    df = pd.DataFrame({"id": np.repeat(np.arange(n), periods), "t": np.tile(t, n) + 2000,
                       "y": Ym.ravel(), "d": Dm.ravel()})
    miss = rng.random(len(df)) < 0.03
    df.loc[miss, "y"] = np.nan
    if drop_rows:  # unbalanced: a missing row at the switch moves the detected F_g (biases DID_l)
        df = df.drop(index=df.index[rng.random(len(df)) < 0.02])
    return df, beta


def test_simulated_known_effects_and_moderndid():
    df, beta = _simulate()
    # same switchers at every horizon: the increments of the cumulative treatment change are then
    # E[step] for every l, and the average total effect per unit of treatment is beta
    res = dte_dask.did_multiplegt(df, "y", "id", "t", "d", effects=3, placebo=2, normalized=True,
                                  same_switchers=True, npartitions=2)
    fr = res.to_frame()
    eff = fr[fr.horizon > 0]
    assert np.all(np.abs(eff["estimate"] - beta / eff["horizon"]) < 4 * eff["se"])
    assert np.all(np.abs(fr.loc[fr.horizon < 0, "estimate"]) < 4 * fr.loc[fr.horizon < 0, "se"])
    assert abs(res.ate["estimate"] - beta) < 4 * res.ate["se"]
    _compare(res, md.did_multiplegt(df, yname="y", idname="id", tname="t", dname="d", effects=3, placebo=2,
                                    normalized=True, same_switchers=True))
    df, _ = _simulate(drop_rows=True)
    res = dte_dask.did_multiplegt(df, "y", "id", "t", "d", effects=3, placebo=2, normalized=True, npartitions=2)
    ref = md.did_multiplegt(df, yname="y", idname="id", tname="t", dname="d", effects=3, placebo=2,
                            normalized=True)
    _compare(res, ref)


def test_unsupported_options_and_bad_columns(favara):
    with pytest.raises(SpecError, match="continuous"):
        dte_dask.did_multiplegt(favara, Y, G, T, D, continuous=-1)
    with pytest.raises(MissingColumnError, match="nope"):
        dte_dask.did_multiplegt(favara, "nope", G, T, D)


def test_panel_input_binary_staggered_vs_moderndid():
    """A loaded Panel (what job specs and the service pass): binary absorbing D = 1{t >= group}."""
    rng = np.random.default_rng(5)
    n, periods = 300, 6
    g = rng.choice([2, 3, 4, 0], n).astype(float)
    t = np.tile(np.arange(1, periods + 1), n)
    gg = np.repeat(g, periods)
    D = ((gg > 0) & (t >= gg)).astype(float)
    df = pd.DataFrame({"id": np.repeat(np.arange(n), periods), "t": t, "g": gg,
                       "y": np.repeat(rng.normal(size=n), periods) + 0.2 * t + D * (1 + 0.1 * t) + rng.normal(size=n * periods),
                       "D": D})
    panel = dte_dask.load_panel(df, unit="id", time="t", outcome="y", group="g", npartitions=3, rng_block_size=16)
    res = dte_dask.did_multiplegt(panel, effects=2, placebo=2)
    ref = md.did_multiplegt(df, yname="y", idname="id", tname="t", dname="D", effects=2, placebo=2)
    _compare(res, ref)


@pytest.fixture(scope="module")
def mixed():
    """Increases and decreases, switching back off, a cluster column; missing rows and outcomes."""
    rng = np.random.default_rng(11)
    n, periods = 400, 7
    d0 = rng.integers(0, 3, n).astype(float)
    F = rng.integers(2, periods + 2, n)
    back = rng.integers(3, periods + 4, n)
    step = rng.choice([-1.0, 1.0, 2.0], n)
    step[d0 + step < 0] = 1.0
    t = np.arange(periods)
    on = (t[None, :] >= F[:, None]) & (t[None, :] < F[:, None] + back[:, None])
    Dm = d0[:, None] + step[:, None] * on
    Ym = rng.normal(size=(n, 1)) + 0.2 * t[None, :] + 0.8 * Dm + rng.normal(size=(n, periods))
    df = pd.DataFrame({"id": np.repeat(np.arange(n), periods), "t": np.tile(t, n) + 1, "y": Ym.ravel(),
                       "d": Dm.ravel(), "c": np.repeat(np.arange(n) // 7, periods)})
    df.loc[rng.random(len(df)) < 0.03, "y"] = np.nan
    return df, df.drop(index=df.index[(rng.random(len(df)) < 0.02) & (df["t"] > 1)])


@pytest.mark.parametrize("kw", [{"switchers": "out"}, {"switchers": "in", "cluster": "c"},
                                {"only_never_switchers": True, "cluster": "c", "normalized": True}],
                         ids=["out", "in_cluster", "never_cluster_norm"])
def test_mixed_directions_vs_moderndid(mixed, kw):
    # with clusters, rows absent from the data differ: moderndid gives the rows it re-adds a missing
    # cluster (its placebo SEs then count them apart, or are NaN); compare clusters on complete rows
    mixed = mixed[0] if "cluster" in kw else mixed[1]
    res = dte_dask.did_multiplegt(mixed, "y", "id", "t", "d", effects=3, placebo=2, npartitions=3,
                                  rng_block_size=8, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = md.did_multiplegt(mixed, yname="y", idname="id", tname="t", dname="d", effects=3, placebo=2, **kw)
    _compare(res, ref, clustered="cluster" in kw)
