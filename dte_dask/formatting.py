"""Display helpers shared by results, checks, plots and reports: one table formatter, one value
formatter for labels (dates without a midnight time part), one converter to plain Python values."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["format_table", "format_label", "plain"]


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
    """A period or cohort label for display (dates without a midnight time part)."""
    if isinstance(v, (pd.Timestamp, np.datetime64)):
        ts = pd.Timestamp(v)
        return str(ts.date()) if ts == ts.normalize() else str(ts)
    return str(v)


def plain(v: Any) -> Any:
    """A numpy scalar as a plain Python value; a ``datetime64`` as its ``YYYY-MM-DD`` text."""
    if isinstance(v, np.datetime64):
        return str(np.datetime_as_string(v, unit="D"))
    return v.item() if hasattr(v, "item") else v
