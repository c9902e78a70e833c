"""Start the real ``dte-dask serve`` in a subprocess on 127.0.0.1 and talk to it over HTTP.

Used by tests/test_service*.py. The server runs on a small threads-only LocalCluster (one
worker, two threads), binds port 0 and the tests read the address from its log.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

TOKEN = "test-token-" + "0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FINAL = ("succeeded", "failed", "cancelled", "interrupted")

PROFILE = """\
kind: local
wait_timeout: 60
cluster:
  n_workers: 1
  threads_per_worker: 2
  processes: false
  dashboard_address: null
"""

# a job that runs for minutes unless cancelled (20 estimators on 100k units x 8 periods, 20k draws)
LONG_JOB = {
    "name": "long",
    "data": {"source": "simulate", "npartitions": 8, "simulate": {"units": 100_000, "periods": 8, "seed": 1}},
    "estimators": [{"kind": "att_gt", "name": f"e{i}"} for i in range(20)],
    "inference": {"bootstrap": True, "n_boot": 20_000, "seed": 1},
    "report": False,
    "cluster": {"performance_report": False},
}


def small_job(i: int = 0, **over: Any) -> dict[str, Any]:
    """A job that takes a fraction of a second: 200 simulated units, no bootstrap, no reports."""
    job = {
        "name": f"small-{i}",
        "data": {"source": "simulate", "simulate": {"units": 200, "periods": 4, "seed": i}},
        "estimators": [{"kind": "att_gt"}],
        "inference": {"bootstrap": False},
        "report": False,
        "cluster": {"performance_report": False},
    }
    job.update(over)
    return job


class Server:
    """One ``python -m dte_dask.service`` process; ``start()`` waits until /health says ok."""

    def __init__(self, workdir: Path, *, db: Path | None = None, args: tuple[str, ...] = (),
                 max_concurrent: int = 2, memory_cap: int | None = None, verify: Any = True) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.profile = self.workdir / "profile.yaml"
        self.profile.write_text(PROFILE)
        self.db = db or self.workdir / "state" / "jobs.sqlite"
        self.args = tuple(args)
        self.max_concurrent = max_concurrent
        self.memory_cap = memory_cap  # RLIMIT_AS of the server process (bytes), if set
        self.verify = verify  # httpx's TLS verification (a CA file for --ssl-certfile servers)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log_path = self.workdir / "server.log"
        self._starts = 0

    def start(self, timeout: float = 90) -> Server:
        self._starts += 1
        self.log_path = self.workdir / f"server-{self._starts}.log"
        env = {**os.environ, "DTE_DASK_TOKEN": TOKEN}
        if self.memory_cap:  # fewer thread pools and malloc arenas: the address space stays near the heap
            env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
        launcher = ["-m", "dte_dask.service"]
        if self.memory_cap:  # the cap is set in the server process itself, before the service is imported
            code = ("import resource, runpy, sys; "
                    f"resource.setrlimit(resource.RLIMIT_AS, ({self.memory_cap}, {self.memory_cap})); "
                    "sys.argv[0] = 'dte-dask serve'; runpy.run_module('dte_dask.service', run_name='__main__')")
            launcher = ["-c", code]
        cmd = [sys.executable, *launcher, "--profile", str(self.profile), "--host", "127.0.0.1",
               "--port", "0", "--db", str(self.db), "--max-concurrent", str(self.max_concurrent),
               "--log-level", "info", *self.args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            m = re.search(r"ready on (https?://127\.0\.0\.1:\d+)", self.log())
            if m:
                self.url = m.group(1)
                try:
                    if httpx.get(self.url + "/health", timeout=5, verify=self.verify).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"server not ready within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (graceful: jobs stop, the cluster closes), SIGKILL if it does not exit."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL: the process dies on the spot, as in a crash (its LocalCluster is in-process)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def client(self, token: str | None = TOKEN, timeout: float = 30) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout, verify=self.verify)


def submit(http: httpx.Client, job: dict[str, Any]) -> str:
    r = http.post("/jobs", json=job)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def wait_for(http: httpx.Client, job_id: str, states: tuple[str, ...] = FINAL, timeout: float = 120,
             until: Any = None) -> dict[str, Any]:
    """Poll GET /jobs/{id} until its state is in ``states`` (and ``until(info)`` holds)."""
    deadline = time.monotonic() + timeout
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = http.get(f"/jobs/{job_id}")
        assert r.status_code == 200, r.text
        info = r.json()
        if info["state"] in states and (until is None or until(info)):
            return info
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not in {states} within {timeout} s: {info}")


def metrics(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from dte_dask.service.metrics import parse_text

    r = http.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse_text(r.text)
