"""The error and warning base classes the numeric core raises (standard library only).

:mod:`dte_dask.exceptions` re-exports them with the rest of the package's errors, so that users
catch ``dte_dask.exceptions.EstimationError`` whichever layer raised it, while ``core`` imports
nothing above itself.
"""
from __future__ import annotations


class DteDaskError(Exception):
    """Base class of all dte_dask errors."""


class EstimationError(DteDaskError, RuntimeError):
    """The estimator could not produce a result (e.g. every cell is degenerate)."""


class DteDaskWarning(UserWarning):
    """Base class of dte_dask warnings (dropped units, degenerate cells, ...)."""


class DegenerateCellWarning(DteDaskWarning):
    """An ATT(g,t) cell could not be estimated and is reported as NaN."""


class NuisanceFitWarning(DteDaskWarning):
    """A nuisance fit of an ATT(g,t) cell (the propensity-score logit) met a numerical problem
    (no convergence, fitted probabilities numerically 0 or 1); the estimate is kept, as R does."""
