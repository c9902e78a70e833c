"""Errors and warnings raised by dte_dask.

Every message names the column, unit or period at fault, so that a user can fix the input
without reading a traceback from inside pandas or dask.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class DteDaskError(Exception):
    """Base class of all dte_dask errors."""


class PanelError(DteDaskError, ValueError):
    """The panel handed to dte_dask is not usable as it is."""


class MissingColumnError(PanelError, KeyError):
    """A column named in the call is not in the data."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ColumnTypeError(PanelError, TypeError):
    """A column has a dtype the estimator cannot use (e.g. a non-numeric outcome)."""


class DuplicateRowsError(PanelError):
    """The same (unit, time) pair appears more than once."""


class GroupError(PanelError):
    """The treatment timing is inconsistent (varying group, non-absorbing treatment...)."""


class NoControlGroupError(PanelError):
    """No never-treated and no not-yet-treated units are available as controls."""


class MissingValuesError(PanelError):
    """A column that must be complete has missing values."""


class PeriodError(PanelError):
    """The time column cannot be mapped to ordered periods."""


class SpecError(DteDaskError, ValueError):
    """An option passed to an estimator or a job spec is invalid."""


class EstimationError(DteDaskError, RuntimeError):
    """The estimator could not produce a result (e.g. every cell is degenerate)."""


class DteDaskWarning(UserWarning):
    """Base class of dte_dask warnings (dropped units, degenerate cells, ...)."""


class DegenerateCellWarning(DteDaskWarning):
    """An ATT(g,t) cell could not be estimated and is reported as NaN."""


class NuisanceFitWarning(DteDaskWarning):
    """A nuisance fit of an ATT(g,t) cell (the propensity-score logit) met a numerical problem
    (no convergence, fitted probabilities numerically 0 or 1); the estimate is kept, as R does."""


class PanelWarning(DteDaskWarning):
    """The panel was changed on load, as R `did` does (dropped units, balancing)."""


def examples(values: Iterable[object], k: int = 5) -> str:
    """Format up to ``k`` example values for an error message."""
    vals = list(values)
    shown = ", ".join(repr(_plain(v)) for v in vals[:k])
    more = f", ... ({len(vals)} in all)" if len(vals) > k else ""
    return f"[{shown}{more}]"


def _plain(v: object) -> object:
    """A numpy scalar as a plain Python value (dates as ISO strings); tuples element-wise."""
    if isinstance(v, tuple):
        return tuple(_plain(x) for x in v)
    if isinstance(v, np.datetime64):
        return str(np.datetime_as_string(v, unit="auto"))
    return v.item() if hasattr(v, "item") else v
