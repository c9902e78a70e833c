"""The issue-14 estimators never bring a per-unit array to the driver: everything dask computes for
them is sized by periods, cohorts, cells or targets (the invariant of tests/test_driver_memory.py)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import dte_dask
from tests.driver_spy import spy_on_driver

N_UNITS = 5003  # distinctive, far larger than any period, cohort, cell or target axis


FITS = {
    "imputation_did": lambda p: dte_dask.imputation_did(p, covariates=["x1"], pretrends=2),
    "two_stage_did": lambda p: dte_dask.two_stage_did(p, pretrends=2),
    "etwfe": lambda p: dte_dask.etwfe(p, covariates=["x1"]),
    "bacon_decomposition": lambda p: dte_dask.bacon_decomposition(p),
}


@pytest.fixture(scope="module")
def frame():
    df = dte_dask.simulate_panel(N_UNITS, 6, seed=1).data.compute(scheduler="sync")
    df["x1"] = np.random.default_rng(0).normal(size=len(df))
    return df


@pytest.mark.parametrize("name", list(FITS))
def test_driver_receives_no_unit_length_array(monkeypatch, frame, name):
    panel = dte_dask.load_panel(frame, unit="unit", time="time", outcome="y", group="group", covariates=["x1"],
                                npartitions=3, rng_block_size=512)
    seen = spy_on_driver(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = FITS[name](panel)
    assert seen, "the spy saw no computation"
    assert max(max(s, default=0) for s in seen) < 1000, sorted(seen, key=max)[-3:]
    assert res.n_units == N_UNITS
