"""Moved to :mod:`dte_dask.results.regression`; kept as an import path for compatibility."""
from dte_dask.results.regression import RegressionResult

__all__ = ["RegressionResult"]
