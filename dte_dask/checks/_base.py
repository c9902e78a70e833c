"""The common face of check results: ``summary()`` drives ``__str__`` and ``_repr_html_``."""
from __future__ import annotations

from typing import Any, ClassVar

import pandas as pd

from dte_dask.formatting import SummaryText


class CheckResult(SummaryText):
    """Mixin for the frozen check-result dataclasses.

    Subclasses define ``check_kind`` (the report's dispatch key), ``summary()``, ``to_frame()``
    (the main table), ``frames()`` (every table worth saving, ``"table"`` first), ``facts()``
    (scalars for ``summary.json``) and ``plot()``.
    """

    check_kind: ClassVar[str] = ""
    save_plots: ClassVar[bool] = False  # save_results writes plot() as HTML and PNG next to the tables

    def summary(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_frame(self) -> pd.DataFrame:  # pragma: no cover - abstract
        raise NotImplementedError

    def frames(self) -> dict[str, pd.DataFrame]:
        return {"table": self.to_frame()}

    def facts(self) -> dict[str, Any]:
        """Scalars worth recording in ``summary.json`` beyond the tables (none by default)."""
        return {}

    def plot(self, *, backend: str = "bokeh") -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

