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
        lines.append(f"\n{self.n_units} units; B-spline degree {self.options.get('degree')}, "
                     f"{self.options.get('num_knots')} interior knots; control group: {self.options.get('control_group')}")
        return "\n".join(lines)

    def plot(self, kind: str | None = None, *, backend: str = "bokeh", **kwargs: Any) -> Any:
        """The curve (ATT(d) / ACRT(d), or by event time) with its pointwise interval and uniform band.

        ``backend="bokeh"`` (a figure, the default of every result) or ``"matplotlib"`` (an Axes)."""
        df = self.to_frame()
        x = df[self.key_name].to_numpy(float)
        name = "ATT" if self.target == "level" else "ACRT"
        xlabel = "dose" if self.key_name == "dose" else "event time"
        title = kwargs.pop("title", f"{name}({'d' if self.key_name == 'dose' else 'e'}) with "
                                    f"{round((1 - self.alpha) * 100)}% bands")
        if backend == "bokeh":
            from bokeh.plotting import figure

            fig = figure(title=title, x_axis_label=xlabel, y_axis_label=name, width=kwargs.get("width", 700),
                         height=kwargs.get("height", 400))
            if np.isfinite(df["band_lower"]).any():
                fig.varea(x=x, y1=df["band_lower"], y2=df["band_upper"], fill_alpha=0.15, legend_label="uniform band")
            fig.varea(x=x, y1=df["ci_lower"], y2=df["ci_upper"], fill_alpha=0.3, legend_label="pointwise")
            fig.line(x, df["estimate"], line_width=2, legend_label=name)
            return fig
        import matplotlib.pyplot as plt

        ax = kwargs.get("ax") or plt.subplots(figsize=(7, 4))[1]
        if np.isfinite(df["band_lower"]).any():
            ax.fill_between(x, df["band_lower"], df["band_upper"], alpha=0.15, label="uniform band")
        ax.fill_between(x, df["ci_lower"], df["ci_upper"], alpha=0.3, label="pointwise interval")
        ax.plot(x, df["estimate"], lw=2, label=name)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(name)
        ax.set_title(title)
        ax.legend()
        return ax
