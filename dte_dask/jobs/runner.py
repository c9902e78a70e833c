"""Run a :class:`~dte_dask.jobs.spec.JobSpec`: connect, load once, estimate, save, report."""
from __future__ import annotations

import contextlib
import contextvars
import inspect
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from dte_dask import registry
from dte_dask.jobs.spec import DataSpec, JobSpec
from dte_dask.jobs.stages import StageClock, format_stages

MPDTA_COLUMNS = dict(unit="countyreal", time="year", outcome="lemp", group="first_treat")


class JobStopped(Exception):
    """``run_job(should_stop=...)`` was told to stop; raised at the next stage or file boundary."""


class _StopBetween(Mapping[str, Any]):
    """The results as ``save_results`` iterates them, asking ``check`` before each one is written."""

    def __init__(self, results: dict[str, Any], check: Callable[[str], None]) -> None:
        self._results, self._check = results, check

    def __getitem__(self, key: str) -> Any:
        return self._results[key]

    def __len__(self) -> int:
        return len(self._results)

    def __iter__(self) -> Iterator[str]:
        for key in list(self._results):
            self._check(f"writing {key}")
            yield key


def resolve_data(data: DataSpec) -> tuple[Any, dict[str, Any]]:
    """The source object and the keyword arguments for ``load_panel``: column roles, storage options."""
    import dte_dask

    cols = {k: getattr(data, k) for k in ("unit", "time", "outcome", "group", "treatment", "weights", "cluster")}
    cols["covariates"] = list(data.covariates)
    if data.source == "mpdta":
        src = dte_dask.datasets.load_mpdta()
        defaults: dict[str, Any] = dict(MPDTA_COLUMNS)
    elif data.source == "simulate":
        s = data.simulate
        assert s is not None
        sim = dte_dask.simulate_panel(s.units, s.periods, preset=s.preset, seed=s.seed, selection=s.selection,
                                      cohorts=s.cohorts, never_treated_share=s.never_treated_share,
                                      unbalanced_share=s.unbalanced_share)
        src = sim.data
        defaults = {k: sim.columns[k] for k in ("unit", "time", "outcome", "group")}
    else:
        src = data.source
        defaults = {}
    for k, v in defaults.items():
        if cols.get(k) is None and not (k == "group" and cols.get("treatment")):
            cols[k] = v
    if data.storage_options:
        cols["storage_options"] = dict(data.storage_options)
    return src, {k: v for k, v in cols.items() if v is not None and v != []}


def load_job_panel(job: JobSpec, threads: int | None = None) -> Any:
    """The job's panel as :func:`run_job` loads it: every observed row (unless the job balances), so
    that each estimator then keeps the rows its function keeps by default and a job gives what a
    direct call on the data gives. Unless the job sets ``npartitions``, the panel's partitions are a
    multiple of the cluster's ``threads`` (the results do not depend on the partitioning)."""
    import dask

    import dte_dask  # the package's lazy API (a top-level import would be circular)

    src, cols = resolve_data(job.data)
    with dask.config.set({"dte_dask.partition-multiple": threads} if threads else {}):
        return dte_dask.load_panel(src, **cols, npartitions=job.data.npartitions,
                                   allow_unbalanced_panel=job.data.allow_unbalanced_panel is not False)


def fit_estimator(job: JobSpec, est: Any, panel: Any) -> Any:
    """One estimator of the job on its panel: the registered function with the job's inference settings
    (those the function takes) and the estimator's options."""
    entry = registry.get(est.kind)
    return entry.fn(panel, **_estimator_kwargs(entry.fn, job, est.options, multiplier=entry.bootstrap))


def _estimator_kwargs(fn: Callable[..., Any], job: JobSpec, options: dict[str, Any], *,
                      multiplier: bool = True) -> dict[str, Any]:
    """The job's inference settings the function takes, then the estimator's own options. The
    ``inference`` section's bootstrap is the multiplier bootstrap: it reaches only the estimators
    registered as running it (``multiplier``); another kind of bootstrap (did_multiplegt's reruns on
    resampled units) is asked for in that estimator's options."""
    inf = job.inference
    offered = dict(seed=inf.seed, alpha=inf.alpha)
    if multiplier:
        offered.update(bootstrap=inf.bootstrap, n_boot=inf.n_boot, boot_weights=inf.boot_weights,
                       uniform_bands=inf.uniform_bands)
    if job.data.allow_unbalanced_panel is not None:  # a job-wide choice; else each function's default
        offered["allow_unbalanced_panel"] = job.data.allow_unbalanced_panel
    params = inspect.signature(fn).parameters
    return {**{k: v for k, v in offered.items() if k in params}, **options}


def _cluster_threads(client: Any) -> int | None:
    """Worker threads of the job's cluster, or None if the scheduler cannot say."""
    return (_cluster_info(client) or {}).get("threads") or None


def _cluster_info(client: Any) -> dict[str, Any] | None:
    """Scheduler address, workers, threads, memory limits and dashboard of the job's cluster."""
    try:
        info = client.scheduler_info()
    except Exception:  # noqa: BLE001 - the cluster may be going away; the results still count
        return None
    workers = info.get("workers", {})
    return {"scheduler": info.get("address"), "workers": len(workers),
            "threads": sum(int(w.get("nthreads", 0)) for w in workers.values()),
            "memory_limit": sum(int(w.get("memory_limit") or 0) for w in workers.values()) or None,
            "dashboard": getattr(client, "dashboard_link", None)}


def _diagnostics(job: JobSpec, results: dict[str, Any], echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Add the job's checks (:mod:`dte_dask.jobs.checks`) and the comparison of dynamic profiles to ``results``."""
    from dte_dask.jobs.checks import run_checks

    # results with estimates by event time (a decomposition has none to line up)
    estimates = {e.name: results[e.name] for e in job.estimators if registry.get(e.kind).result != "decomposition"}
    notes = run_checks(job.checks, {e.name: (e.kind, results[e.name]) for e in job.estimators}, results, echo)
    extra: dict[str, Any] = {"check_notes": notes} if notes else {}
    if not job.compare or len(estimates) < 2:
        return extra
    from dte_dask.estimators.compare import line_up

    comparison = line_up(estimates)  # each result's estimates by event time (result.event_study())
    results["comparison"] = comparison.table
    return {**extra, "comparison_correlation": comparison.correlation.to_dict()}


def run_job(job: JobSpec, *, client: Any = None, progress: bool = True,
            echo: Callable[[str], None] = print, should_stop: Callable[[], bool] | None = None,
            price_per_core_hour: float | None = None) -> dict[str, Any]:
    """Run ``job`` and write its results folder; returns the saved summary.

    With ``client=None`` the job's cluster profile is started through :func:`dte_dask.cluster.connect`
    and shut down, once the last stage is over, in a background thread while the results and the
    report are written (the function returns after it); pass a ``Client`` to reuse a running cluster. Every stage
    (load, each estimator) is measured and classified (:mod:`dte_dask.diagnose`): the summary's
    ``diagnosis`` holds the figures, the advice, core-hours and, with ``price_per_core_hour``,
    the cost.
    ``should_stop`` (e.g. ``threading.Event().is_set``) is asked between stages (loading, each
    estimator and aggregation, the checks) and before each result is written and before the
    report; when it answers True the job raises :class:`JobStopped` (files already written stay:
    the caller decides what to do with them).
    """

    def checkpoint(stage: str) -> None:
        if should_stop is not None and should_stop():
            raise JobStopped(f"stopped before {stage}")

    from dte_dask.jobs.spec import check_data_source
    from dte_dask.report import save_results, write_report

    check_data_source(job.data)  # a missing file or column fails before any cluster starts
    out = Path(job.output)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    clock = StageClock()
    t0 = clock.t0
    with contextlib.ExitStack() as own:  # the cluster the job starts itself
        with contextlib.ExitStack() as stack:
            if client is None:
                from dte_dask.cluster import connect

                with clock.stage("cluster_start", "cluster"):
                    client = own.enter_context(connect(job.cluster.profile, **job.cluster.overrides))
                timings["cluster_start"] = time.perf_counter() - t0
            echo(f"dashboard: {client.dashboard_link}")
            if job.cluster.performance_report:
                from dte_dask.jobs.perf_report import performance_report

                stack.enter_context(performance_report(client, os.fspath(out / "dask-report.html")))
            from dte_dask.jobs.progress import ProgressMonitor

            plan = ["load", *(e.name for e in job.estimators), "checks"]  # the stages that run on the cluster
            bar = stack.enter_context(ProgressMonitor(client, enabled=progress, plan=plan))
            from dte_dask.diagnose import RunMonitor

            monitor = stack.enter_context(RunMonitor(client, on_stage=bar.set_stage))
            from dte_dask.jobs.paused import PausedWorkersGuard

            stack.enter_context(PausedWorkersGuard(client))  # entered last: sees the job's error first
            t = time.perf_counter()
            checkpoint("loading the data")
            with clock.stage("load"), monitor.stage("load"):
                panel = load_job_panel(job, threads=_cluster_threads(client))
            timings["load"] = time.perf_counter() - t
            results: dict[str, Any] = {}
            for est in job.estimators:
                t = time.perf_counter()
                checkpoint(f"estimator {est.name}")
                with clock.stage(est.name, "estimator"), monitor.stage(est.name):
                    results[est.name] = fit_estimator(job, est, panel)
                    for kind in est.aggregations:
                        checkpoint(f"aggregation {est.name}.{kind}")
                        results[f"{est.name}.{kind}"] = results[est.name].aggregate(kind)
                timings[est.name] = time.perf_counter() - t
            checkpoint("the checks")
            bar.set_stage("checks")
            with clock.stage("checks"):
                extra_meta = _diagnostics(job, results, echo)
            cluster = _cluster_info(client)  # while the client is still connected
        timings["total"] = time.perf_counter() - t0
        # the results are on the driver: the workers shut down (in a thread) while they are written
        pool = ThreadPoolExecutor(1, thread_name_prefix="dte-dask-close-cluster")
        shutdown = pool.submit(contextvars.copy_context().run, own.pop_all().close)
        pool.shutdown(wait=False)  # its one task runs on; ``shutdown`` is waited for below
    try:
        from dte_dask.diagnose import format_diagnosis

        for stage in monitor.stages:
            stage.partitions = panel.npartitions
            if stage.name in clock.kinds and clock.kinds[stage.name] == "estimator":
                clock.bootstrap[stage.name] = stage.bootstrap_s
        diagnosis = monitor.diagnosis(price_per_core_hour=price_per_core_hour, total_wall_s=timings["total"])
        echo(format_diagnosis(diagnosis))
        pol = job.disclosure
        if pol.active:  # a correlation of estimate profiles would mix in suppressed estimates
            extra_meta.pop("comparison_correlation", None)
        meta = {"job": job.model_dump(mode="json"), "job_timings": timings,
                "panel_shape": {"units": pol.count(panel.n_units), "periods": panel.n_periods,
                                "rows": pol.count(panel.n_rows), "partitions": panel.npartitions},
                "panel": panel.describe(), "profile": job.cluster.profile, "cluster": cluster,
                "diagnosis": diagnosis, **extra_meta}
        checkpoint("writing the results")
        with clock.stage("save"):
            meta["stages"] = clock.table()  # provisional: rewritten below with the save and report stages
            summary = save_results(_StopBetween(results, checkpoint) if should_stop is not None else results, out,
                                   metadata=meta, disclosure=pol)
        if job.report:
            checkpoint("writing the report")
            with clock.stage("report"):
                write_report(out, out / "report.html", title=job.name)
        shutdown.result()  # waits for what is left of it (counted as "other"); raises its error
        summary["metadata"]["stages"] = clock.table()
        (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False), encoding="utf-8")
        echo(format_stages(summary["metadata"]["stages"]))
        echo(f"results: {out} ({', '.join(results)}) in {timings['total']:.1f} s")
        return summary
    except BaseException:
        wait([shutdown])
        raise
