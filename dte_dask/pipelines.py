"""End-to-end analyses built from the estimators: ``policy_evaluation``.

The staggered-policy evaluation this project starts from (a drug-reimbursement policy rolled out
in waves to hypertension patients): an event study, Callaway–Sant'Anna ATT(g,t) with its dynamic
and group aggregations, stacked DiD as a robustness check, multiplier-bootstrap inference with
uniform bands, the pre-trend tests, and the CS-vs-stacked comparison — all on one loaded panel.
Results are named by the estimators' registry names (``att_gt``, ``stacked_did``, ...).
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

from dte_dask.panel.load import load_panel
from dte_dask.panel.panel import Panel

# names of earlier versions: still read (DeprecationWarning), the registry names replace them
OLD_NAMES = {"cs": "att_gt", "cs_dynamic": "att_gt_dynamic", "cs_group": "att_gt_group", "stacked": "stacked_did",
             "pretrends_cs": "pretrends_att_gt", "cs_vs_stacked": "att_gt_vs_stacked_did"}


class PipelineResults(dict):
    """The pipeline's results by name; an old name (``"cs"``, ``"cs_dynamic"``, ...) still reads its
    result, with a :class:`DeprecationWarning` naming the new one."""

    def __missing__(self, key: Any) -> Any:
        new = OLD_NAMES.get(key)
        if new is None:
            raise KeyError(key)
        warnings.warn(f"the pipeline's result {key!r} is named {new!r} (the registry name); {key!r} is deprecated",
                      DeprecationWarning, stacklevel=2)
        return self[new]


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
) -> PipelineResults:
    """Run the policy-evaluation pipeline; returns ``{name: result}`` (and writes ``out`` if given).

    Results (a :class:`PipelineResults`, named by the registry): ``event_study`` (TWFE, binned
    endpoints at ``event_window``), ``att_gt`` (ATT(g,t), dr with ``covariates``, bootstrap),
    ``att_gt_dynamic`` and ``att_gt_group`` (aggregations with uniform bands), ``stacked_did``
    (``stacked_window``), ``pretrends_att_gt`` / ``pretrends_event_study`` (pre-trend checks) and
    ``att_gt_vs_stacked_did`` (the two dynamic profiles side by side, with their correlation). The
    names of earlier versions (``cs``, ``cs_dynamic``, ``stacked``, ...) still read, with a
    DeprecationWarning. Timings per step are in ``results["timings"]`` (a plain dict, not saved as a
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
    res = PipelineResults()

    t = time.perf_counter()
    res["event_study"] = dte_dask.event_study(panel, window=event_window, bin_endpoints=True, alpha=alpha)
    timings["event_study"] = time.perf_counter() - t

    t = time.perf_counter()
    cs = dte_dask.att_gt(panel, control_group=control_group, est_method="dr", n_boot=n_boot, seed=seed, alpha=alpha)
    res["att_gt"] = cs
    res["att_gt_dynamic"] = cs.aggregate("dynamic")
    res["att_gt_group"] = cs.aggregate("group")
    timings["att_gt"] = time.perf_counter() - t

    t = time.perf_counter()
    res["stacked_did"] = dte_dask.stacked_did(panel, window=stacked_window, alpha=alpha)
    timings["stacked_did"] = time.perf_counter() - t

    res["pretrends_att_gt"] = pretrend_check(cs)
    res["pretrends_event_study"] = pretrend_check(res["event_study"])
    comparison = line_up({"att_gt": res["att_gt_dynamic"], "stacked_did": res["stacked_did"]}, window=stacked_window)
    res["att_gt_vs_stacked_did"] = comparison.table
    if out is not None:
        from dte_dask.report import save_results, write_report

        t = time.perf_counter()
        meta = {"pipeline": "policy_evaluation", "timings_pipeline": timings,
                "att_gt_vs_stacked_did_correlation": comparison.correlation.to_dict(), "panel": panel.describe()}
        save_results(res, out, metadata=meta)
        if report:
            write_report(out, f"{out}/report.html", title="Policy evaluation")
        timings["save"] = time.perf_counter() - t
    res["timings"] = timings
    return res
