"""The one formatter of period and cohort labels as plain Python values (numpy only).

Every layer that shows a label (error messages, coefficient names, summaries, results) uses
:func:`plain`, so a date reads the same everywhere.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def plain(v: Any) -> Any:
    """A numpy scalar as a plain Python value; tuples element-wise.

    A ``datetime64`` becomes its ISO text at the precision it needs (``2020-01-01`` for a date at
    midnight, ``2020-01-01T06:00`` otherwise; ``.item()`` of a ``datetime64[ns]`` would be an
    integer count of nanoseconds).
    """
    if isinstance(v, tuple):
        return tuple(plain(x) for x in v)
    if isinstance(v, np.datetime64):
        return str(np.datetime_as_string(v, unit="auto"))
    return v.item() if hasattr(v, "item") else v
