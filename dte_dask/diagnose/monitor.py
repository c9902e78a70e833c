"""Measure the stages of a run on a Dask cluster from Dask's own instrumentation.

:class:`RunMonitor` wraps a job: ``with monitor.stage("load"): ...`` records, for that stage,

* wall time, and the task stream (``distributed.get_task_stream``): tasks, their summed and
  median compute time, busy time per worker;
* CPU seconds of the worker processes (``psutil`` on each worker, before and after);
* bytes the workers spilled to disk (their ``disk-write`` fine performance metrics) and sent to
  each other (``transfer_outgoing_bytes_total``), before and after;
* the peak memory of the largest worker, sampled from the scheduler's heartbeat metrics every
  ``interval`` seconds while the stage runs.

:meth:`RunMonitor.diagnosis` classifies every stage (:mod:`dte_dask.diagnose.classify`). With a
threads-only LocalCluster the workers share the driver's process, so their CPU seconds include
the driver's.
"""
from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from dte_dask.diagnose.classify import StageMetrics, diagnose_run

__all__ = ["RunMonitor", "busy_seconds", "worker_counters"]


def worker_counters(dask_worker: Any) -> dict[str, float]:
    """Cumulative counters of one worker (run on the worker by ``client.run``)."""
    import os

    import psutil

    ct = psutil.Process().cpu_times()
    host = psutil.cpu_times()
    host_total = float(sum(host))
    host_idle = float(host.idle + getattr(host, "iowait", 0.0))
    digests = getattr(dask_worker, "digests_total", {}) or {}
    spilled = sum(v for k, v in digests.items()
                  if isinstance(k, tuple) and len(k) >= 3 and k[-2] == "disk-write" and k[-1] == "bytes")
    mm = getattr(dask_worker, "memory_manager", None)
    return {"cpu_s": float(ct.user + ct.system), "spilled_bytes": float(spilled),
            "sent_bytes": float(getattr(dask_worker, "transfer_outgoing_bytes_total", 0) or 0),
            "memory_limit": float(getattr(mm, "memory_limit", 0) or 0),
            "nthreads": float(dask_worker.state.nthreads), "pid": float(os.getpid()),
            "host_total": host_total, "host_busy": host_total - host_idle,
            "host_iowait": float(getattr(host, "iowait", 0.0)), "host": os.uname().nodename}


class RunMonitor:
    """Per-stage metrics of a run on ``client``'s cluster (see the module docstring)."""

    def __init__(self, client: Any, *, interval: float = 0.25, enabled: bool = True,
                 on_stage: Any = None) -> None:
        self.client, self.interval, self.enabled, self.on_stage = client, interval, enabled, on_stage
        self.stages: list[StageMetrics] = []
        self._peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.perf_counter()

    # ------------------------------------------------------------------ sampling
    def __enter__(self) -> RunMonitor:
        self._t0 = time.perf_counter()
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, daemon=True, name="dte-dask-diagnose")
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _sample(self) -> None:
        try:
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        except Exception:  # noqa: BLE001 - scheduler busy or closing: try again at the next tick
            return
        mem = max((int(w.get("metrics", {}).get("memory", 0) or 0) for w in workers.values()), default=0)
        with self._lock:
            self._peak = max(self._peak, mem)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _counters(self) -> dict[str, dict[str, float]]:
        try:
            return self.client.run(worker_counters)
        except Exception:  # noqa: BLE001 - a worker lost mid-run: its counters are missing, not fatal
            return {}

    # ------------------------------------------------------------------ stages
    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Measure the block as the stage ``name`` (and tell ``on_stage(name)``, e.g. the progress bar)."""
        if self.on_stage is not None:
            self.on_stage(name)
        if not self.enabled:
            yield
            return
        from distributed import get_task_stream

        before = self._counters()
        with self._lock:
            self._peak = 0
        t0, since = time.perf_counter(), time.time()
        ts = get_task_stream(self.client)
        ts.__enter__()
        # a stage that raises (a cancelled job, whose connection is closed; a lost scheduler) is not
        # measured: its exception leaves here, at the yield. get_task_stream's own __exit__ would ask
        # the scheduler for the stream through that closed connection and wait for its timeout
        yield
        if self.client.status != "running":
            return
        ts.__exit__(None, None, None)
        wall = time.perf_counter() - t0
        self._sample()
        after = self._counters()
        with self._lock:
            peak = self._peak
        metrics = _stage_metrics(name, wall, ts.data, before, after, peak)
        metrics.bootstrap_s = busy_seconds(ts.data, spans=self._boot_spans(since))
        self.stages.append(metrics)

    def _boot_spans(self, since: float) -> list[tuple[float, float]]:
        """Spans in which tasks drew bootstrap multipliers inside other tasks (worker events)."""
        from dte_dask.inference.bootstrap import EVENT

        try:
            events = self.client.get_events(EVENT)
        except Exception:  # noqa: BLE001 - an old scheduler or a lost connection: the task stream still counts
            return []
        out = []
        for _, m in events:  # {"spans": [[start, stop], ...]}, or one {"start", "stop"} (earlier versions)
            if not isinstance(m, dict):
                continue
            pairs = m["spans"] if "spans" in m else [(m.get("start", 0.0), m.get("stop", 0.0))]
            out += [(float(a), float(b)) for a, b in pairs if float(a) >= since]
        return out

    def diagnosis(self, *, price_per_core_hour: float | None = None,
                  total_wall_s: float | None = None) -> dict[str, Any]:
        """Findings per stage, the run's class, core-hours and (with a price) the cost."""
        wall = total_wall_s if total_wall_s is not None else time.perf_counter() - self._t0
        return diagnose_run(self.stages, total_wall_s=wall, price_per_core_hour=price_per_core_hour)


def busy_seconds(tasks: Iterable[dict[str, Any]], prefix: str = "mboot",
                 spans: Iterable[tuple[float, float]] = ()) -> float:
    """Wall seconds during which some task whose key prefix contains ``prefix`` was computing, or
    one of the extra ``spans`` (start, stop) ran.

    ``tasks`` are records of :func:`distributed.get_task_stream` (``key``, ``startstops``);
    overlapping tasks (several threads or workers) count once.
    """
    from dask.utils import key_split

    spans = sorted([*((float(ss["start"]), float(ss["stop"])) for rec in tasks if prefix in key_split(rec.get("key"))
                      for ss in rec.get("startstops", ()) if ss.get("action") == "compute"), *spans])
    out, end = 0.0, float("-inf")
    for start, stop in spans:
        if stop > end:
            out += stop - max(start, end)
            end = stop
    return out


def _stage_metrics(name: str, wall: float, tasks: list[dict[str, Any]], before: dict[str, dict[str, float]],
                   after: dict[str, dict[str, float]], peak: int) -> StageMetrics:
    durations: list[float] = []
    busy: dict[str, float] = {w: 0.0 for w in after}
    for rec in tasks:
        d = sum(float(ss["stop"]) - float(ss["start"]) for ss in rec.get("startstops", ())
                if ss.get("action") == "compute")
        durations.append(d)
        w = rec.get("worker")
        if w is not None:
            busy[w] = busy.get(w, 0.0) + d

    def delta(key: str, workers: Any = after) -> float:
        return sum(max(0.0, after[w][key] - before.get(w, {}).get(key, 0.0)) for w in workers)

    # threads-only workers share one process: count its CPU time once; hosts once each
    one_per_process = {c.get("pid"): w for w, c in after.items()}.values()
    one_per_host = list({c.get("host"): w for w, c in after.items()}.values())
    host_total = delta("host_total", one_per_host)
    return StageMetrics(
        name=name, wall_s=wall, workers=len(after),
        threads=int(sum(c["nthreads"] for c in after.values())),
        cpu_s=delta("cpu_s", one_per_process), n_tasks=len(durations), task_s=float(sum(durations)),
        median_task_s=float(statistics.median(durations)) if durations else 0.0,
        busy_s_per_worker=busy, peak_worker_memory=int(peak),
        memory_limit=int(min((c["memory_limit"] for c in after.values() if c["memory_limit"]), default=0)),
        spilled_bytes=int(delta("spilled_bytes")), transferred_bytes=int(delta("sent_bytes")),
        bootstrap_s=busy_seconds(tasks),
        host_busy=delta("host_busy", one_per_host) / host_total if host_total > 0 else None,
        host_iowait=delta("host_iowait", one_per_host) / host_total if host_total > 0 else None)
