"""Stop a job whose workers are all paused by their memory limit, instead of waiting forever.

A dask worker pauses (runs no task) while its process memory is above
``distributed.worker.memory.pause`` of its limit, and spills what it holds to disk to get back
under it. Only the data it holds can be spilled: when the worker's own code, freed memory that the
allocator keeps, and a task's leftovers (the *unmanaged* memory) alone stay above the pause line,
the worker stays paused for good, and a job that waits on it hangs with no error (seen with a
worker of 290 MB whose process used 180 MiB of it unmanaged).

:class:`PausedWorkersGuard` watches the scheduler from a thread while a job runs. When every worker
has been paused for ``dte_dask.paused-timeout`` seconds while tasks wait, it cancels the futures
the job created since it started (the job's blocking call then returns) and the job raises
:class:`~dte_dask.exceptions.WorkersPausedError`, naming each worker's memory in use, limit,
unmanaged and spilled bytes, and what to change.
"""
from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from typing import Any

from dte_dask import config
from dte_dask.exceptions import WorkersPausedError

logger = logging.getLogger("dte_dask.jobs")

MiB = 2**20


def paused_facts(dask_scheduler: Any) -> dict[str, Any]:
    """On the scheduler: each worker's status and memory, and how many tasks wait to run."""
    workers = [{"address": ws.address, "status": ws.status.name, "process": ws.memory.process,
                "unmanaged": ws.memory.unmanaged, "spilled": ws.memory.spilled, "limit": ws.memory_limit}
               for ws in dask_scheduler.workers.values()]
    waiting = (sum(len(ws.processing) for ws in dask_scheduler.workers.values())
               + len(dask_scheduler.queued) + len(dask_scheduler.unrunnable))
    return {"workers": workers, "waiting": waiting}


def all_paused(facts: dict[str, Any]) -> bool:
    """Every worker paused (and at least one), with tasks waiting for them."""
    ws = facts["workers"]
    return bool(ws) and facts["waiting"] > 0 and all(w["status"] == "paused" for w in ws)


def paused_message(facts: dict[str, Any], seconds: float) -> str:
    """What the user reads: each worker's memory, and the three ways out."""
    n = facts["waiting"]
    lines = [f"every worker has been paused by its memory limit for {seconds:.0f} s, with "
             f"{n} task{'s' if n != 1 else ''} waiting, so the job cannot go on:"]
    for w in facts["workers"]:
        limit = f"{w['limit'] / MiB:.0f} MiB" if w["limit"] else "no"
        lines.append(f"  {w['address']}: {w['process'] / MiB:.0f} MiB in use of a {limit} limit, "
                     f"{w['unmanaged'] / MiB:.0f} MiB of it unmanaged (the worker's own code, freed memory "
                     f"the allocator keeps, task leftovers), {w['spilled'] / MiB:.0f} MiB spilled to disk")
    lines.append("Spilling cannot free unmanaged memory. Give the workers more memory (the cluster "
                 "profile's memory_limit), or fewer threads per worker, or smaller partitions "
                 f"(dte_dask.partition-units, now {config.get('partition-units')}); or wait longer "
                 f"(dte_dask.paused-timeout, now {config.get('paused-timeout'):g} s).")
    return "\n".join(lines)


class PausedWorkersGuard:
    """Context manager: watch the cluster of ``client`` while the block runs (see the module).

    ``timeout`` (seconds all workers must stay paused; default ``dte_dask.paused-timeout``, 0 turns
    the guard off) and ``interval`` (seconds between looks at the scheduler).
    """

    def __init__(self, client: Any, timeout: float | None = None, interval: float = 1.0) -> None:
        self.client = client
        self.timeout = float(config.get("paused-timeout", timeout))
        self.interval = interval
        self.message: str | None = None  # set when the guard stopped the job
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._before: set[Any] = set()

    def __enter__(self) -> PausedWorkersGuard:
        if self.timeout > 0 and hasattr(self.client, "run_on_scheduler"):
            self._before = set(self.client.futures)
            self._thread = threading.Thread(target=self._watch, name="dte-dask-paused-guard", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.message is not None and exc is not None:
            raise WorkersPausedError(self.message) from exc

    def _watch(self) -> None:
        since: float | None = None
        while not self._stop.wait(self.interval):
            try:
                facts = self.client.run_on_scheduler(paused_facts)
            except Exception:  # noqa: BLE001 - a busy or closing scheduler: look again next time
                logger.debug("paused-workers guard: no answer from the scheduler", exc_info=True)
                continue
            if not all_paused(facts):
                since = None
                continue
            since = time.monotonic() if since is None else since
            if time.monotonic() - since >= self.timeout:
                self._trip(facts, time.monotonic() - since)
                return

    def _trip(self, facts: dict[str, Any], seconds: float) -> None:
        from distributed import Future

        self.message = paused_message(facts, seconds)
        logger.info("every worker paused for %.0f s: stopping the job", seconds)  # the error carries the rest
        keys = [k for k in list(self.client.futures) if k not in self._before]
        try:
            self.client.cancel([Future(k, self.client) for k in keys], reason="workers-paused",
                               msg=self.message)
        except Exception:  # noqa: BLE001 - the job fails with the message either way
            logger.debug("paused-workers guard: cancel failed", exc_info=True)
