"""Run diagnosis: per-stage wall time, CPU seconds, peak memory, spilled and transferred bytes and
task statistics from Dask's own instrumentation (:mod:`.monitor`), classified with concrete tuning
advice (:mod:`.classify`), plus core-hours and cost.

``from dte_dask.diagnose import RunMonitor`` is cheap: the submodules load on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "RunMonitor": "dte_dask.diagnose.monitor",
    "StageMetrics": "dte_dask.diagnose.classify",
    "Finding": "dte_dask.diagnose.classify",
    "classify_stage": "dte_dask.diagnose.classify",
    "diagnose_run": "dte_dask.diagnose.classify",
    "format_diagnosis": "dte_dask.diagnose.classify",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dte_dask.diagnose' has no attribute {name!r}")
