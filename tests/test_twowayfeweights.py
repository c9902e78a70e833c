"""twowayfeweights against diff-diff (binary treatment) and the decomposition identity (any treatment)."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import dte_dask

diff_diff = pytest.importorskip("diff_diff")


def _panel(n=200, periods=7, seed=1, multi=False):
    rng = np.random.default_rng(seed)
    g = rng.choice([2, 3, 5, 0], n)
    t = np.tile(np.arange(1, periods + 1), n)
    gg = np.repeat(g, periods)
    D = ((gg > 0) & (t >= gg)).astype(float)
    if multi:  # intensities 1..3 that may switch off again
        D = D * np.repeat(rng.integers(1, 4, n), periods) * (rng.random(n * periods) > 0.1)
    alpha, lam = np.repeat(rng.normal(size=n), periods), 0.5 * t
    effect = 1.0 + 0.4 * (t - gg.clip(min=1)) + np.repeat(rng.normal(size=n), periods)  # heterogeneous
    df = pd.DataFrame({"id": np.repeat(np.arange(n), periods), "t": t, "D": D, "effect": effect,
                       "y": alpha + lam + effect * D})
    return df.drop(index=df.index[rng.random(len(df)) < 0.05])


def test_binary_vs_diff_diff():
    df = _panel()
    df["y"] = df["y"] + np.random.default_rng(2).normal(size=len(df))
    res = dte_dask.twowayfeweights(df, "y", "id", "t", "D", cells=True, npartitions=3, rng_block_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = diff_diff.twowayfeweights(df, "y", unit="id", time="t", treatment="D")
    w = ref.weights.merge(df[["id", "t", "D"]], on=["id", "t"])
    w = w[w["D"] == 1].sort_values(["id", "t"])
    np.testing.assert_allclose(res.cells["weight"], w["weight"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.beta_fe, ref.beta_fe, rtol=1e-10)
    np.testing.assert_allclose(res.sigma_fe, ref.sigma_fe, rtol=1e-10)
    assert res.n_negative == int(round(ref.fraction_negative * res.n_treated)) and res.n_negative > 0
    np.testing.assert_allclose(res.sum_negative, w["weight"][w["weight"] < 0].sum(), rtol=1e-10)


def test_identity_multivalued_noise_free():
    """No noise, Y = unit + period effects + Δ_gt D_gt: β_fe = Σ w_gt Δ_gt exactly, Σ w_gt = 1."""
    df = _panel(multi=True, seed=4)
    res = dte_dask.twowayfeweights(df, "y", "id", "t", "D", cells=True, npartitions=2, rng_block_size=32)
    cells = res.cells.merge(df.rename(columns={"id": "unit", "t": "time"})[["unit", "time", "effect"]],
                            on=["unit", "time"])
    np.testing.assert_allclose(cells["weight"].sum(), 1.0, atol=1e-12)
    np.testing.assert_allclose(res.beta_fe, (cells["weight"] * cells["effect"]).sum(), rtol=1e-10)
    np.testing.assert_allclose(res.by_period["weight"].sum(), 1.0, atol=1e-12)
    assert res.n_treated == len(cells) and np.isnan(res.sigma_fe)


def test_partition_invariance_and_errors():
    df = _panel(multi=True, seed=6)
    a = dte_dask.twowayfeweights(df, "y", "id", "t", "D", npartitions=1, rng_block_size=8)
    b = dte_dask.twowayfeweights(df, "y", "id", "t", "D", npartitions=4, rng_block_size=8)
    assert (a.beta_fe, a.sum_negative, a.n_negative) == (b.beta_fe, b.sum_negative, b.n_negative)
    with pytest.raises(dte_dask.exceptions.MissingColumnError, match="nope"):
        dte_dask.twowayfeweights(df, "y", "id", "t", "nope")
