"""Result of :func:`dte_dask.continuous_did`: a dose-response curve (key ``dose``) or an event study
(key ``event_time``), with the overall ATT^o and ACRT^o."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from dte_dask.results.base import Result, pointwise_z


@dataclass(frozen=True, repr=False)
class ContDidResult(Result):
    estimator: str
    alpha: float
    key_name: str  # "dose" or "event_time"
    keys: np.ndarray
    est: np.ndarray
    V: np.ndarray
    se_main: np.ndarray  # bootstrap SE with the bootstrap, else analytic
    se_analytic: np.ndarray
    boot_draws: np.ndarray | None
    crit: float  # sup-t critical value of the uniform band (normal quantile without bootstrap)
    dose_grid: np.ndarray
    att_d: np.ndarray
    acrt_d: np.ndarray
    overall: dict[str, float]
    overall_se: dict[str, float]
    overall_se_analytic: dict[str, float]
    target: str
    n_units: int
    seed: int | None
    options: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    panel: dict[str, Any] = field(default_factory=dict)

    @property
    def result_kind(self) -> str:  # type: ignore[override]
        return "event_study" if self.key_name == "event_time" else "dose_response"

    result_kinds: ClassVar[tuple[str, ...]] = ("dose_response", "event_study")

    @property
    def estimates(self) -> np.ndarray:
        return self.est

    def vcov(self) -> np.ndarray:
        return self.V

    @property
    def draws(self) -> np.ndarray | None:
        return self.boot_draws

    def to_frame(self) -> pd.DataFrame:
        z = pointwise_z(self.alpha)
        se = self.se_main
        has_band = self.boot_draws is not None and bool(self.options.get("uniform_bands", True))
        band = self.crit * se if has_band else np.full(se.size, np.nan)
        df = pd.DataFrame({self.key_name: self.keys, "estimate": self.est, "se": se,
                           "ci_lower": self.est - z * se, "ci_upper": self.est + z * se,
                           "band_lower": self.est - band, "band_upper": self.est + band})
        if self.boot_draws is not None:
            df["se_analytic"] = self.se_analytic
        return df

    def event_study(self) -> Result:
        if self.key_name == "event_time":
            return self
        return super().event_study()

    def summary(self) -> str:
        name = "ATT" if self.target == "level" else "ACRT"
        head = ("Continuous-treatment DiD (Callaway, Goodman-Bacon & Sant'Anna 2024), "
                f"{'dose-response' if self.key_name == 'dose' else 'event study'} of {name}")
        lines = [head, "",
                 f"Overall ATT^o:  {self.overall['att']: .4f}  (se {self.overall_se['att']:.4f})",
                 f"Overall ACRT^o: {self.overall['acrt']: .4f}  (se {self.overall_se['acrt']:.4f})", ""]
        df = self.to_frame()
        lines.append(df.to_string(index=False, float_format=lambda v: f"{v: .4f}",
                                  max_rows=20 if self.key_name == "dose" else None))
        knots = f"{self.options.get('num_knots')} interior knots"
        if self.options.get("dose_method") == "cck":
            knots = (f"{self.options.get('cck_segments')} segments chosen by CCK's Lepski test among "
                     f"{self.options.get('cck_segments_searched')} (honest uniform band)")
        lines.append(f"\n{self.n_units} units; B-spline degree {self.options.get('degree')}, "
                     f"{knots}; control group: {self.options.get('control_group')}")
        return "\n".join(lines)

    def overall_frame(self) -> pd.DataFrame:
        """The overall parameters ATT^o and ACRT^o (rows ``parameter``) with ``estimate``, ``se``
        and the pointwise interval ``ci_lower``/``ci_upper``; the report shows this table."""
        z = pointwise_z(self.alpha)
        est = np.array([self.overall["att"], self.overall["acrt"]], float)
        se = np.array([self.overall_se["att"], self.overall_se["acrt"]], float)
        return pd.DataFrame({"parameter": ["ATT^o", "ACRT^o"], "estimate": est, "se": se,
                             "ci_lower": est - z * se, "ci_upper": est + z * se})

    def plot(self, kind: str | None = None, *, backend: str = "bokeh", **kwargs: Any) -> Any:
        """The curve (ATT(d) / ACRT(d), or by event time) with its pointwise interval and uniform band
        (:func:`dte_dask.plotting.plot_curve`): a bokeh figure (the default) or, with
        ``backend="matplotlib"``, an Axes."""
        from dte_dask.plotting import plot_curve

        name = "ATT" if self.target == "level" else "ACRT"
        title = kwargs.pop("title", f"{name}({'d' if self.key_name == 'dose' else 'e'}) with "
                                    f"{round((1 - self.alpha) * 100)}% bands")
        return plot_curve(self.to_frame(), key=self.key_name, backend=backend, title=title, ylabel=name, **kwargs)
