"""Multiplier bootstrap: stream keys, multiplier moments, SEs vs analytic, uniform-band coverage."""
from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest

import dte_dask
from dte_dask.inference.bands import boot_se, sup_t_crit
from dte_dask.inference.bootstrap import CHUNK, multipliers


def test_multiplier_streams_keyed_by_block_and_chunk():
    a = multipliers(7, 3, 0, 64, 100, "rademacher")
    np.testing.assert_array_equal(a, multipliers(7, 3, 0, 64, 100, "rademacher"))
    assert set(np.unique(a)) == {-1.0, 1.0}
    assert not np.array_equal(a, multipliers(7, 4, 0, 64, 100, "rademacher"))
    assert not np.array_equal(a, multipliers(7, 3, 1, 64, 100, "rademacher"))
    assert not np.array_equal(a, multipliers(8, 3, 0, 64, 100, "rademacher"))
    # the first rows of a chunk do not depend on how many draws are asked for
    np.testing.assert_array_equal(multipliers(7, 3, 0, 10, 100, "rademacher"), a[:10])


@pytest.mark.parametrize("n_draws,size", [(CHUNK, 300), (13, 1001), (3, 7)])
def test_rademacher_multipliers_are_the_stream_bits(n_draws, size):
    # the definition, written out independently: bit k of the stream's bytes (most significant
    # first) is multiplier k in row-major order, V = 1 - 2 * bit (so draws stay what they were)
    rng = np.random.default_rng(np.random.SeedSequence(11, spawn_key=(5, 2)))
    raw = rng.bytes(-(-(n_draws * size) // 8))
    bits = [(byte >> (7 - k)) & 1 for byte in raw for k in range(8)][: n_draws * size]
    expect = (1.0 - 2.0 * np.array(bits, dtype=float)).reshape(n_draws, size)
    got = multipliers(11, 5, 2, n_draws, size, "rademacher")
    np.testing.assert_array_equal(got, expect)
    assert got.dtype == np.float64 and got.flags.c_contiguous


@pytest.mark.parametrize("kind", ["rademacher", "mammen"])
def test_multiplier_moments(kind):
    v = multipliers(1, 0, 0, CHUNK, 20000, kind).ravel()
    assert abs(v.mean()) < 0.01
    assert abs(v.var() - 1) < 0.01
    if kind == "mammen":  # E V^3 = 1 (Mammen 1993)
        assert abs((v**3).mean() - 1) < 0.03
        assert set(np.round(np.unique(v), 6)) == {round((1 - 5**0.5) / 2, 6), round((1 + 5**0.5) / 2, 6)}


def test_type1_quantiles_and_sup_t():
    draws = np.arange(1, 101, dtype=float)[:, None] - 50.5
    # R: quantile(x, .75, type=1) = x[ceil(.75 n)] = x[75]
    se = boot_se(draws, 10.0)
    assert se[0] == pytest.approx((75 - 25) / (0.6744897501960817 * 2))
    crit = sup_t_crit(np.column_stack([draws[:, 0], 2 * draws[:, 0]]), np.array([1.0, 2.0]), 0.05)
    assert crit == 47.5  # |x - 50.5| sorted: 0.5, 0.5, 1.5, 1.5, ...; the 95th value (type 1) is 47.5


def _dgp(n, seed, cohorts=(3, 4, 5), T=5, pre_trend=0.0):
    """Balanced panel with homogeneous effects e -> 0.5 + 0.25 e (known truth) and iid noise."""
    rng = np.random.default_rng(seed)
    g = rng.choice(np.array([0, *cohorts]), size=n)
    alpha = rng.normal(size=n)
    t = np.arange(1, T + 1)
    e = t[None, :] - g[:, None]
    effect = np.where((g[:, None] > 0) & (e >= 0), 0.5 + 0.25 * e, 0.0)
    trend = pre_trend * (g[:, None] > 0) * t[None, :]
    y = alpha[:, None] + 0.1 * t[None, :] + effect + trend + rng.normal(size=(n, T))
    return pd.DataFrame({"unit": np.repeat(np.arange(n), T), "time": np.tile(t, n), "y": y.ravel(), "group": np.repeat(g, T)})


def test_bootstrap_se_close_to_analytic():
    df = _dgp(20000, 1)
    r = dte_dask.att_gt(df, outcome="y", unit="unit", time="time", group="group", n_boot=999, seed=3)
    ratio = r.se_boot / r.se_analytic
    # IQR-based sigma with B=999 has ~3.5% relative Monte-Carlo s.d.
    assert np.all(np.abs(ratio - 1) < 0.15), ratio
    assert abs(np.mean(ratio) - 1) < 0.03
    dyn = r.aggregate("dynamic")
    assert np.all(np.abs(dyn.se / dyn.se_analytic - 1) < 0.15)


def test_clustered_analytic_se_matches_cluster_sums_oracle():
    df = _dgp(3000, 2)
    df["state"] = df["unit"] % 37
    r = dte_dask.att_gt(df, outcome="y", unit="unit", time="time", group="group", cluster="state", bootstrap=False)
    wide = df.pivot(index="unit", columns="time", values="y")
    g = df.groupby("unit")["group"].first()
    state = df.groupby("unit")["state"].first()
    n = len(g)
    row = r.to_frame().query("group == 4 and time == 5").iloc[0]
    d = wide[5] - wide[3]
    D, C = (g == 4), (g == 0)
    psi = n * (D * (d - d[D].mean()) / D.sum() - C * (d - d[C].mean()) / C.sum())
    s = psi.groupby(state).sum()
    assert row["se"] == pytest.approx(np.sqrt((s**2).sum()) / n, rel=1e-10)
    assert r.n_clusters == 37


def test_cluster_equal_to_unit_gives_unclustered_draws():
    """Clustering by a copy of the unit id must change nothing. It also checks the cohort-moment
    route (unclustered, no covariates) against the explicit influence-function route (clustered)."""
    df = _dgp(800, 3)
    df["cl"] = df["unit"]
    kw = dict(outcome="y", unit="unit", time="time", group="group", n_boot=99, seed=4)
    a = dte_dask.att_gt(df, **kw)
    b = dte_dask.att_gt(df, cluster="cl", **kw)
    np.testing.assert_allclose(a.att, b.att, rtol=0, atol=1e-13)
    np.testing.assert_allclose(a.cov_aug, b.cov_aug, rtol=1e-10, atol=1e-16)
    np.testing.assert_allclose(a.draws_aug, b.draws_aug, rtol=1e-11, atol=1e-14)


@pytest.mark.slow
def test_uniform_band_coverage_of_true_dynamic_effects():
    """95% sup-t bands of the dynamic aggregation cover all true effects in 92-98% of 200 draws."""
    reps, hits_dyn, hits_cells = 200, 0, 0
    truth_e = {e: 0.5 + 0.25 * e if e >= 0 else 0.0 for e in range(-4, 3)}
    with dask.config.set(scheduler="synchronous"):
        for rep in range(reps):
            df = _dgp(600, 1000 + rep)
            r = dte_dask.att_gt(df, outcome="y", unit="unit", time="time", group="group", n_boot=299, seed=rep)
            f = r.to_frame()
            true_cell = np.where(f["event_time"] >= 0, 0.5 + 0.25 * f["event_time"], 0.0)
            hits_cells += bool(np.all((f["band_lower"] <= true_cell) & (true_cell <= f["band_upper"])))
            d = r.aggregate("dynamic").to_frame()
            te = d["event_time"].map(truth_e)
            hits_dyn += bool(np.all((d["band_lower"] <= te) & (te <= d["band_upper"])))
    assert 0.92 <= hits_dyn / reps <= 0.98, hits_dyn / reps
    assert 0.92 <= hits_cells / reps <= 0.98, hits_cells / reps
