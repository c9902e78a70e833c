"""Run queued jobs on the service's cluster: a concurrency limit, a FIFO queue, cancellation.

The service connects ONE long-lived ``Client`` to its profile's cluster at startup. Each job
runs in one of ``max_concurrent`` worker threads through :func:`dte_dask.jobs.runner.run_job`
(``progress=False``) on that cluster, under its own lightweight ``Client`` connected to the same
scheduler and made current for the thread (``Client.as_current``). That per-job connection is
the job's cancellable context: every future the job creates (persisted panel blocks, each
estimator's graphs) belongs to it, so

* ``DELETE /jobs/{id}`` closes it: the job's futures are cancelled at once (the job thread's
  pending ``compute`` raises), and the scheduler releases the tasks only this job wanted; two
  concurrent jobs that share task keys (the same data, ``pure=True`` keys) do not cancel each
  other, which cancelling keys on one shared client would do;
* progress is counted per connection by :class:`ClientTaskCounter`, a scheduler plugin.

A task already executing on a worker finishes (Python threads cannot be interrupted); its
result is dropped. A job thread busy in driver-side code notices at its next cluster call, or at
the runner's next stage or file boundary (``run_job(should_stop=...)``): a job cancelled while
it writes its results stops before the next file, and its folder is removed.

A watchdog thread enforces each running job's limits: the wall-clock limit (``job_timeout_s``)
and the memory budget (``job_memory_bytes``: the bytes of the job's tasks held in worker memory,
as the scheduler counts them for the job's own connection). A job past either is stopped like a
cancelled one, its partial outputs removed, and marked ``failed`` with the reason.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from dte_dask.service.store import JobStore

logger = logging.getLogger("dte_dask.service")

PLUGIN_NAME = "dte-dask-service-progress"


class QueueFull(Exception):
    """More than ``max_queued`` jobs are waiting (429)."""


# ----------------------------------------------------------------------------- progress
class ClientTaskCounter(SchedulerPlugin):
    """Per client: tasks submitted that still had to run, and how many of them finished.

    A task counts for every client whose graph brought it in while it was not in memory yet, and
    is done when it reaches memory (or errs). Counts are dropped when the client disconnects.
    """

    name = PLUGIN_NAME

    def __init__(self) -> None:
        self.added: Counter[str] = Counter()
        self.done: Counter[str] = Counter()
        self.owners: dict[Any, set[str]] = {}
        self.keys_of: dict[str, set[Any]] = {}  # every key a client's graphs brought in (memory budget)

    def update_graph(self, scheduler: Any, *, client: str, keys: Any, tasks: Any = (), **kwargs: Any) -> None:
        self.keys_of.setdefault(client, set()).update(tasks or ())
        for key in tasks or ():
            ts = scheduler.tasks.get(key)
            if ts is None or ts.state in ("memory", "erred"):
                continue
            owners = self.owners.setdefault(key, set())
            if client not in owners:
                owners.add(client)
                self.added[client] += 1

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish in ("memory", "erred"):
            for c in self.owners.pop(key, ()):
                self.done[c] += 1
        elif finish == "forgotten":
            self.owners.pop(key, None)

    def remove_client(self, scheduler: Any, client: str) -> None:
        self.added.pop(client, None)
        self.done.pop(client, None)
        self.keys_of.pop(client, None)

    def bytes_in_memory(self, scheduler: Any, client: str) -> int:
        """Bytes of the client's tasks now in worker memory (forgotten keys are dropped)."""
        keys = self.keys_of.get(client)
        if not keys:
            return 0
        total, gone = 0, []
        for key in keys:
            ts = scheduler.tasks.get(key)
            if ts is None:
                gone.append(key)
            elif ts.state == "memory":
                total += max(0, int(ts.nbytes or 0))
        keys.difference_update(gone)
        return total

    def snapshot(self, client: str) -> dict[str, int]:
        return {"tasks_total": int(self.added.get(client, 0)), "tasks_done": int(self.done.get(client, 0))}


def _progress_on_scheduler(dask_scheduler: Any, client_id: str) -> dict[str, int] | None:
    plugin = dask_scheduler.plugins.get(PLUGIN_NAME)
    return plugin.snapshot(client_id) if plugin is not None else None


def _bytes_on_scheduler(dask_scheduler: Any, client_ids: list[str]) -> dict[str, int]:
    plugin = dask_scheduler.plugins.get(PLUGIN_NAME)
    return {c: plugin.bytes_in_memory(dask_scheduler, c) for c in client_ids} if plugin is not None else {}


def scheduler_tasks(dask_scheduler: Any) -> int:
    return len(dask_scheduler.tasks)


# ----------------------------------------------------------------------------- executor
@dataclass
class _Active:
    job_id: str
    cancel: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)  # the service is shutting down
    abort: threading.Event = field(default_factory=threading.Event)  # a limit was reached (``reason``)
    reason: str = ""
    started: float = field(default_factory=time.monotonic)
    client: Any = None
    thread: threading.Thread | None = None

    def should_stop(self) -> bool:
        return self.cancel.is_set() or self.stop.is_set() or self.abort.is_set()


class JobExecutor:
    """``max_concurrent`` worker threads taking job ids from a FIFO queue.

    Parameters
    ----------
    store : JobStore
    client : distributed.Client
        The service's long-lived client; jobs connect to its scheduler.
    prepare : callable
        ``prepare(row) -> JobSpec``: the stored job as it will run (data path confined again,
        output set to the job's results folder). Raising fails the job with that message.
    run : callable
        ``run(job_spec, client, should_stop)`` -> summary dict (default
        :func:`dte_dask.jobs.runner.run_job`); ``should_stop()`` turns True on cancel or a limit.
    on_finish : callable, optional
        ``on_finish(state, run_seconds, queue_seconds, diagnosis)`` after every job that started
        (``diagnosis``: the compact run diagnosis of a finished job, else None).
    job_timeout_s, job_memory_bytes : optional
        The running job's wall-clock limit and memory budget on the workers (None: none).
    results_root : Path, optional
        Where the jobs' folders are; a cancelled or stopped job's folder is removed (only there).
    """

    def __init__(self, store: JobStore, client: Any, *, max_concurrent: int, max_queued: int,
                 prepare: Callable[[dict[str, Any]], Any],
                 run: Callable[[Any, Any, Callable[[], bool]], dict[str, Any]] | None = None,
                 on_finish: Callable[[str, float, float, dict[str, Any] | None], None] | None = None, job_timeout_s: float | None = None,
                 job_memory_bytes: int | None = None, results_root: Path | None = None,
                 watch_interval_s: float = 0.5) -> None:
        self.store = store
        self.client = client
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self._prepare = prepare
        self._run = run or _run_job
        self._on_finish = on_finish
        self._queue: collections.deque[str] = collections.deque()
        self._cv = threading.Condition()
        self._active: dict[str, _Active] = {}
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self.job_timeout_s = job_timeout_s
        self.job_memory_bytes = job_memory_bytes
        self.results_root = results_root
        self._watch_interval = watch_interval_s
        self._watch_stop = threading.Event()

    # ------------------------------------------------------------------ lifecycle
    def start(self, resume: Sequence[str] = ()) -> None:
        """Register the progress plugin, queue ``resume`` (oldest first) and start the workers."""
        try:
            self.client.register_plugin(ClientTaskCounter(), name=PLUGIN_NAME)
        except Exception as exc:  # noqa: BLE001 - progress is optional
            logger.warning("progress plugin not registered (%s); jobs report no progress", exc)
        with self._cv:
            self._queue.extend(resume)
        for i in range(self.max_concurrent):
            t = threading.Thread(target=self._worker, name=f"dte-dask-job-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        if self.job_timeout_s is not None or self.job_memory_bytes is not None:
            w = threading.Thread(target=self._watch, name="dte-dask-job-watchdog", daemon=True)
            w.start()
            self._threads.append(w)

    def shutdown(self, grace_s: float = 10.0) -> None:
        """Stop taking jobs; running ones are cancelled and marked ``interrupted``; queued ones stay
        queued in the store (the next start runs them)."""
        with self._cv:
            self._stopping = True
            active = list(self._active.values())
            self._cv.notify_all()
        self._watch_stop.set()
        now = time.time()
        for a in active:
            a.stop.set()
            self.store.transition(a.job_id, ["running"], "interrupted", finished_at=now,
                                  error="the service stopped while the job was running")
            self.store.transition(a.job_id, ["cancelling"], "cancelled", finished_at=now)
            self._close_client(a)
        deadline = time.monotonic() + grace_s
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ API
    def submit(self, job_id: str) -> None:
        with self._cv:
            if len(self._queue) >= self.max_queued:
                raise QueueFull(f"{len(self._queue)} jobs are already waiting (limit {self.max_queued})")
            self._queue.append(job_id)
            self._cv.notify()

    def can_accept(self) -> bool:
        with self._cv:
            return len(self._queue) < self.max_queued and not self._stopping

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued or running job; the job's state afterwards (None: no such job)."""
        row = self.store.get(job_id)
        if row is None:
            return None
        if row["state"] == "queued" and self.store.transition(job_id, ["queued"], "cancelled", finished_at=time.time()):
            with self._cv, contextlib.suppress(ValueError):
                self._queue.remove(job_id)
            return "cancelled"
        with self._cv:
            active = self._active.get(job_id)
        if active is not None:
            active.cancel.set()
            self.store.transition(job_id, ["running"], "cancelling")
            self._close_client(active)
        row = self.store.get(job_id)
        return row["state"] if row else None

    def queued(self) -> int:
        with self._cv:
            return len(self._queue)

    def running(self) -> int:
        with self._cv:
            return len(self._active)

    def position(self, job_id: str) -> int | None:
        """0-based place of a queued job in the queue."""
        with self._cv:
            try:
                return self._queue.index(job_id)
            except ValueError:
                return None

    def progress(self, job_id: str) -> dict[str, Any] | None:
        """``{"fraction", "tasks_done", "tasks_total"}`` of a running job (tasks so far)."""
        with self._cv:
            active = self._active.get(job_id)
            client = active.client if active else None
        if client is None:
            return None
        try:
            snap = self.client.run_on_scheduler(_progress_on_scheduler, client_id=client.id)
        except Exception:  # noqa: BLE001 - scheduler busy or job just finished
            return None
        if not snap:
            return None
        total, done = snap["tasks_total"], snap["tasks_done"]
        return {"fraction": (done / total) if total else 0.0, "tasks_done": done, "tasks_total": total}

    # ------------------------------------------------------------------ workers
    def _worker(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                job_id = self._queue.popleft()
                active = _Active(job_id, thread=threading.current_thread())
                self._active[job_id] = active
            try:
                if self.store.transition(job_id, ["queued"], "running", started_at=time.time()):
                    self._execute(active)
            except Exception:
                logger.exception("job %s: unexpected error in the executor", job_id)
            finally:
                with self._cv:
                    self._active.pop(job_id, None)

    def _execute(self, active: _Active) -> None:
        from distributed import Client

        job_id = active.job_id
        t0 = time.time()
        row = self.store.get(job_id) or {}
        queue_s = t0 - float(row.get("submitted_at") or t0)
        state, error, summary = "failed", None, None
        try:
            job = self._prepare(row)
            jc = Client(self.client.scheduler.address, security=self.client.security, set_as_default=False,
                        name=f"dte-dask-job-{job_id}")
            with self._cv:
                active.client = jc
            if active.cancel.is_set() or active.stop.is_set():
                raise RuntimeError("cancelled before it started")
            logger.info("job %s: running %r", job_id, job.name)
            with jc.as_current():
                full = self._run(job, jc, active.should_stop)
            summary = _compact(full)
            if summary is not None:
                summary["progress"] = self.progress(job_id)  # the task counts, before the client goes
            state = "succeeded"
        except BaseException as exc:
            if active.cancel.is_set():
                state = "cancelled"
            elif active.stop.is_set():
                state = "interrupted"
            elif active.abort.is_set():
                error = active.reason
                logger.warning("job %s stopped: %s", job_id, error)
            else:
                error = f"{type(exc).__name__}: {exc}"[:4000]
                logger.warning("job %s failed: %s", job_id, error)
                logger.debug("job %s traceback", job_id, exc_info=True)
        finally:
            self._close_client(active)
        if state == "succeeded" and active.cancel.is_set():
            state = "cancelled"  # finished in the same instant as the cancel: the cancel wins
        elif state == "succeeded" and active.abort.is_set():
            state, error, summary = "failed", active.reason, None
        if (state == "cancelled" or active.abort.is_set()) and self.results_root is not None:
            from dte_dask.service.retention import remove_results

            remove_results(row.get("results_dir"), self.results_root)  # partial outputs go
        now = time.time()
        if state == "cancelled":
            changed = self.store.transition(job_id, ["running", "cancelling"], "cancelled", finished_at=now)
        elif state == "interrupted":
            changed = False  # shutdown() already recorded it
        else:
            changed = self.store.transition(job_id, ["running"], state, finished_at=now, error=error, summary=summary)
        logger.info("job %s: %s in %.2f s", job_id, state, now - t0)
        if (changed or state == "interrupted") and self._on_finish is not None:
            with contextlib.suppress(Exception):
                self._on_finish(state, now - t0, queue_s, (summary or {}).get("diagnosis"))

    # ------------------------------------------------------------------ limits
    def _watch(self) -> None:
        while not self._watch_stop.wait(self._watch_interval):
            try:
                self.check_limits()
            except Exception:  # the watchdog must outlive a slow scheduler
                logger.debug("job watchdog: check failed", exc_info=True)

    def check_limits(self) -> None:
        """Stop every running job past its wall-clock limit or memory budget (the watchdog's tick)."""
        with self._cv:
            active = [a for a in self._active.values() if not a.should_stop()]
        if not active:
            return
        now = time.monotonic()
        if self.job_timeout_s is not None:
            for a in active:
                if now - a.started > self.job_timeout_s:
                    self._abort(a, f"the job ran past this service's wall-clock limit of {self.job_timeout_s:g} s")
        if self.job_memory_bytes is not None:
            ids = {a.client.id: a for a in active if a.client is not None and not a.abort.is_set()}
            if not ids:
                return
            held = self.client.run_on_scheduler(_bytes_on_scheduler, client_ids=list(ids))
            for cid, nbytes in (held or {}).items():
                if nbytes > self.job_memory_bytes:
                    self._abort(ids[cid], f"the job held {nbytes} bytes in worker memory, past this service's "
                                          f"memory budget of {self.job_memory_bytes} bytes per job")

    def _abort(self, active: _Active, reason: str) -> None:
        if active.abort.is_set():
            return
        active.reason = reason
        active.abort.set()
        self._close_client(active)

    @staticmethod
    def _close_client(active: _Active) -> None:
        c = active.client
        if c is None:
            return
        with contextlib.suppress(Exception):
            c.close(timeout=5)


def _run_job(job: Any, client: Any, should_stop: Callable[[], bool]) -> dict[str, Any]:
    from dte_dask.jobs.runner import run_job

    return run_job(job, client=client, progress=False, should_stop=should_stop,
                   echo=lambda msg: logger.info("job %s: %s", job.name, msg))


def _compact(summary: Any) -> dict[str, Any] | None:
    """The part of ``summary.json`` kept in the job record: each estimator's kind and overall, each
    check's verdict, and the run's diagnosis (class, core-hours, cost, each stage's finding and advice)."""
    if not isinstance(summary, dict):
        return None
    out: dict[str, Any] = {}
    for name, entry in (summary.get("estimators") or {}).items():
        if isinstance(entry, dict):
            out[name] = {k: entry[k] for k in ("kind", "class", "overall") if k in entry}
    compact: dict[str, Any] = {"estimators": out}
    checks = {name: {k: entry[k] for k in ("kind", "passed", "breakdown", "original", "slope_for_power") if k in entry}
              for name, entry in (summary.get("checks") or {}).items() if isinstance(entry, dict)}
    if checks:  # each check's verdict: pre-trend test passed, HonestDiD breakdown value, ...
        compact["checks"] = checks
    diag = summary.get("diagnosis")
    if isinstance(diag, dict):  # the run's class, cost and each stage's finding (dte_dask.diagnose)
        compact["diagnosis"] = {
            **{k: diag[k] for k in ("class", "bottleneck_stage", "wall_s", "core_hours", "cost") if k in diag},
            "stages": [{"name": st.get("name"), "wall_s": st.get("wall_s"), "share": st.get("share"),
                        "class": st.get("finding_kind"), "evidence": st.get("finding_evidence"),
                        "advice": st.get("finding_advice")} for st in diag.get("stages", [])]}
    return compact


def scheduler_task_count(client: Any) -> int | None:
    """Tasks the scheduler holds (all clients); None if it cannot be asked."""
    try:
        return int(client.run_on_scheduler(scheduler_tasks))
    except Exception:  # noqa: BLE001
        return None
