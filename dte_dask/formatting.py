"""Display helpers shared by results, checks, plots and reports: one table formatter, one value
formatter for labels (through the one date formatter, :func:`dte_dask.core.labels.plain`)."""
from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd

from dte_dask.core.labels import plain

__all__ = ["format_table", "format_label", "plain", "SummaryText"]


def format_table(df: pd.DataFrame, floatfmt: str = "{:.4f}") -> str:
    """A frame as right-aligned text columns (floats with ``floatfmt``), as R ``did`` prints tables."""
    cols = list(df.columns)
    rows = [[floatfmt.format(v) if isinstance(v, (float, np.floating)) else str(v) for v in r]
            for r in df.itertuples(index=False)]
    widths = [max(len(str(c)), *(len(r[i]) for r in rows)) if rows else len(str(c)) for i, c in enumerate(cols)]

    def line(vals: list[Any]) -> str:
        return "  ".join(str(v).rjust(w) for v, w in zip(vals, widths))

    return "\n".join([line(cols), *(line(r) for r in rows)])


def format_label(v: Any) -> str:
    """A period or cohort label for display: :func:`dte_dask.core.labels.plain` as text (a date
    without a midnight time part)."""
    return str(plain(v.to_datetime64() if hasattr(v, "to_datetime64") else v))


class SummaryText:
    """``str``, ``repr`` and the notebook view of an object, all from its ``summary()`` text."""

    def summary(self) -> str:  # pragma: no cover - defined by the subclass
        raise NotImplementedError

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(self.summary())}</pre>"
