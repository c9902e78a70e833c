"""did_multiplegt's trends_nonparam and trends_lin against moderndid's port of R did_multiplegt_dyn
(Favara-Imbs county panel and a simulated panel), a simulation with known effects under
group-specific linear trends, partition invariance and input errors."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import dte_dask
from dte_dask.exceptions import PanelError, SpecError

md = pytest.importorskip("moderndid")

Y, G, T, D = "Dl_vloans_b", "county", "year", "inter_bra"


@pytest.fixture(scope="module")
def favara() -> pd.DataFrame:
    df = md.load_favara_imbs()
    df = df.to_pandas() if hasattr(df, "to_pandas") else df
    df["region"] = (df["state_n"] % 3).astype(float)  # time-invariant, coarser than the state
    return df


def _md(df, y=Y, g=G, t=T, d=D, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return md.did_multiplegt(df, yname=y, idname=g, tname=t, dname=d, **kw)


def _compare(ours, ref):
    est = np.r_[ref.effects.estimates, ref.placebos.estimates if ref.placebos else []]
    se = np.r_[ref.effects.std_errors, ref.placebos.std_errors if ref.placebos else []]
    fr = ours.to_frame()
    np.testing.assert_allclose(fr["estimate"], est, rtol=0, atol=1e-8)
    np.testing.assert_allclose(fr["se"], se, rtol=1e-6)
    np.testing.assert_array_equal(fr["n_switchers"], np.r_[ref.effects.n_switchers,
                                                           ref.placebos.n_switchers if ref.placebos else []])
    np.testing.assert_array_equal(fr["n_obs"], np.r_[ref.effects.n_observations,
                                                     ref.placebos.n_observations if ref.placebos else []])


@pytest.mark.parametrize("kw", [
    {"trends_nonparam": ["region"]},
    {"trends_nonparam": ["region"], "trends_lin": True, "normalized": True},
    {"trends_lin": True, "cluster": "state_n"},
], ids=["nonparam", "nonparam_lin_norm", "lin_cluster"])
def test_favara_vs_moderndid(favara, kw):
    # with clusters, compare on the units observed in the first period (moderndid reads each unit's
    # cluster from that row; see tests/test_did_multiplegt.py)
    df = favara[favara[G].isin(favara.loc[favara[T] == favara[T].min(), G])] if "cluster" in kw else favara
    res = dte_dask.did_multiplegt(df, Y, G, T, D, effects=3, placebo=2, npartitions=3, **kw)
    ref = _md(df, effects=3, placebo=2, **kw)
    _compare(res, ref)
    if kw.get("trends_lin"):
        assert res.ate == {}  # R: no average total effect with trends_lin
    else:
        np.testing.assert_allclose(res.ate["estimate"], ref.ate.estimate, rtol=0, atol=1e-8)
        np.testing.assert_allclose(res.ate["se"], ref.ate.std_error, rtol=1e-6)


def _trend_panel(n=500, periods=8, beta=2.0, seed=4):
    """Binary staggered treatment (some never treated), unit-specific linear trends that rise with
    the adoption date (plain DID_l is biased), Y = a_g + b_g t + beta D + noise; baseline groups
    defined by a time-invariant `region` whose units have their own period shocks. With the
    outcome first-differenced, DID^fd_1 = beta and DID^fd_l = 0 for l > 1: cumulated, every
    effect is beta; placebos are 0."""
    rng = np.random.default_rng(seed)
    F = rng.integers(2, periods + 3, n)
    region = rng.integers(0, 2, n).astype(float)
    t = np.arange(periods)
    Dm = (t[None, :] >= F[:, None]).astype(float)
    slope = 0.5 * np.minimum(F, periods + 1) / periods + 0.1 * rng.normal(size=n)
    shock = rng.normal(size=(2, periods))
    Ym = (rng.normal(size=(n, 1)) + slope[:, None] * t[None, :] + shock[region.astype(int)]
          + beta * Dm + 0.1 * rng.normal(size=(n, periods)))
    df = pd.DataFrame({"id": np.repeat(np.arange(n), periods), "t": np.tile(t, n) + 1, "y": Ym.ravel(),
                       "d": Dm.ravel(), "region": np.repeat(region, periods)})
    df.loc[rng.random(len(df)) < 0.02, "y"] = np.nan
    return df, beta


def test_simulated_trends_known_effects_and_moderndid():
    df, beta = _trend_panel()
    kw = {"trends_lin": True, "trends_nonparam": ["region"]}
    res = dte_dask.did_multiplegt(df, "y", "id", "t", "d", effects=3, placebo=2, npartitions=2, **kw)
    fr = res.to_frame()
    eff, pl = fr[fr.horizon > 0], fr[fr.horizon < 0]
    assert np.all(np.abs(eff["estimate"] - beta) < 4 * eff["se"])
    assert np.all(np.abs(pl["estimate"]) < 4 * pl["se"])
    _compare(res, _md(df, "y", "id", "t", "d", effects=3, placebo=2, **kw))
    # without the trends the effects drift away from beta (the trend differs by adoption date)
    plain = dte_dask.did_multiplegt(df, "y", "id", "t", "d", effects=3, placebo=2).to_frame()
    assert abs(plain.loc[plain.horizon == 3, "estimate"].item() - beta) > 8 * plain.loc[plain.horizon == 3, "se"].item()


def test_partition_invariance(favara):
    kw = {"effects": 3, "placebo": 2, "cluster": "state_n", "trends_nonparam": ["region"], "trends_lin": True,
          "rng_block_size": 16}
    a = dte_dask.did_multiplegt(favara, Y, G, T, D, npartitions=1, **kw)
    b = dte_dask.did_multiplegt(favara, Y, G, T, D, npartitions=5, **kw)
    np.testing.assert_array_equal(a.estimates, b.estimates)
    np.testing.assert_array_equal(a.vcov(), b.vcov())


def test_trends_nonparam_errors(favara):
    bad = favara.copy()
    bad.loc[bad.index[5], "region"] = 99.0
    unit = int(bad.loc[bad.index[5], G])
    with pytest.raises(PanelError, match=f"varies within unit {unit!r}"):
        dte_dask.did_multiplegt(bad, Y, G, T, D, trends_nonparam="region")
    with pytest.raises(SpecError, match="trends_nonparam"):
        dte_dask.did_multiplegt(favara, Y, G, T, D, trends_nonparam=[1])
    named = favara.assign(region=favara["region"].map({0.0: "a", 1.0: "b", 2.0: "c"}))
    with pytest.raises(SpecError, match="numeric"):
        dte_dask.did_multiplegt(named, Y, G, T, D, trends_nonparam=["region"])


def _boot_counts(n, block_size, seed, rep):
    """Draw counts of entities 0..n-1 in replicate ``rep`` (the documented multinomial streams)."""
    from dte_dask.core.dcdh import DcdhBlock
    from dte_dask.core.dcdh_options import block_totals, resample

    entropy = np.random.SeedSequence(seed).entropy
    ones = np.ones((n, 1))
    blk = DcdhBlock(np.arange(n), np.arange(n), ones, ones, ones, np.ones((n, 1), bool), np.arange(n))
    return resample(blk, block_totals(n, block_size, entropy, rep), n, block_size, entropy, rep).w[:, 0]


def test_bootstrap_replicates_are_the_estimator_on_resampled_data():
    """Two replicates: the bootstrap SE is |r0 - r1|/√2, where r_k is the DID_l of the k-th
    resample of the units (R: units drawn with replacement, the rows of a unit drawn k times
    collapsed into one unit of weight k); r_k from moderndid on that weighted data."""
    df, _ = _trend_panel(n=300, periods=6)
    units = np.sort(df["id"].unique())
    res = dte_dask.did_multiplegt(df, "y", "id", "t", "d", effects=2, placebo=1, bootstrap=True, n_boot=2,
                                  seed=11, npartitions=3, rng_block_size=64)
    reps = []
    for r in range(2):
        k = _boot_counts(units.size, 64, 11, r)
        assert k.sum() == units.size
        w = pd.Series(k, index=units)
        sub = df.assign(w=df["id"].map(w))
        sub = sub[sub["w"] > 0]
        ref = _md(sub, "y", "id", "t", "d", effects=2, placebo=1, weightsname="w")
        reps.append(np.r_[ref.effects.estimates, ref.placebos.estimates])
    reps = np.array(reps)
    np.testing.assert_allclose(res.to_frame()["se"], np.abs(reps[0] - reps[1]) / np.sqrt(2), rtol=1e-6, atol=1e-12)
    # estimates are those of the data, not of the replicates
    plain = dte_dask.did_multiplegt(df, "y", "id", "t", "d", effects=2, placebo=1, npartitions=2, rng_block_size=64)
    np.testing.assert_array_equal(res.estimates, plain.estimates)


def test_bootstrap_clustered_partitions_and_size():
    df, _ = _trend_panel(n=300, periods=6, seed=8)
    df["c"] = df["id"] // 3
    kw = {"effects": 2, "placebo": 1, "cluster": "c", "bootstrap": True, "seed": 3, "rng_block_size": 16}
    a = dte_dask.did_multiplegt(df, "y", "id", "t", "d", npartitions=1, n_boot=3, **kw)
    b = dte_dask.did_multiplegt(df, "y", "id", "t", "d", npartitions=4, n_boot=3, **kw)
    np.testing.assert_array_equal(a.vcov(), b.vcov())
    assert a.ate == b.ate
    # the clustered bootstrap SE estimates the same quantity as the analytic clustered SE
    # (16 replicates: the SE is within ~18 % of its limit; the bounds are ~2.5 standard deviations)
    a = dte_dask.did_multiplegt(df, "y", "id", "t", "d", npartitions=1, n_boot=16, **kw)
    an = dte_dask.did_multiplegt(df, "y", "id", "t", "d", effects=2, placebo=1, cluster="c")
    ratio = a.se / an.se
    assert np.all((ratio > 0.6) & (ratio < 1.5)), ratio
    with pytest.raises(SpecError, match="n_boot"):
        dte_dask.did_multiplegt(df, "y", "id", "t", "d", bootstrap=True, n_boot=1)


def test_job_bootstrap_is_the_estimators_own_option(tmp_path):
    """A job's `inference.bootstrap` is the multiplier bootstrap of the other estimators: it must not
    turn did_multiplegt's resampling bootstrap (n_boot full reruns) on; that one is asked for in the
    estimator's options, and then equals the direct call with the job's seed."""
    from tests.job_fits import fit_job

    df, _ = _trend_panel(n=300, periods=6)
    df = df.dropna(subset=["y"])  # a job's panel drops rows without an outcome (did_multiplegt is unbalanced)
    df.to_parquet(tmp_path / "p.parquet")
    opts = {"effects": 2, "placebo": 1}
    fits = fit_job({"data": {"source": str(tmp_path / "p.parquet"), "unit": "id", "time": "t", "outcome": "y",
                             "treatment": "d"},
                    "estimators": [{"kind": "did_multiplegt", "name": "plain", "options": opts},
                                   {"kind": "did_multiplegt", "name": "boot",
                                    "options": {**opts, "bootstrap": True, "n_boot": 2}}],
                    "inference": {"bootstrap": True, "n_boot": 999, "seed": 11}, "output": str(tmp_path / "o")})
    plain, boot = fits["plain"], fits["boot"]
    analytic = dte_dask.did_multiplegt(df, "y", "id", "t", "d", **opts)
    direct = dte_dask.did_multiplegt(df, "y", "id", "t", "d", bootstrap=True, n_boot=2, seed=11, **opts)
    np.testing.assert_allclose(plain.se, analytic.se, rtol=1e-12)
    np.testing.assert_allclose(boot.se, direct.se, rtol=1e-12)
    assert not np.allclose(boot.se, analytic.se)
