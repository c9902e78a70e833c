"""Identification checks: pre-trends, placebo adoption dates, randomization inference, balance.

Each check returns an immutable result with ``summary()``, ``to_frame()`` and ``plot()``::

    from dte_dask import checks
    checks.pretrend_check(res)                                   # Wald + band covers zero before adoption
    checks.placebo_check(df, outcome=..., unit=..., time=..., group=...)        # fake earlier dates
    checks.randomization_check(df, ..., n_perm=999, seed=1)      # permute cohort labels across units
    checks.balance_check(df, ..., covariates=["age", "bmi"])     # SMD by cohort vs controls

The placebo and randomization checks take the estimator to check: ``att_gt`` with
``est_method="dr" | "ipw" | "reg"`` (the default ``dr``, with or without covariates; the numbers are
``att_gt``'s on the modified data), or ``estimator="event_study" | "stacked_did" | "sun_abraham"``
(the estimator itself run on each modified panel; ``estimator_options`` passes its options)::

    checks.placebo_check(df, ..., covariates=["age"], est_method="ipw")
    checks.randomization_check(df, ..., estimator="stacked_did", estimator_options={"window": (-2, 2)})

The data-based checks run their many re-estimations as parallel dask tasks on the active
scheduler (a ``Client`` if one is active; none is created here).
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "pretrend_check": "dte_dask.checks.pretrends",
    "PretrendResult": "dte_dask.checks.pretrends",
    "placebo_check": "dte_dask.checks.placebo",
    "PlaceboResult": "dte_dask.checks.placebo",
    "randomization_check": "dte_dask.checks.randomization",
    "RandomizationResult": "dte_dask.checks.randomization",
    "balance_check": "dte_dask.checks.balance",
    "BalanceResult": "dte_dask.checks.balance",
    "CheckResult": "dte_dask.checks._base",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dte_dask.checks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
