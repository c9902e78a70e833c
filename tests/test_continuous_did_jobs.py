"""continuous_did in a job spec: options validated by its model, run as the job runner calls it (a
loaded Panel with the dose among its covariates, plus the job's options), results saved."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import dte_dask
from dte_dask.exceptions import SpecError
from dte_dask.jobs.spec import parse_job
from dte_dask.report import save_results
from tests.job_fits import fit_job

moderndid = pytest.importorskip("moderndid")


def _job(tmp_path: Path, estimators) -> dict:
    csv = tmp_path / "dose.csv"
    if not csv.exists():
        moderndid.gen_cont_did_data(n=200, seed=4).to_pandas().to_csv(csv, index=False)
    return {"data": {"source": str(csv), "unit": "id", "time": "time_period", "outcome": "Y", "group": "G",
                     "covariates": ["D"]},
            "inference": {"n_boot": 99, "seed": 3}, "estimators": estimators, "output": str(tmp_path / "out")}


def test_job_runs_continuous_did(tmp_path: Path) -> None:
    ests = [{"kind": "continuous_did", "name": "dose", "options": {"dose": "D", "target": "slope", "num_knots": 1}},
            {"kind": "continuous_did", "name": "es", "options": {"aggregation": "eventstudy"}}]
    results = fit_job(_job(tmp_path, ests))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pandas as pd

        direct = dte_dask.continuous_did(pd.read_csv(tmp_path / "dose.csv"), outcome="Y", unit="id",
                                         time="time_period", group="G", dose="D", target="slope", num_knots=1,
                                         n_boot=99, seed=3)
    np.testing.assert_allclose(results["dose"].estimates, direct.estimates, rtol=0, atol=1e-12)
    np.testing.assert_allclose(results["dose"].to_frame()["se"], direct.to_frame()["se"], rtol=1e-12)
    assert list(results["es"].to_frame()["event_time"]) == [-2, -1, 0, 1, 2]
    summary = save_results(results, tmp_path / "saved")
    assert set(summary["estimators"]) == {"dose", "es"}
    assert (tmp_path / "saved" / "estimators" / "dose.csv").exists()


@pytest.mark.parametrize("options", [{"dose_method": "kernel"}, {"target": "ATT"}, {"aggregation": "group"},
                                     {"bogus": 1}])
def test_bad_options_are_refused(tmp_path: Path, options) -> None:
    with pytest.raises(SpecError):
        parse_job(_job(tmp_path, [{"kind": "continuous_did", "options": options}]))
