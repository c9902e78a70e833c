"""End-to-end analyses built from the estimators: ``policy_evaluation``.

The staggered-policy evaluation this project starts from (a drug-reimbursement policy rolled out
in waves to hypertension patients): an event study, Callaway–Sant'Anna ATT(g,t) with its dynamic
and group aggregations, stacked DiD as a robustness check, multiplier-bootstrap inference with
uniform bands, the pre-trend tests, and the CS-vs-stacked comparison — all on one loaded panel.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from dte_dask.panel.load import load_panel
from dte_dask.panel.panel import Panel


def policy_evaluation(
    data: Any,
    *,
    unit: str = "unit",
    time_col: str = "time",
    outcome: str = "sbp",
    group: str = "group",
    covariates: Sequence[str] = ("age", "bmi", "female"),
    control_group: str = "never_treated",
    event_window: tuple[int, int] = (-6, 18),
    stacked_window: tuple[int, int] = (-5, 12),
    n_boot: int = 999,
    seed: int | None = None,
    alpha: float = 0.05,
    npartitions: int | None = None,
    out: str | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Run the policy-evaluation pipeline; returns ``{name: result}`` (and writes ``out`` if given).

    Results: ``event_study`` (TWFE, binned endpoints at ``event_window``), ``cs`` (ATT(g,t), dr
    with ``covariates``, bootstrap), ``cs_dynamic`` and ``cs_group`` (aggregations with uniform
    bands), ``stacked`` (stacked DiD, ``stacked_window``), ``pretrends_cs`` / ``pretrends_event_study``
    (pre-trend checks) and ``cs_vs_stacked`` (the two dynamic profiles side by side, with their
    correlation). Timings per step are in ``results["timings"]`` (a plain dict, not saved as a
    result).
    """
    import dte_dask
    from dte_dask.checks import pretrend_check
    from dte_dask.estimators.compare import line_up

    timings: dict[str, float] = {}
    t = time.perf_counter()
    panel = data if isinstance(data, Panel) else load_panel(
        data, unit=unit, time=time_col, outcome=outcome, group=group, covariates=tuple(covariates),
        npartitions=npartitions)
    timings["load"] = time.perf_counter() - t
    res: dict[str, Any] = {}

    t = time.perf_counter()
    res["event_study"] = dte_dask.event_study(panel, window=event_window, bin_endpoints=True, alpha=alpha)
    timings["event_study"] = time.perf_counter() - t

    t = time.perf_counter()
    cs = dte_dask.att_gt(panel, control_group=control_group, est_method="dr", n_boot=n_boot, seed=seed, alpha=alpha)
    res["cs"] = cs
    res["cs_dynamic"] = cs.aggregate("dynamic")
    res["cs_group"] = cs.aggregate("group")
    timings["cs"] = time.perf_counter() - t

    t = time.perf_counter()
    res["stacked"] = dte_dask.stacked_did(panel, window=stacked_window, alpha=alpha)
    timings["stacked"] = time.perf_counter() - t

    res["pretrends_cs"] = pretrend_check(cs)
    res["pretrends_event_study"] = pretrend_check(res["event_study"])
    comparison = line_up({"cs": res["cs_dynamic"], "stacked": res["stacked"]}, window=stacked_window)
    res["cs_vs_stacked"] = comparison.table
    if out is not None:
        from dte_dask.report import save_results, write_report

        t = time.perf_counter()
        meta = {"pipeline": "policy_evaluation", "timings_pipeline": timings,
                "cs_vs_stacked_correlation": comparison.correlation.to_dict(), "panel": panel.describe()}
        save_results(res, out, metadata=meta)
        if report:
            write_report(out, f"{out}/report.html", title="Policy evaluation")
        timings["save"] = time.perf_counter() - t
    res["timings"] = timings
    return res
