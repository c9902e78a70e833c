"""Jobs survive what clusters do to them.

* A worker is SIGKILLed in the middle of the bootstrap (LocalCluster with nannies, 2 workers):
  the nanny starts a new one, the scheduler recomputes what was lost (panel blocks and
  bootstrap partials included), and the job's files are byte-for-byte those of an undisturbed
  run -- the multipliers are drawn per RNG block, not per worker or per attempt.
* A panel larger than the worker's memory limit is spilled to disk by the worker's memory
  manager and the job finishes, without the nanny ever restarting the worker. The limits of
  this (what must still fit in memory) are in docs/cluster.md.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import dask.config
import pytest

from dte_dask.cluster import connect
from dte_dask.jobs.runner import run_job
from dte_dask.jobs.spec import parse_job

pytestmark = [pytest.mark.filterwarnings("ignore:Port 8787 is already in use")]


def _sim_job(out: Path, units: int, periods: int, *, n_boot: int, npartitions: int | None = None) -> Any:
    data: dict[str, Any] = {"source": "simulate", "simulate": {"units": units, "periods": periods, "seed": 11}}
    if npartitions:
        data["npartitions"] = npartitions
    return parse_job({"name": "ft", "data": data, "estimators": [{"kind": "att_gt"}],
                      "inference": {"bootstrap": True, "n_boot": n_boot, "seed": 2024},
                      "cluster": {"performance_report": False}, "output": os.fspath(out), "report": False})


def _result_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "estimators").iterdir())}


# --------------------------------------------------------------------------------------------
# a worker dies during the bootstrap
# --------------------------------------------------------------------------------------------
def _influence_tasks(dask_scheduler: Any) -> dict[str, Any]:
    from dask.utils import key_split

    done: dict[str, int] = {}
    running: dict[str, int] = {}
    for ts in dask_scheduler.tasks.values():
        if key_split(ts.key) != "attgt-influence":
            continue
        if ts.state == "memory":
            for ws in ts.who_has:
                done[ws.address] = done.get(ws.address, 0) + 1
        elif ts.state == "processing" and ts.processing_on is not None:
            running[ts.processing_on.address] = running.get(ts.processing_on.address, 0) + 1
    return {"done": done, "running": running}


def _executing_influence(dask_worker: Any) -> bool:
    from dask.utils import key_split

    return any(key_split(ts.key) == "attgt-influence" for ts in dask_worker.state.executing)


def test_worker_killed_mid_bootstrap_gives_identical_results(tmp_path: Path) -> None:
    units, nparts = 400_000, 8
    with connect("local", n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0") as client:
        assert all(w.get("type") == "Worker" for w in client.scheduler_info()["workers"].values())
        run_job(_sim_job(tmp_path / "calm", units, 8, n_boot=999, npartitions=nparts), client=client,
                progress=False, echo=lambda s: None)
        pids = client.run(os.getpid)
        assert len(pids) == 2
        killed: dict[str, Any] = {}
        stop = threading.Event()

        def killer() -> None:
            """SIGKILL a worker that holds finished bootstrap partials and is computing another."""
            while not stop.is_set():
                try:
                    tasks = client.run_on_scheduler(_influence_tasks)
                    victims = [a for a in tasks["running"] if tasks["done"].get(a) and a in pids]
                    for addr in victims:
                        if client.run(_executing_influence, workers=[addr]).get(addr):
                            killed.update(addr=addr, pid=pids[addr], tasks=tasks)
                            os.kill(pids[addr], signal.SIGKILL)
                            return
                except Exception:  # noqa: BLE001 - scheduler busy; try again
                    pass
                time.sleep(0.02)

        th = threading.Thread(target=killer, daemon=True, name="killer")
        th.start()
        try:
            summary = run_job(_sim_job(tmp_path / "killed", units, 8, n_boot=999, npartitions=nparts),
                              client=client, progress=True, echo=lambda s: None)
        finally:
            stop.set()
            th.join(timeout=10)
        assert killed, "the bootstrap finished before a worker could be killed (make the job longer)"
        client.wait_for_workers(2, timeout=60)
        after = client.run(os.getpid)
    assert killed["pid"] not in after.values() and len(after) == 2  # the nanny started a new worker
    assert summary["metadata"]["panel_shape"]["partitions"] == nparts
    calm, disturbed = _result_files(tmp_path / "calm"), _result_files(tmp_path / "killed")
    assert set(calm) == set(disturbed) and len(calm) >= 6
    for name in calm:  # estimates, bootstrap SEs, uniform bands, aggregations: every byte
        assert disturbed[name] == calm[name], name


# --------------------------------------------------------------------------------------------
# a panel larger than the worker's memory
# --------------------------------------------------------------------------------------------
def _memory_facts(dask_worker: Any) -> dict[str, Any]:
    import os

    import psutil

    spilled = dask_worker.data.spilled_total
    written = dask_worker.digests_total.get(("memory-monitor", "disk-write", "bytes"), 0)
    return {"pid": os.getpid(), "rss": psutil.Process().memory_info().rss, "disk": int(spilled.disk),
            "written": float(written), "limit": dask_worker.memory_manager.memory_limit,
            "status": dask_worker.status.name}


MEMORY_LIMIT = 600_000_000  # per worker: 200-240 MB of it is the worker's own code and heap
SPILL_CONFIG = {
    # spill earlier than distributed's defaults (0.6 / 0.7 / 0.8), from 50% down to 45%: a task then
    # starts at most ~300 MB in and has ~270 MB before the nanny's 95%. (With a 400 MB limit the
    # worker was restarted in 2 of 9 runs in a fresh CI venv, where it starts ~240 MB in and tasks
    # reached 345 MB; with distributed's defaults, here too.)
    "distributed.worker.memory.target": 0.45,
    "distributed.worker.memory.spill": 0.5,
    "distributed.worker.memory.pause": 0.85,
    "distributed.worker.memory.terminate": 0.95,
    # small partitions (one RNG block of units): what a task holds at once stays far below the limit
    "dte_dask.partition-units": 16384,
}


def test_panel_larger_than_worker_memory_spills_and_finishes(tmp_path: Path) -> None:
    units, periods = 3_300_000, 20
    panel_bytes = units * (8 * periods + 32)  # wide blocks: y (n x T) + ids, rank, g, w
    assert panel_bytes > MEMORY_LIMIT
    peak = {"rss": 0, "disk": 0}
    with dask.config.set(SPILL_CONFIG), connect(
            "local", n_workers=1, threads_per_worker=1, memory_limit=MEMORY_LIMIT, dashboard_address="127.0.0.1:0",
            local_directory=os.fspath(tmp_path / "spill")) as client:
        (addr, before), = client.run(_memory_facts).items()
        assert before["limit"] == MEMORY_LIMIT
        stop = threading.Event()

        def monitor() -> None:
            while not stop.wait(0.5):
                try:
                    f = client.run(_memory_facts, workers=[addr])[addr]
                except Exception:  # noqa: BLE001 - busy; next time
                    continue
                peak["rss"], peak["disk"] = max(peak["rss"], f["rss"]), max(peak["disk"], f["disk"])

        th = threading.Thread(target=monitor, daemon=True, name="memory-monitor")
        th.start()
        try:
            t0 = time.perf_counter()
            summary = run_job(_sim_job(tmp_path / "res", units, periods, n_boot=19), client=client,
                              progress=False, echo=lambda s: None)
            elapsed = time.perf_counter() - t0
        finally:
            stop.set()
            th.join(timeout=10)
        after = client.run(_memory_facts)
    assert list(after) == [addr] and after[addr]["pid"] == before["pid"], "the worker was restarted"
    shape = summary["metadata"]["panel_shape"]
    assert shape["units"] == units and shape["rows"] == units * periods
    assert summary["estimators"]["att_gt"]["overall"]["att"] is not None
    # more than the memory limit went to disk, and was on disk at one time
    assert after[addr]["written"] > MEMORY_LIMIT, after
    assert peak["disk"] > MEMORY_LIMIT - before["rss"], (peak, before)
    assert peak["rss"] < 0.95 * MEMORY_LIMIT, peak
    print(f"spilled job: {elapsed:.1f} s, peak RSS {peak['rss'] / 1e6:.0f} MB, "
          f"peak on disk {peak['disk'] / 1e6:.0f} MB, written {after[addr]['written'] / 1e6:.0f} MB")
