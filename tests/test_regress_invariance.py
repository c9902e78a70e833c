"""Invariance of the regression estimators (ARCHITECTURE invariant 3): coefficients, CRV1
covariances, per-cohort fits and bootstrap draws are bit-identical for any number of partitions,
for shuffled rows, for a dask input and on a distributed cluster: every sum is reduced along the
fixed tree of RNG blocks and every per-unit score is computed in period order."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster

import dte_dask

BS = 64  # small RNG blocks so that 16 partitions are possible


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    df = dte_dask.simulate_panel(1500, 8, seed=4, unbalanced_share=0.15).data.compute(scheduler="sync")
    df["x1"] = df["bmi"] * np.cos(df["time"]) + np.random.default_rng(1).normal(size=len(df))
    df["cl"] = df["unit"] // 3
    return df


def _panel(df, npartitions: int, cluster: str | None = None):
    p = dte_dask.load_panel(df, unit="unit", time="time", outcome="y", group="group", covariates=["x1"],
                            cluster=cluster, npartitions=npartitions, rng_block_size=BS, allow_unbalanced_panel=True)
    assert p.npartitions == npartitions
    return p


CASES = {
    "event-study-cov-boot": lambda p: dte_dask.event_study(p, window=(-3, 3), covariates=["x1"], bootstrap=True,
                                                           n_boot=49, seed=3),
    "event-study-dropped": lambda p: dte_dask.event_study(p, window=(-2, 2), bin_endpoints=False),
    "event-study-cov": lambda p: dte_dask.event_study(p, covariates=["x1"]),  # the per-layout meat
    "stacked-boot": lambda p: dte_dask.stacked_did(p, window=(-2, 1), bootstrap=True, n_boot=49, seed=3),
    "sun-abraham": lambda p: dte_dask.sun_abraham(p),
}


def _same(a, b) -> None:
    for name in ("coef", "se", "cov", "draws", "se_boot"):
        x, y = getattr(a, name), getattr(b, name)
        if x is None:
            assert y is None
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)
    assert (a.n_obs, a.n_units, a.n_clusters, a.band_crit) == (b.n_obs, b.n_units, b.n_clusters, b.band_crit)
    if a.cohorts is not None:
        pd.testing.assert_frame_equal(a.cohorts, b.cohorts, check_exact=True)


@pytest.mark.parametrize("case", list(CASES))
def test_identical_for_any_npartitions_and_row_order(frame, case):
    fit = CASES[case]
    ref = fit(_panel(frame, 1))
    shuffled = frame.sample(frac=1.0, random_state=3)
    for k, df in ((4, shuffled), (16, frame)):
        _same(ref, fit(_panel(df, k)))


def test_clustered_identical_across_partitions(frame):
    fit = CASES["stacked-boot"]
    _same(fit(_panel(frame, 1, cluster="cl")), fit(_panel(frame.sample(frac=1.0, random_state=5), 7, cluster="cl")))


def test_dask_input_equals_pandas_input(frame):
    import dask.dataframe as dd
    fit = CASES["event-study-cov-boot"]
    _same(fit(_panel(frame, 3)), fit(_panel(dd.from_pandas(frame.sample(frac=1.0, random_state=0), npartitions=5), 3)))


def test_threaded_equals_distributed(frame):
    fit = CASES["stacked-boot"]
    threaded = fit(_panel(frame, 4))
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None, processes=True) as cl, Client(cl):
        dist = fit(_panel(frame, 4))
    _same(threaded, dist)


@pytest.mark.parametrize("case", ["event-study-cov-boot", "stacked-boot"])
def test_bootstrap_scores_exist_one_rng_block_at_a_time(frame, case, monkeypatch):
    """A partition's pooled and coefficient scores are formed and reduced one RNG block at a time
    (a partition's worth of fresh memory per estimator is slow to page in on some VMs): one call
    per RNG block, none longer than a block; the draws themselves are checked above and in
    tests/test_bootstrap.py."""
    import dte_dask.graph.regress as regress

    rows = []
    keep = regress.coef_scores

    def spy(scores, cmap):
        rows.append(scores.shape[0])
        return keep(scores, cmap)

    monkeypatch.setattr(regress, "coef_scores", spy)
    res = CASES[case](_panel(frame, 1))
    assert res.draws is not None and len(rows) == -(-frame["unit"].nunique() // BS)
    assert max(rows) <= BS
