"""What the routes share: :class:`ServiceState` (settings, store, executor, metrics, client), and
the job view the routes answer with (:func:`job_info`)."""
from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import threading
from typing import Any

from dte_dask.service.executor import JobExecutor
from dte_dask.service.metrics import ServiceMetrics
from dte_dask.service.models import JobInfo, Progress
from dte_dask.service.paths import confine_source
from dte_dask.service.retention import Purger
from dte_dask.service.settings import ServiceSettings
from dte_dask.service.store import JobStore
from dte_dask.service.validate import SpecProblem, validate_spec

logger = logging.getLogger("dte_dask.service")


class ServiceState:
    """What the routes share: settings, store, executor, metrics, the cluster's client."""

    def __init__(self, settings: ServiceSettings, client: Any = None) -> None:
        self.settings = settings
        self.client = client
        self._own_client = client is None
        self._stack = contextlib.ExitStack()
        self.store: JobStore | None = None
        self.executor: JobExecutor | None = None
        self.dashboard: str | None = None
        self.ready = False
        self.submit_lock = threading.Lock()
        self.metrics: ServiceMetrics | None = None
        self.purger: Purger | None = None

    def start(self) -> None:
        s = self.settings
        s.results_root.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(s.db_path)
        self._stack.callback(self.store.close)
        self.metrics = ServiceMetrics(self.store, max_concurrent=s.max_concurrent,
                                      executor=lambda: self.executor, client=lambda: self.client)
        resume = self.store.recover()
        _warm_up()  # the estimators' imports, so that the first POST /jobs answers as fast as the next
        if self.client is None:
            from dte_dask.cluster import connect

            self.client = self._stack.enter_context(connect(s.profile))
        with contextlib.suppress(Exception):
            if "dashboard" in (self.client.scheduler_info().get("services") or {}):
                self.dashboard = self.client.dashboard_link
        self.executor = JobExecutor(self.store, self.client, max_concurrent=s.max_concurrent,
                                    max_queued=max(s.max_queued, len(resume)), prepare=self.prepare,
                                    on_finish=self.metrics.job_finished, job_timeout_s=s.job_timeout_s,
                                    job_memory_bytes=s.job_memory_bytes, results_root=s.results_root)
        self.executor.start(resume)
        if s.retain_days is not None:
            self.purger = Purger(self.store, s.results_root, s.retain_days, s.purge_interval_s)
            self._stack.callback(self.purger.stop)
            self.purger.start()
        self.ready = True
        logger.info("dte-dask serve ready on %s (profile %s; %d job(s) resumed from the queue; db %s)",
                    s.public_url or "<app>", s.profile if isinstance(s.profile, str) else "<inline>",
                    len(resume), s.db_path)

    def stop(self) -> None:
        self.ready = False
        if self.executor is not None:
            self.executor.shutdown(self.settings.shutdown_grace_s)
        self._stack.close()

    def prepare(self, row: dict[str, Any]) -> Any:
        """The stored job as it runs: path confined again, output = the job's results folder."""
        job = validate_spec(row["spec"])
        try:
            job.data.source = confine_source(job.data.source, self.settings.data_roots, self.settings.data_buckets,
                                             self.settings.bucket_options)
        except SpecProblem as exc:
            raise ValueError(str(exc)) from None
        job.data.storage_options = dict(self.settings.bucket_options) if "://" in job.data.source else None
        job.output = row["results_dir"]
        return job


def _warm_up() -> None:
    from dte_dask import registry

    for entry in registry.list_estimators():  # imports every estimator module (and its function)
        _ = entry.fn


def iso_time(t: float | None) -> _dt.datetime | None:
    return None if t is None else _dt.datetime.fromtimestamp(t, tz=_dt.UTC)


def job_info(st: ServiceState, row: dict[str, Any], *, progress: bool = True) -> JobInfo:
    import time

    now = time.time()
    sub, start, end = row["submitted_at"], row["started_at"], row["finished_at"]
    queued_s = ((start if start is not None else (end if end is not None else now)) - sub)
    run_s = None if start is None else ((end if end is not None else now) - start)
    prog = None
    if row["state"] == "succeeded":
        last = (row["summary"] or {}).get("progress") or {}
        done = int(last.get("tasks_total") or last.get("tasks_done") or 0)
        prog = Progress(fraction=1.0, tasks_done=done, tasks_total=done)
    elif row["state"] == "running" and progress and st.executor is not None:
        p = st.executor.progress(row["id"])
        if p is not None:
            prog = Progress(**p)
    pos = st.executor.position(row["id"]) if row["state"] == "queued" and st.executor else None
    jid = row["id"]
    return JobInfo(id=jid, name=row["name"], state=row["state"], submitted_at=iso_time(sub), started_at=iso_time(start),
                   finished_at=iso_time(end), queued_s=max(0.0, queued_s), run_s=None if run_s is None else max(0.0, run_s),
                   queue_position=pos, progress=prog,
                   dashboard=st.dashboard if row["state"] in ("running", "cancelling") else None,
                   error=row["error"], warnings=row["warnings"] or [], summary=row["summary"], spec=row["spec"],
                   links={"self": f"/jobs/{jid}", "results": f"/jobs/{jid}/results"})
