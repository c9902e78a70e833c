"""dte_dask: Dask-native dynamic treatment effects (staggered difference-in-differences).

The public API is imported lazily (PEP 562) so that ``import dte_dask`` stays cheap and starts no
cluster: nothing here creates a ``Client`` or writes a file.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any

from dte_dask import config as _config  # noqa: F401  (registers dask.config defaults)

__version__ = "0.1.0"

_LAZY = {
    "load_panel": "dte_dask.panel.load",
    "Panel": "dte_dask.panel.panel",
    "PanelSpec": "dte_dask.panel.spec",
    "simulate_panel": "dte_dask.simulate",
    "att_gt": "dte_dask.estimators.cs",
    "datasets": "dte_dask.datasets",
    "event_study": "dte_dask.estimators.event_study",
    "stacked_did": "dte_dask.estimators.stacked",
    "sun_abraham": "dte_dask.estimators.sun_abraham",
    "did_multiplegt": "dte_dask.estimators.did_multiplegt",
    "twowayfeweights": "dte_dask.estimators.twowayfeweights",
    "bacon_decomposition": "dte_dask.estimators.bacon",
    "imputation_did": "dte_dask.estimators.imputation",
    "two_stage_did": "dte_dask.estimators.two_stage",
    "etwfe": "dte_dask.estimators.etwfe",
    "triple_did": "dte_dask.estimators.triple_did",
    "continuous_did": "dte_dask.estimators.continuous_did",
    "compare_estimators": "dte_dask.estimators.compare",
    "honest_did": "dte_dask.sensitivity.honest",
    "pretest_power": "dte_dask.sensitivity.pretest",
    "checks": "dte_dask.checks",
    "plotting": "dte_dask.plotting",
    "disclosure": "dte_dask.disclosure",
    "report": "dte_dask.report",
    "list_estimators": "dte_dask.registry",
    "register_estimator": "dte_dask.registry",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return module if _LAZY[name] == f"dte_dask.{name}" else getattr(module, name)
    registry = sys.modules.get("dte_dask.registry")
    entry = registry.registered(name) if registry is not None else None
    if entry is not None:  # an estimator registered by its own module (dte_dask.registry)
        return entry.fn
    raise AttributeError(f"module 'dte_dask' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
