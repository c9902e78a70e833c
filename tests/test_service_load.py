"""A small, bounded load test on loopback: 50 small jobs submitted 8 at a time.

All are accepted, all finish, none is lost or duplicated, and ``/metrics`` counts them (by
state in the store, by final state and in the duration histogram of this process). Loopback
only (127.0.0.1); at most 50 submissions plus polling, the whole test bounded by ``BUDGET_S``.
"""
from __future__ import annotations

import concurrent.futures
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from .service_helpers import FINAL, Server, metrics, small_job

N_JOBS = 50
SUBMITTERS = 8
BUDGET_S = 150


def test_fifty_small_jobs_eight_at_a_time(tmp_path) -> None:  # type: ignore[no-untyped-def]
    srv = Server(tmp_path / "svc", max_concurrent=4)
    srv.start()
    t0 = time.monotonic()
    try:
        assert srv.url.startswith("http://127.0.0.1:")

        def one(i: int) -> tuple[int, str, float]:
            with srv.client(timeout=30) as http:
                t = time.monotonic()
                r = http.post("/jobs", json=small_job(i))
                assert r.status_code == 202, r.text
                return i, r.json()["id"], time.monotonic() - t

        with concurrent.futures.ThreadPoolExecutor(SUBMITTERS) as pool:
            submitted = list(pool.map(one, range(N_JOBS)))
        ids = [job_id for _, job_id, _ in submitted]
        assert len(set(ids)) == N_JOBS
        assert max(lat for *_, lat in submitted) < 10  # submitting does not wait for jobs

        with srv.client() as http:
            deadline = t0 + BUDGET_S
            while True:
                listing = http.get("/jobs", params={"limit": 100}).json()
                states = {j["id"]: j["state"] for j in listing["jobs"]}
                if all(states.get(i) in FINAL for i in ids):
                    break
                assert time.monotonic() < deadline, f"not all finished within {BUDGET_S} s: {states}"
                time.sleep(0.5)
            assert listing["total"] == N_JOBS and set(states) == set(ids)  # none lost, none extra
            assert all(s == "succeeded" for s in states.values()), states
            names = {j["name"] for j in listing["jobs"]}
            assert names == {f"small-{i}" for i in range(N_JOBS)}
            # the concurrency limit held, and was used
            import datetime as dt

            events = []
            for j in listing["jobs"]:
                events += [(dt.datetime.fromisoformat(j["started_at"]), 1), (dt.datetime.fromisoformat(j["finished_at"]), -1)]
            running, peak = 0, 0
            for _, step in sorted(events, key=lambda e: (e[0], e[1])):
                running += step
                peak = max(peak, running)
            assert 2 <= peak <= 4, peak
            # each has its own results
            for job in listing["jobs"][:5]:
                files = {f["name"] for f in http.get(f"/jobs/{job['id']}/results").json()["files"]}
                assert "summary.json" in files and "estimators/att_gt.csv" in files

            m = metrics(http)
            assert m[("dte_dask_jobs", (("state", "succeeded"),))] == N_JOBS
            for state in ("queued", "running", "failed", "cancelled", "interrupted"):
                assert m[("dte_dask_jobs", (("state", state),))] == 0
            assert m[("dte_dask_jobs_submitted_total", ())] == N_JOBS
            assert m[("dte_dask_jobs_finished_total", (("state", "succeeded"),))] == N_JOBS
            assert m[("dte_dask_job_duration_seconds_count", (("state", "succeeded"),))] == N_JOBS
            assert m[("dte_dask_job_duration_seconds_bucket", (("le", "+Inf"), ("state", "succeeded")))] == N_JOBS
            assert m[("dte_dask_job_queue_seconds_count", ())] == N_JOBS
            assert m[("dte_dask_job_queue_seconds_sum", ())] > 0  # 50 jobs, 4 slots: some waited
            assert m[("dte_dask_jobs_running", ())] == 0 and m[("dte_dask_queue_length", ())] == 0
            assert m[("dte_dask_max_concurrent_jobs", ())] == 4
            assert m[("dte_dask_cluster_up", ())] == 1
            assert m[("dte_dask_cluster_workers", ())] == 1 and m[("dte_dask_cluster_threads", ())] == 2
            assert m[("dte_dask_cluster_memory_limit_bytes", ())] > 0
            assert m[("dte_dask_cluster_memory_used_bytes", ())] > 0
            assert http.get("/health").status_code == 200
        assert "Exception in ASGI application" not in srv.log()
    finally:
        srv.stop()
