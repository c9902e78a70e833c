"""The result of ``bacon_decomposition``: the 2x2 comparisons of a TWFE coefficient, on the protocol.

A decomposition is not an estimator of effects by event time: its ``to_frame()`` has one row per 2x2
comparison, keyed by ``type``, ``treated`` and ``control``, with the canonical columns (``estimate``
the 2x2 DiD; ``se``, intervals and band NaN: the decomposition reports no sampling uncertainty of its
pieces) and ``weight`` (the comparison's share of the TWFE coefficient), ``n_treated``, ``n_control``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from dte_dask.core.bacon import TYPES
from dte_dask.exceptions import EstimationError, SpecError
from dte_dask.formatting import format_table
from dte_dask.results.base import Result

__all__ = ["BaconResult", "BACON_KEYS"]

BACON_KEYS = ("type", "treated", "control")


@dataclass(frozen=True, repr=False)
class BaconResult(Result):
    """The 2x2 comparisons, their weights and the TWFE coefficient they decompose.

    Attributes
    ----------
    twfe, twfe_se : the TWFE coefficient on the treatment dummy and its CRV1 standard error
        (pyfixest's default small-sample factor, clustered by unit or ``cluster``)
    comparisons : DataFrame with ``type``, ``treated``, ``control`` (group labels as strings;
        "never_treated" for the untreated bucket), ``estimate``, ``weight`` (summing to one), ``n_treated``,
        ``n_control`` (units)
    """

    twfe: float
    twfe_se: float
    comparisons: pd.DataFrame
    n_units: int
    n_periods: int
    options: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    alpha: float = 0.05
    estimator: str = "bacon_decomposition"

    result_kind: ClassVar[str] = "decomposition"

    @property
    def estimates(self) -> np.ndarray:
        """(K,) the 2x2 DiD estimates, in the row order of :meth:`to_frame`."""
        return self.comparisons["estimate"].to_numpy(dtype=float, copy=True)

    @property
    def weights(self) -> np.ndarray:
        """(K,) the weights of the comparisons (summing to one)."""
        return self.comparisons["weight"].to_numpy(dtype=float, copy=True)

    def vcov(self) -> np.ndarray:
        """Not defined: the decomposition has no sampling covariance of its 2x2 estimates.

        Raises
        ------
        EstimationError
            Always, saying so; ``twfe_se`` is the CRV1 standard error of the TWFE coefficient.
        """
        raise EstimationError("bacon_decomposition reports no covariance of its 2x2 estimates (it decomposes "
                              "the TWFE coefficient; its standard error is `twfe_se`)")

    @property
    def weighted_sum(self) -> float:
        """Sum of weight x estimate over the comparisons: the TWFE coefficient (Theorem 1)."""
        return float(np.sum(self.weights * self.estimates))

    def by_type(self) -> pd.DataFrame:
        """Total weight and weighted mean estimate per comparison type."""
        rows = []
        for kind in TYPES:
            c = self.comparisons[self.comparisons["type"] == kind]
            w = float(c["weight"].sum())
            est = float((c["weight"] * c["estimate"]).sum() / w) if w > 0 else np.nan
            rows.append({"type": kind, "weight": w, "estimate": est, "n_comparisons": len(c)})
        return pd.DataFrame(rows)

    def to_frame(self) -> pd.DataFrame:
        """The canonical frame: keys ``type``, ``treated``, ``control``; ``estimate``; ``se``,
        ``ci_lower``, ``ci_upper``, ``band_lower``, ``band_upper`` (NaN: no sampling uncertainty is
        reported for a 2x2 piece); ``weight``; ``n_treated``, ``n_control``."""
        c = self.comparisons
        nan = np.full(len(c), np.nan)
        return pd.DataFrame({**{k: c[k].to_numpy() for k in BACON_KEYS}, "estimate": c["estimate"].to_numpy(float),
                             "se": nan, "ci_lower": nan, "ci_upper": nan, "band_lower": nan, "band_upper": nan,
                             "weight": c["weight"].to_numpy(float), "n_treated": c["n_treated"].to_numpy(),
                             "n_control": c["n_control"].to_numpy()})

    def pretrend_test(self) -> dict[str, Any]:
        """Not defined: a decomposition has no estimates by event time (raises :class:`SpecError`)."""
        raise SpecError("bacon_decomposition has no estimates by event time to test for pre-trends; "
                        "run event_study or att_gt for a pre-trend test")

    def summary(self) -> str:
        by = self.by_type().rename(columns={"type": "Comparison", "weight": "Weight", "estimate": "Avg. estimate",
                                            "n_comparisons": "2x2 DiDs"})
        return "\n".join([
            "Goodman-Bacon (2021) decomposition of the TWFE coefficient",
            f"TWFE = {self.twfe:.6g} (SE {self.twfe_se:.4g}); weighted sum of 2x2 DiDs = {self.weighted_sum:.6g}",
            format_table(by), "---",
            f"{len(self.comparisons)} comparisons; units: {self.n_units}, periods: {self.n_periods}"])

    def plot(self, kind: str | None = None, *, backend: str = "matplotlib", ax: Any = None, **kwargs: Any) -> Any:
        """Scatter of the 2x2 estimates against their weights, one marker per comparison type, with the
        TWFE coefficient as a horizontal line (matplotlib Axes; ``ax`` to draw into)."""
        if kind not in (None, "scatter") or backend != "matplotlib":
            raise SpecError(f"a Bacon decomposition is drawn as a scatter with backend='matplotlib' "
                            f"(got kind={kind!r}, backend={backend!r})")
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        markers = {"treated_vs_never": "o", "earlier_vs_later": "^", "later_vs_earlier": "s"}
        for t in TYPES:
            c = self.comparisons[self.comparisons["type"] == t]
            if len(c):
                ax.scatter(c["weight"], c["estimate"], marker=markers[t], label=t.replace("_", " "), **kwargs)
        ax.axhline(self.twfe, color="black", linewidth=0.8, linestyle="--", label=f"TWFE = {self.twfe:.4g}")
        ax.set_xlabel("weight")
        ax.set_ylabel("2x2 DiD estimate")
        ax.legend(frameon=False, fontsize="small")
        return ax
