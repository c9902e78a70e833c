"""Line up the dynamic effects of several estimators on one panel: ``compare_estimators``.

Callaway–Sant'Anna's dynamic aggregation, the TWFE event study, stacked DiD and Sun–Abraham all
report effects by event time; under heterogeneous effects they differ (the TWFE event study is the
one known to be biased). The comparison puts them side by side with the correlation between them.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dte_dask import registry
from dte_dask.estimators.event_study import check_window, clip_window, resolve_panel
from dte_dask.exceptions import DteDaskWarning, SpecError
from dte_dask.formatting import format_table


def comparable() -> tuple[str, ...]:
    """The registered estimators that declare how to run in a comparison (``compare=``)."""
    return tuple(e.name for e in registry.list_estimators() if e.compare is not None)


@dataclass(frozen=True)
class EstimatorComparison:
    """Dynamic effects of several estimators by event time, and their correlation.

    Attributes
    ----------
    table : frame with ``event_time`` and, per estimator ``<name>``, ``<name>_estimate`` and ``<name>_se``
        (NaN where an estimator has no estimate; binned event-study endpoints are left out).
    correlation : Pearson correlation of the estimators' coefficients over the event times that all
        of them estimate (reference period excluded).
    results : the underlying result objects.
    """

    table: pd.DataFrame
    correlation: pd.DataFrame
    results: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        common = self.table.dropna()
        return "\n".join(["Dynamic effects by estimator", format_table(self.table), "",
                          f"Correlation of the coefficients over the {len(common)} event times all estimate:",
                          format_table(self.correlation.reset_index(names=""))])

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        return f"<pre>{self.summary()}</pre>"


def compare_estimators(
    data: Any,
    *,
    outcome: str | None = None,
    unit: str | None = None,
    time: str | None = None,
    group: str | None = None,
    window: tuple[int, int] = (-3, 3),
    estimators: Sequence[str] | None = None,
    weights: str | None = None,
    cluster: str | None = None,
    allow_unbalanced_panel: bool | None = None,
    npartitions: int | None = None,
) -> EstimatorComparison:
    """Run the chosen estimators on one panel and line up their effects for event times in ``window``.

    ``estimators``: registered names (default: every estimator that declares ``compare`` in the
    registry, :func:`comparable`); each runs as its registration's ``compare(panel, window)`` says:
    ``att_gt``: ``att_gt(control_group="never_treated", base_period="universal", bootstrap=False)
    .aggregate("dynamic", min_e=K, max_e=L)`` (universal base: pre-periods are comparable with the
    regressions' reference -1); ``event_study``: window with binned endpoints; ``stacked_did``:
    window, not-yet-treated clean controls; ``sun_abraham``: never-treated controls, all event times.
    A window reaching beyond the panel's event times is clipped to them by the event study and
    stacked DiD (each warns); one with no overlap raises :class:`SpecError` before any fit.
    """
    check_window(window)
    offered = comparable()
    estimators = offered if estimators is None else tuple(estimators)
    unknown = [e for e in estimators if e not in offered]
    if unknown or not estimators:
        raise SpecError(f"estimators={list(estimators)!r}: choose among {list(offered)}")
    panel, _ = resolve_panel(data, outcome=outcome, unit=unit, time=time, group=group, covariates=None,
                             weights=weights, cluster=cluster, allow_unbalanced_panel=allow_unbalanced_panel,
                             npartitions=npartitions)
    with warnings.catch_warnings():  # the estimators that size anything by the window clip it and warn
        warnings.simplefilter("ignore", DteDaskWarning)
        clip_window(panel, window)  # a window with no overlap: one SpecError here, before any fit
    return line_up({name: registry.get(name).compare_fn(panel, window) for name in estimators}, window=window)


def line_up(results: Mapping[str, Any], window: tuple[int, int] | None = None) -> EstimatorComparison:
    """Put already computed results side by side: each result's estimates by event time
    (``result.event_study()``: itself, or an ATT(g,t) result's dynamic aggregation), or canonical
    frames (``event_time``, ``estimate``, ``se``)."""
    frames = []
    for name, res in results.items():
        f = _effects(res)
        if window is not None:
            f = f[(f["event_time"] >= window[0]) & (f["event_time"] <= window[1])]
        frames.append(f.rename(columns={"estimate": f"{name}_estimate", "se": f"{name}_se"}).set_index("event_time"))
    table = pd.concat(frames, axis=1).sort_index().reset_index()
    est = table.set_index("event_time")[[f"{n}_estimate" for n in results]]
    est.columns = list(results)
    common = est.dropna()
    common = common[common.index != -1] if len(common) else common
    corr = common.corr() if len(common) >= 2 else pd.DataFrame(np.nan, index=est.columns, columns=est.columns)
    return EstimatorComparison(table=table, correlation=corr, results=dict(results))


def _effects(res: Any) -> pd.DataFrame:
    """event_time, estimate, se of a result; reference rows and binned endpoints are left out."""
    if isinstance(res, pd.DataFrame):
        df = res
    elif callable(getattr(res, "event_study", None)):
        df = res.event_study().to_frame()
    else:
        raise SpecError(f"cannot line up a {type(res).__name__}: pass results (the protocol of dte_dask.results) "
                        "or frames with event_time, estimate, se")
    missing = {"event_time", "estimate", "se"} - set(df.columns)
    if missing:
        raise SpecError(f"cannot line up a frame without the columns {sorted(missing)} (see dte_dask.results.base)")
    keep = ~(df["binned"].to_numpy(bool) if "binned" in df else np.zeros(len(df), bool))
    keep &= ~((df["estimate"] == 0) & df["se"].isna()).to_numpy()  # a universal base period's reference
    return df.loc[keep, ["event_time", "estimate", "se"]]
