"""Retention: finished jobs older than ``retain_days`` are deleted with their results folders.

:func:`purge` runs at startup and then every ``purge_interval_s`` in a :class:`Purger` thread.
Only finished jobs (``succeeded``, ``failed``, ``cancelled``, ``interrupted``) are purged, by the
time they ended. :func:`remove_results` is also what ``DELETE`` of a finished job and the
executor (partial outputs of a cancelled or stopped job) use: it removes a folder only if it lies
inside the service's results root.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

from dte_dask.service.store import JobStore

logger = logging.getLogger("dte_dask.service")


def remove_results(results_dir: str | os.PathLike[str] | None, results_root: Path) -> bool:
    """Delete ``results_dir`` (a job's folder) if it lies inside ``results_root``; whether it was there."""
    if not results_dir:
        return False
    path = Path(results_dir)
    try:
        real, root = path.resolve(), results_root.resolve()
    except (OSError, RuntimeError):
        return False
    if real == root or not real.is_relative_to(root) or not real.is_dir():
        return False
    shutil.rmtree(real, ignore_errors=True)
    return True


def purge(store: JobStore, results_root: Path, retain_days: float, now: float | None = None) -> int:
    """Delete finished jobs that ended more than ``retain_days`` ago; how many were deleted."""
    cutoff = (time.time() if now is None else now) - retain_days * 86400.0
    n = 0
    while True:
        batch = store.finished_before(cutoff)
        if not batch:
            return n
        for job_id, results_dir in batch:
            remove_results(results_dir, results_root)
            if store.delete(job_id):
                n += 1
        if len(batch) < 1000:
            return n


class Purger:
    """A daemon thread running :func:`purge` now and every ``interval_s`` until :meth:`stop`."""

    def __init__(self, store: JobStore, results_root: Path, retain_days: float, interval_s: float) -> None:
        self.store, self.root, self.days, self.interval = store, results_root, retain_days, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        try:
            n = purge(self.store, self.root, self.days)
        except Exception:  # a failed purge is retried at the next interval
            logger.exception("retention: purge failed")
            return 0
        if n:
            logger.info("retention: deleted %d finished job(s) older than %g day(s)", n, self.days)
        return n

    def start(self) -> None:
        self.run_once()
        self._thread = threading.Thread(target=self._loop, name="dte-dask-retention", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.run_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
