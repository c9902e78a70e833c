"""Fit a job spec's estimators as the runner does (``load_job_panel`` once, ``fit_estimator`` for
each), without the cluster, monitor and reports of ``run_job``.

Used by the job tests of the estimator families (test_robust_did_jobs, test_continuous_did_jobs,
test_etwfe_r, test_did_multiplegt_options).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import yaml

from dte_dask.jobs.runner import fit_estimator, load_job_panel
from dte_dask.jobs.spec import parse_job

MPDTA_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "jobs" / "mpdta_local.yaml"


def mpdta_job(tmp_path: Path, estimators: list[dict]) -> dict:
    """The bundled mpdta example job with these estimators, writing under ``tmp_path``."""
    job = yaml.safe_load(MPDTA_EXAMPLE.read_text())
    job["estimators"] = estimators
    job["output"] = str(tmp_path / "out")
    return job


def fit_job(job: dict) -> dict[str, Any]:
    """Every estimator of the (parsed) job on its panel, by estimator name; warnings silenced."""
    spec = parse_job(job)
    panel = load_job_panel(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {est.name: fit_estimator(spec, est, panel) for est in spec.estimators}
