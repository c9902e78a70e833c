"""Errors and warnings raised by dte_dask.

Every message names the column, unit or period at fault, so that a user can fix the input
without reading a traceback from inside pandas or dask.
"""
from __future__ import annotations

from collections.abc import Iterable

from dte_dask.core.errors import (
    DegenerateCellWarning,
    DteDaskError,
    DteDaskWarning,
    EstimationError,
    NuisanceFitWarning,
)
from dte_dask.core.labels import plain

__all__ = [
    "ColumnTypeError", "DegenerateCellWarning", "DteDaskError", "DteDaskWarning", "DuplicateRowsError",
    "EstimationError", "GroupError", "MissingColumnError", "MissingValuesError", "NoControlGroupError",
    "NuisanceFitWarning", "PanelError", "PanelWarning", "PeriodError", "SpecError", "WorkersPausedError",
    "examples",
]


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


class WorkersPausedError(DteDaskError, RuntimeError):
    """Every worker stayed paused by its memory limit, so the job could not go on."""


class PanelWarning(DteDaskWarning):
    """The panel was changed on load, as R `did` does (dropped units, balancing)."""


def examples(values: Iterable[object], k: int = 5) -> str:
    """Format up to ``k`` example values for an error message."""
    vals = list(values)
    shown = ", ".join(repr(plain(v)) for v in vals[:k])
    more = f", ... ({len(vals)} in all)" if len(vals) > k else ""
    return f"[{shown}{more}]"

