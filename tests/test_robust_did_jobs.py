"""The issue-14 estimators in job specs: options validated by their models, run as the job runner
calls them (a loaded Panel plus the job's options), results saved."""
from __future__ import annotations

from pathlib import Path

import pytest

from dte_dask.exceptions import SpecError
from dte_dask.jobs.spec import parse_job
from dte_dask.report import save_results
from tests.job_fits import fit_job, mpdta_job

ESTIMATORS = [
    {"kind": "imputation_did", "options": {"pretrends": 1, "aux_partition": "cohort", "leave_out": True}},
    {"kind": "two_stage_did", "options": {"horizons": [0, 1]}},
    {"kind": "etwfe", "options": {"control_group": "never_treated"}},
    {"kind": "bacon_decomposition"},
]


def test_jobs_run_the_new_estimators(tmp_path: Path) -> None:
    results = fit_job(mpdta_job(tmp_path, ESTIMATORS))
    assert list(results["two_stage_did"].event_time) == [0, 1]
    assert results["imputation_did"].event_time[0] == -1
    summary = save_results(results, tmp_path / "saved")
    assert set(summary["estimators"]) == {e["kind"] for e in ESTIMATORS}


@pytest.mark.parametrize("est", [
    {"kind": "imputation_did", "options": {"aux_partition": "unit"}},
    {"kind": "imputation_did", "options": {"pretrends": -1}},
    {"kind": "etwfe", "options": {"control_group": "last_treated"}},
    {"kind": "bacon_decomposition", "options": {"window": [-1, 1]}},
])
def test_bad_options_are_refused(tmp_path: Path, est) -> None:
    with pytest.raises(SpecError):
        parse_job(mpdta_job(tmp_path, [est]))
