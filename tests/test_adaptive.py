"""Adaptive clusters (profile key ``adapt: {minimum, maximum}``): workers are added while a job's
tasks queue and released when idle, on a LocalCluster and on the local single-node Slurm."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from dte_dask.cluster import connect
from dte_dask.cluster.profiles import expected_workers, resolve_profile
from dte_dask.cluster.schema import ProfileError

from .test_real_clusters import slurm_service, tls_dir  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.filterwarnings("ignore:Port 8787 is already in use")]
FAST = {"interval": "200ms", "wait_count": 3, "target_duration": "1s"}


def _sleep(x: float) -> float:
    import time as _t

    _t.sleep(x)
    return x


def _wait_for(pred, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - t0


def _n_workers(client) -> int:  # type: ignore[no-untyped-def]
    return len(client.scheduler_info(n_workers=-1)["workers"])


def test_adapt_schema() -> None:
    r = resolve_profile("local", adapt={"minimum": 1, "maximum": 4})
    assert r.spec.adapt.maximum == 4 and expected_workers(r) == 1
    assert expected_workers(resolve_profile("slurm", adapt={"maximum": 3})) == 0
    with pytest.raises(ProfileError, match=r"adapt.*minimum \(5\) must not exceed maximum \(2\)"):
        resolve_profile("local", adapt={"minimum": 5, "maximum": 2})
    with pytest.raises(ProfileError, match="adapt.*maximum"):
        resolve_profile("local", adapt={"minimum": 1})
    with pytest.raises(ProfileError, match=r"interval: 'soon' is not a duration"):
        resolve_profile("local", adapt={"maximum": 2, "interval": "soon"})
    with pytest.raises(ProfileError, match="adaptive scaling is available for local and slurm"):
        resolve_profile("ssh", adapt={"maximum": 2})
    with pytest.raises(ProfileError, match="pin_cpus"):
        resolve_profile("local", adapt={"maximum": 2}, pin_cpus=True)
    with pytest.raises(ProfileError, match="adapt.maxworkers"):
        resolve_profile("local", adapt={"maximum": 2, "maxworkers": 3})


def test_local_cluster_scales_out_and_back() -> None:
    with connect("local", adapt={"minimum": 0, "maximum": 2, **FAST}, processes=False,
                 threads_per_worker=1, dashboard_address=None) as client:
        assert _n_workers(client) == 0
        futures = client.map(_sleep, [0.5] * 12, pure=False)
        _wait_for(lambda: _n_workers(client) >= 1, 30, "a worker while 12 tasks queue")
        assert sum(client.gather(futures)) == pytest.approx(6.0)
        peak = _n_workers(client)
        assert 1 <= peak <= 2
        del futures
        _wait_for(lambda: _n_workers(client) == 0, 30, "the idle workers to be released")


@pytest.mark.slurm
def test_slurm_jobs_follow_the_queue(slurm_service, tls_dir, tmp_path) -> None:  # noqa: F811
    def jobs() -> int:
        out = subprocess.run(["squeue", "-h", "-u", os.environ.get("USER", "root"), "-n", "dask-worker",
                              "-o", "%i"], capture_output=True, text=True, check=True).stdout
        return len(out.split())

    before = jobs()
    with connect("slurm", adapt={"minimum": 0, "maximum": 2, **FAST}, log_directory=os.fspath(tmp_path / "logs"),
                 local_directory=os.fspath(tmp_path / "dask"), security={"tls": True, "directory": tls_dir},
                 scheduler_options={"dashboard_address": "127.0.0.1:0"}, wait_timeout=60) as client:
        assert _n_workers(client) == 0 and jobs() == before  # nothing submitted while idle
        futures = client.map(_sleep, [1.0] * 8, pure=False)
        _wait_for(lambda: _n_workers(client) >= 1, 90, "a Slurm worker job while tasks queue")
        assert jobs() >= before + 1
        assert sum(client.gather(futures)) == pytest.approx(8.0)
        del futures
        _wait_for(lambda: _n_workers(client) == 0, 60, "the idle worker jobs to be released")
        _wait_for(lambda: jobs() == before, 60, "squeue to drop the released jobs")
