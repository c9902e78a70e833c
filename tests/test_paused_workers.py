"""A job whose workers all stay paused by their memory limit fails with their memory named, not hangs."""
from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import dask.config
import pytest
from distributed import LocalCluster

from dte_dask.exceptions import WorkersPausedError
from dte_dask.jobs.paused import all_paused, paused_message
from dte_dask.jobs.runner import run_job
from dte_dask.jobs.spec import parse_job

MiB = 2**20


def _facts(*statuses: str, waiting: int = 3) -> dict:
    return {"waiting": waiting, "workers": [
        {"address": f"tcp://10.0.0.{i}:8786", "status": s, "process": 380 * MiB, "unmanaged": 300 * MiB,
         "spilled": 64 * MiB, "limit": 400 * MiB} for i, s in enumerate(statuses)]}


@pytest.mark.parametrize("facts, stalled", [
    (_facts("paused", "paused"), True),
    (_facts("paused", "running"), False),  # one worker still runs tasks
    (_facts("paused", "paused", waiting=0), False),  # nothing waits for them: paused is harmless
    (_facts(), False),  # no workers at all (a queue that has not started them yet) is not this
])
def test_stalled_only_when_every_worker_is_paused_and_tasks_wait(facts, stalled):
    assert all_paused(facts) is stalled


def test_message_names_each_worker_and_the_ways_out():
    msg = paused_message(_facts("paused", "paused"), 181.4)
    assert "paused by its memory limit for 181 s, with 3 tasks waiting" in msg
    for i in range(2):
        assert (f"tcp://10.0.0.{i}:8786: 380 MiB in use of a 400 MiB limit, 300 MiB of it unmanaged" in msg
                and "64 MiB spilled to disk" in msg)
    assert "memory_limit" in msg and "dte_dask.partition-units" in msg and "dte_dask.paused-timeout" in msg


def _job(out: Path):
    return parse_job({"name": "paused", "data": {"source": "mpdta"}, "estimators": [{"kind": "att_gt"}],
                      "inference": {"bootstrap": False}, "output": os.fspath(out), "report": False})


# the worker pauses at 5% of its 1 GB limit, i.e. at once (its process holds more than 50 MB), and
# neither spills nor is restarted: it stays paused for good, as when unmanaged memory alone is too high
PAUSED_AT_ONCE = {"distributed.worker.memory.target": False, "distributed.worker.memory.spill": False,
                  "distributed.worker.memory.pause": 0.05, "distributed.worker.memory.terminate": False,
                  "dte_dask.paused-timeout": 2}


def _status(client, addr: str) -> str:
    return client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.workers[addr].status.name)


@contextlib.contextmanager
def _paused_cluster(**config):
    """An in-process cluster of one 1 GB worker, paused at once (:data:`PAUSED_AT_ONCE`, then
    ``config``): yields the cluster and its client."""
    with dask.config.set({**PAUSED_AT_ONCE, **config}), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=False, memory_limit="1GB",
                         dashboard_address=None) as lc, lc.get_client() as client:
        yield lc, client


def _wait_paused(client) -> str:
    (addr,) = client.scheduler_info()["workers"]
    deadline = time.monotonic() + 30
    while _status(client, addr) != "paused":
        assert time.monotonic() < deadline, "the worker did not pause"
        time.sleep(0.1)
    return addr


def test_job_on_paused_workers_fails_naming_their_memory(tmp_path: Path):
    with _paused_cluster() as (_, client):
        addr = _wait_paused(client)
        t0 = time.monotonic()
        with pytest.raises(WorkersPausedError) as err:
            run_job(_job(tmp_path / "out"), client=client, progress=False, echo=lambda s: None)
        took = time.monotonic() - t0
        assert _status(client, addr) == "paused"
    msg = str(err.value)
    assert "every worker has been paused by its memory limit for" in msg
    assert f"{addr}: " in msg and "MiB in use of a 954 MiB limit" in msg and "unmanaged" in msg
    assert took < 60  # it stopped; without the guard it waits forever
    assert not (tmp_path / "out" / "summary.json").exists()


def test_a_paused_worker_that_recovers_does_not_stop_the_job(tmp_path: Path):
    """Paused for less than the timeout, then running again: the job waits, then finishes."""
    with _paused_cluster(**{"dte_dask.paused-timeout": 30}) as (lc, client):
        addr = _wait_paused(client)
        (worker,) = lc.workers.values()
        # no pause line at all (the suite's process may hold more than the limit): the worker's
        # memory monitor resumes it at its next look
        timer = threading.Timer(4, setattr, (worker.memory_manager, "memory_pause_fraction", float("inf")))
        timer.start()
        t0 = time.monotonic()
        summary = run_job(_job(tmp_path / "out"), client=client, progress=False, echo=lambda s: None)
        assert time.monotonic() - t0 > 3.5  # it did wait for the paused worker
        assert _status(client, addr) == "running"
    assert summary["estimators"]["att_gt"]["overall"]["att"] is not None


def test_progress_bar_names_paused_workers():
    from dte_dask.jobs.progress import describe

    snap = {"added": {"panel-block": 10, "attgt-mboot": 4}, "done": {"panel-block": 10, "attgt-mboot": 1},
            "erred": 0, "workers": 2, "paused": 0}
    assert describe("[2/4] att_gt", snap) == "[2/4] att_gt: bootstrap"
    assert describe("[2/4] att_gt", {**snap, "paused": 2}) == "[2/4] att_gt: bootstrap (2/2 workers paused: memory)"


def test_progress_snapshot_counts_paused_workers(tmp_path: Path):
    from dte_dask.jobs.progress import PLUGIN_NAME, TaskCounter, _snapshot

    with _paused_cluster() as (_, client):
        _wait_paused(client)
        client.register_plugin(TaskCounter(), name=PLUGIN_NAME)
        snap = client.run_on_scheduler(_snapshot)
    assert snap["workers"] == 1 and snap["paused"] == 1


def test_service_job_on_paused_workers_fails_with_the_reason(tmp_path: Path):
    """The service runs jobs through run_job on a connection of their own: the guard stops them too."""
    from dte_dask.service.executor import JobExecutor
    from dte_dask.service.store import JobStore

    job_id = "a" * 32
    with _paused_cluster() as (_, client):
        _wait_paused(client)
        store = JobStore(tmp_path / "jobs.sqlite")
        ex = JobExecutor(store, client, max_concurrent=1, max_queued=1, prepare=lambda row: _job(tmp_path / "out"),
                         results_root=tmp_path / "results")
        ex.start()
        try:
            store.add(job_id, job_id, {}, os.fspath(tmp_path / "results" / job_id))
            ex.submit(job_id)
            deadline = time.monotonic() + 60
            while (row := store.get(job_id))["state"] not in ("succeeded", "failed", "cancelled"):
                assert time.monotonic() < deadline, row
                time.sleep(0.1)
        finally:
            ex.shutdown(5)
            store.close()
    assert row["state"] == "failed", row
    assert row["error"].startswith("WorkersPausedError: every worker has been paused by its memory limit"), row
    assert "MiB in use of a 954 MiB limit" in row["error"]
