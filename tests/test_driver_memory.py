"""Invariant 2: no per-unit array ever reaches the driver; it only receives K-sized statistics,
K'xK' Gram matrices and BxK' draws."""
from __future__ import annotations

import pytest
from distributed import Client, LocalCluster

import dte_dask
from tests.driver_spy import spy_on_driver

N_UNITS = 5003  # distinctive, larger than K, K', B


@pytest.mark.parametrize("est_method,covariates", [("dr", None), ("dr", ["age", "bmi"]), ("ipw", ["age"])])
def test_driver_receives_no_unit_length_array(monkeypatch, est_method, covariates):
    df = dte_dask.simulate_panel(N_UNITS, 6, seed=1).data.compute(scheduler="synchronous")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cl, Client(cl):
        panel = dte_dask.load_panel(df, unit="unit", time="time", outcome="y", group="group",
                                    covariates=covariates or (), npartitions=3, rng_block_size=512)
        seen = spy_on_driver(monkeypatch)
        res = dte_dask.att_gt(panel, est_method=est_method, n_boot=99, seed=1)
        res.aggregate("dynamic")
    assert seen, "the spy saw no computation"
    # every partition holds >= 1536 units; the driver may only see K-, K'- and B-sized axes (< 1000)
    assert max(max(s, default=0) for s in seen) < 1000, sorted(seen, key=max)[-3:]
    assert res.n_units == N_UNITS
