"""Sensitivity analysis of event studies: HonestDiD (Rambachan & Roth 2023) and pre-test power (Roth 2022).

Pure driver-side algebra on (betahat, Sigma) read through the result protocol: numpy and scipy, no
dask. The results are check results (:class:`dte_dask.checks.CheckResult`: ``summary``,
``to_frame``, ``plot``), so jobs, ``save_results`` and the report handle them as the other checks
(docs/sensitivity.md).
"""
from __future__ import annotations

from dte_dask.sensitivity.honest import HonestDiDResult, honest_did
from dte_dask.sensitivity.inputs import event_study_inputs
from dte_dask.sensitivity.pretest import PretestPowerResult, pretest_power

__all__ = ["HonestDiDResult", "PretestPowerResult", "event_study_inputs", "honest_did", "pretest_power"]
