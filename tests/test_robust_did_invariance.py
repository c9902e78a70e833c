"""Bit-identity of the issue-14 estimators (imputation, two-stage, ETWFE, Bacon) for any number of
partitions, row order, clustering, and threaded vs distributed execution."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster

import dte_dask

BS = 32


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    df = dte_dask.simulate_panel(600, 7, seed=4, unbalanced_share=0.15).data.compute(scheduler="sync")
    df["x1"] = df["bmi"] * np.cos(df["time"]) + np.random.default_rng(1).normal(size=len(df))
    df["cl"] = df["unit"] // 3
    return df


def _panel(df, npartitions: int, cluster: str | None = None, balanced: bool = False):
    return dte_dask.load_panel(df, unit="unit", time="time", outcome="y", group="group", covariates=["x1"],
                               cluster=cluster, npartitions=npartitions, rng_block_size=BS,
                               allow_unbalanced_panel=not balanced)


CASES = {
    "imputation": lambda p: dte_dask.imputation_did(p, covariates=["x1"], pretrends=2, leave_out=True),
    "imputation-cohort": lambda p: dte_dask.imputation_did(p, aux_partition="cohort", estimand_weights="x1"),
    "two-stage": lambda p: dte_dask.two_stage_did(p, covariates=["x1"]),
    "etwfe": lambda p: dte_dask.etwfe(p, control_group="never_treated"),
    "etwfe-cov": lambda p: dte_dask.etwfe(p, covariates=["x1"]),
}


def _same(a, b) -> None:
    for name in ("coef", "se", "cov"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.n_obs, a.n_units, a.n_clusters) == (b.n_obs, b.n_units, b.n_clusters)
    pd.testing.assert_frame_equal(a.other, b.other, check_exact=True)


def _run(fit, panel):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit(panel)


@pytest.mark.parametrize("case", list(CASES))
def test_identical_for_any_npartitions_and_row_order(frame, case):
    fit = CASES[case]
    ref = _run(fit, _panel(frame, 1))
    shuffled = frame.sample(frac=1.0, random_state=3)
    for k, df in ((4, shuffled), (9, frame)):
        _same(ref, _run(fit, _panel(df, k)))


def test_clustered_identical_across_partitions(frame):
    fit = CASES["imputation"]
    a = _run(fit, _panel(frame, 1, cluster="cl"))
    b = _run(fit, _panel(frame.sample(frac=1.0, random_state=5), 5, cluster="cl"))
    _same(a, b)
    assert a.n_clusters < a.n_units


def test_bacon_identical_for_any_npartitions(frame):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = dte_dask.bacon_decomposition(_panel(frame, 1, balanced=True))
        b = dte_dask.bacon_decomposition(_panel(frame.sample(frac=1.0, random_state=2), 6, balanced=True))
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame(), check_exact=True)
    assert (a.twfe, a.twfe_se) == (b.twfe, b.twfe_se)


def test_threaded_equals_distributed(frame):
    fits = [CASES["imputation"], CASES["etwfe"]]
    threaded = [_run(f, _panel(frame, 4)) for f in fits]
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None, processes=True) as cl, Client(cl):
        dist = [_run(f, _panel(frame, 4)) for f in fits]
    for a, b in zip(threaded, dist):
        _same(a, b)
