"""Results of every estimator, one protocol (:mod:`dte_dask.results.base`).

:class:`AttgtResult` (ATT(g,t) cells) and :class:`AggregateResult` (their aggregations, the
algebra in :mod:`dte_dask.results.aggregate`), :class:`RegressionResult` (event-time coefficients of
the regression estimators), :class:`BaconResult` (the 2x2 comparisons of a TWFE coefficient). This package imports no estimator.
"""
from dte_dask.results.attgt import AggregateResult, AttgtResult
from dte_dask.results.bacon import BaconResult
from dte_dask.results.base import (
           EXTRA_COLUMNS,
           KEY_COLUMNS,
           SCHEMA,
           Result,
           no_pretest_reason,
)
from dte_dask.results.regression import RegressionResult

__all__ = ["Result", "AttgtResult", "AggregateResult", "RegressionResult", "BaconResult", "SCHEMA", "KEY_COLUMNS",
           "EXTRA_COLUMNS", "no_pretest_reason"]
