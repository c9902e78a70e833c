"""Prometheus metrics of the service (``GET /metrics``, text exposition format).

===============================================  =========================================================
``dte_dask_jobs{state}``                          jobs in the store by state (all states, from SQLite)
``dte_dask_jobs_submitted_total``                 jobs accepted by this process
``dte_dask_jobs_rejected_total{reason}``          refused (``invalid``, ``too_large``, ``queue_full``...)
``dte_dask_jobs_finished_total{state}``           jobs this process finished, by final state
``dte_dask_job_duration_seconds{state}``          histogram of run time (start to end) of those jobs
``dte_dask_jobs_diagnosed_total{run_class}``      finished jobs by the class of their run (compute-bound, memory-bound...)
``dte_dask_job_core_hours_total``                 core-hours of finished jobs (wall time x worker threads)
``dte_dask_job_queue_seconds``                    histogram of time spent queued before starting
``dte_dask_jobs_running`` / ``_queue_length``     the executor right now
``dte_dask_max_concurrent_jobs``                  the concurrency limit
``dte_dask_cluster_up``                           1 if the scheduler answered this scrape
``dte_dask_cluster_workers`` / ``_threads``       workers and threads in the cluster
``dte_dask_cluster_memory_limit_bytes``           sum of the workers' memory limits
``dte_dask_cluster_memory_used_bytes``            sum of the workers' process memory
``dte_dask_cluster_tasks``                        tasks the scheduler holds (all clients)
===============================================  =========================================================

Each service uses its own ``CollectorRegistry`` (several apps in one process do not collide).
"""
from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dte_dask.service.store import STATES, JobStore

__all__ = ["CONTENT_TYPE_LATEST", "ServiceMetrics"]

_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600, float("inf"))
_SCRAPE_TIMEOUT_S = 5.0


def cluster_snapshot(client: Any, timeout: float = _SCRAPE_TIMEOUT_S) -> dict[str, Any] | None:
    """Workers, threads, memory and task count of the cluster; None if it did not answer in time."""
    if client is None:
        return None
    from dte_dask.service.executor import scheduler_tasks

    def ask() -> dict[str, Any]:
        info = client.scheduler_info(n_workers=-1)
        tasks = client.run_on_scheduler(scheduler_tasks)
        workers = info.get("workers", {}) or {}
        return {
            "workers": len(workers),
            "threads": sum(int(w.get("nthreads", 0) or 0) for w in workers.values()),
            "memory_limit": sum(int(w.get("memory_limit", 0) or 0) for w in workers.values()),
            "memory_used": sum(int((w.get("metrics") or {}).get("memory", 0) or 0) for w in workers.values()),
            "tasks": int(tasks),
        }

    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dte-dask-scrape")
    try:
        return pool.submit(ask).result(timeout=timeout)
    except Exception:  # noqa: BLE001 - a slow or gone scheduler is reported as cluster_up 0
        return None
    finally:
        pool.shutdown(wait=False)


class _Live(Collector):
    def __init__(self, metrics: ServiceMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Any]:
        m = self.m
        jobs = GaugeMetricFamily("dte_dask_jobs", "Jobs in the job store by state", labels=["state"])
        for state, n in m.store.counts().items():
            jobs.add_metric([state], n)
        yield jobs
        ex = m.executor()
        yield GaugeMetricFamily("dte_dask_jobs_running", "Jobs running now", value=ex.running() if ex else 0)
        yield GaugeMetricFamily("dte_dask_queue_length", "Jobs waiting for a slot", value=ex.queued() if ex else 0)
        yield GaugeMetricFamily("dte_dask_max_concurrent_jobs", "Concurrency limit", value=m.max_concurrent)
        snap = cluster_snapshot(m.client())
        yield GaugeMetricFamily("dte_dask_cluster_up", "1 if the scheduler answered this scrape",
                                value=0 if snap is None else 1)
        if snap is None:
            return
        yield GaugeMetricFamily("dte_dask_cluster_workers", "Workers in the cluster", value=snap["workers"])
        yield GaugeMetricFamily("dte_dask_cluster_threads", "Worker threads in the cluster", value=snap["threads"])
        yield GaugeMetricFamily("dte_dask_cluster_memory_limit_bytes", "Sum of the workers' memory limits",
                                value=snap["memory_limit"])
        yield GaugeMetricFamily("dte_dask_cluster_memory_used_bytes", "Sum of the workers' process memory",
                                value=snap["memory_used"])
        yield GaugeMetricFamily("dte_dask_cluster_tasks", "Tasks held by the scheduler", value=snap["tasks"])


class ServiceMetrics:
    """The service's registry: counters updated by the app, the rest read at scrape time."""

    def __init__(self, store: JobStore, *, max_concurrent: int, executor: Callable[[], Any],
                 client: Callable[[], Any]) -> None:
        self.store = store
        self.max_concurrent = max_concurrent
        self.executor = executor
        self.client = client
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.submitted = Counter("dte_dask_jobs_submitted", "Jobs accepted by this process", registry=r)
        self.rejected = Counter("dte_dask_jobs_rejected", "Job submissions refused", ["reason"], registry=r)
        self.finished = Counter("dte_dask_jobs_finished", "Jobs finished by this process", ["state"], registry=r)
        self.duration = Histogram("dte_dask_job_duration_seconds", "Run time of finished jobs", ["state"],
                                  buckets=_DURATION_BUCKETS, registry=r)
        self.queue_wait = Histogram("dte_dask_job_queue_seconds", "Time jobs waited in the queue",
                                    buckets=_DURATION_BUCKETS, registry=r)
        self.diagnosed = Counter("dte_dask_jobs_diagnosed", "Finished jobs by the class of their run "
                                 "(dte_dask.diagnose)", ["run_class"], registry=r)
        self.core_hours = Counter("dte_dask_job_core_hours", "Core-hours of finished jobs", registry=r)
        for s in STATES:
            if s not in ("queued", "running", "cancelling"):
                self.finished.labels(state=s)
        r.register(_Live(self))

    def job_finished(self, state: str, run_s: float, queue_s: float,
                     diagnosis: dict[str, Any] | None = None) -> None:
        self.finished.labels(state=state).inc()
        self.duration.labels(state=state).observe(max(0.0, run_s))
        self.queue_wait.observe(max(0.0, queue_s))
        if diagnosis:
            self.diagnosed.labels(run_class=str(diagnosis.get("class", "unknown"))).inc()
            self.core_hours.inc(max(0.0, float(diagnosis.get("core_hours") or 0.0)))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def parse_text(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(name, sorted labels): value}`` of a Prometheus text exposition (tests, tooling)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out
