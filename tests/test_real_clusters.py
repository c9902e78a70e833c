"""ATT(g,t) on real clusters gives exactly the LocalCluster result.

* ``slurm``: a single-node Slurm (munged + slurmctld + slurmd) -- two ``SLURMCluster`` jobs,
  started from the shipped ``slurm`` and ``slurm-numa`` profiles (TLS, numactl-prefixed python).
* ``ssh``: a private sshd on 127.0.0.1 -- an ``SSHCluster`` with two workers from the shipped
  ``ssh`` profile (TLS); a plain-TCP client is refused by the TLS scheduler.

Start the services with ``.ci/services.sh start`` (root or sudo; installs what is missing).
Each test is skipped, with the reason, when its service is not running. The tests find the
services through ``$LOCAL_SLURM_DIR/env`` and ``$LOCAL_SSHD_DIR/env`` (defaults
``/tmp/local-slurm`` and ``/tmp/local-sshd``, written by the scripts in
``cluster_configs/testing/``) unless the variables are already in the environment.
"""
from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import dte_dask
from dte_dask.cluster import connect
from dte_dask.cluster.security import generate_certificates

pytestmark = [pytest.mark.filterwarnings("ignore:Port 8787 is already in use")]

START_HINT = "start it with `.ci/services.sh start` (root/sudo)"
SLURM_DIR = Path(os.environ.get("LOCAL_SLURM_DIR", "/tmp/local-slurm"))
SSHD_DIR = Path(os.environ.get("LOCAL_SSHD_DIR", "/tmp/local-sshd"))


def _read_env_file(path: Path) -> dict[str, str]:
    """``export A=1 B=2`` lines -> ``{"A": "1", "B": "2"}`` (the scripts' env files)."""
    out: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "export":
            words = words[1:]
        for w in words:
            k, sep, v = w.partition("=")
            if sep and k.isidentifier():
                out[k] = v
    return out


# --------------------------------------------------------------------------------------------
# service discovery
# --------------------------------------------------------------------------------------------
def _slurmctld_address(conf: Path) -> tuple[str, int] | None:
    """(host, port) of the first SlurmctldHost in a slurm.conf, None if unknown."""
    try:
        text = conf.read_text()
    except OSError:
        return None
    host, port = None, 6817
    for line in text.splitlines():
        key, sep, value = line.split("#", 1)[0].strip().partition("=")
        if not sep:
            continue
        if key.lower() in ("slurmctldhost", "controlmachine") and host is None:
            name, _, addr = value.strip().partition("(")
            host = addr.rstrip(")") or name
        elif key.lower() == "slurmctldport":
            port = int(value.split("-")[0])
    return (host, port) if host else None


def _slurm_env() -> tuple[dict[str, str], str | None]:
    """(variables to set, skip reason or None)."""
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        return {}, "dask-jobqueue is not installed (pip install 'dte_dask[slurm]')"
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return {}, f"Slurm client commands (sbatch/sinfo) are not installed; {START_HINT}"
    env = {}
    if "SLURM_CONF" not in os.environ:
        env = {k: v for k, v in _read_env_file(SLURM_DIR / "env").items() if k == "SLURM_CONF"}
    # a dead slurmctld makes sinfo retry for ~10 s: knock on its port first
    conf = Path(env.get("SLURM_CONF") or os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf")
    ctld = _slurmctld_address(conf)
    if ctld is not None:
        try:
            socket.create_connection(ctld, timeout=2).close()
        except OSError as exc:
            return {}, f"slurmctld is not listening on {ctld[0]}:{ctld[1]} ({exc}); {START_HINT}"
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                              timeout=15, env={**os.environ, **env})
    except subprocess.TimeoutExpired:
        return {}, f"Slurm is not running (sinfo timed out); {START_HINT}"
    states = proc.stdout.split()
    if proc.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mixed") for s in states):
        why = (proc.stderr.strip().splitlines() or [f"node states {states}"])[-1]
        return {}, f"Slurm is not running or has no idle node ({why}); {START_HINT}"
    return env, None


def _ssh_env() -> tuple[dict[str, str], str | None]:
    try:
        import asyncssh  # noqa: F401
    except ImportError:
        return {}, "asyncssh is not installed (pip install 'dte_dask[ssh]')"
    keys = ("LOCAL_SSHD_HOST", "LOCAL_SSHD_PORT", "LOCAL_SSHD_USER", "LOCAL_SSHD_KEY",
            "LOCAL_SSHD_KNOWN_HOSTS")
    env = {k: os.environ[k] for k in keys if k in os.environ}
    if len(env) < len(keys):
        env = {k: v for k, v in _read_env_file(SSHD_DIR / "env").items() if k in keys}
    if len(env) < len(keys):
        return {}, f"no loopback sshd ({SSHD_DIR}/env missing); {START_HINT}"
    try:
        with socket.create_connection((env["LOCAL_SSHD_HOST"], int(env["LOCAL_SSHD_PORT"])),
                                      timeout=3) as s:
            banner = s.recv(64)
    except OSError as exc:
        return {}, (f"sshd is not listening on {env['LOCAL_SSHD_HOST']}:"
                    f"{env['LOCAL_SSHD_PORT']} ({exc}); {START_HINT}")
    if not banner.startswith(b"SSH-"):
        return {}, f"{env['LOCAL_SSHD_HOST']}:{env['LOCAL_SSHD_PORT']} is not an SSH server"
    return env, None


@pytest.fixture(scope="module")
def slurm_service():
    env, reason = _slurm_env()
    if reason:
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield


@pytest.fixture(scope="module")
def ssh_service():
    env, reason = _ssh_env()
    if reason:
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield env


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("tls")
    generate_certificates(d)
    return os.fspath(d)


# --------------------------------------------------------------------------------------------
# the estimate and its reference
# --------------------------------------------------------------------------------------------
def _estimate(client: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """att_gt with the bootstrap on mpdta, checked to have run on the client's workers."""
    from distributed import get_task_stream

    df = dte_dask.datasets.load_mpdta()
    with get_task_stream(client) as ts:
        res = dte_dask.att_gt(df, outcome="lemp", unit="countyreal", time="year",
                              group="first_treat", bootstrap=True, n_boot=199, seed=1)
        cells = res.to_frame()
        dyn = res.aggregate("dynamic").to_frame()
    workers = {t["worker"] for t in ts.data}
    assert ts.data and workers <= set(client.scheduler_info()["workers"]), workers
    return cells, dyn


def _assert_same(got: tuple[pd.DataFrame, pd.DataFrame],
                 ref: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    cells, dyn = got
    ref_cells, ref_dyn = ref
    np.testing.assert_array_equal(cells[["group", "time"]].to_numpy(),
                                  ref_cells[["group", "time"]].to_numpy())
    np.testing.assert_array_equal(cells["estimate"].to_numpy(), ref_cells["estimate"].to_numpy())
    np.testing.assert_array_equal(cells["se"].to_numpy(), ref_cells["se"].to_numpy())
    np.testing.assert_array_equal(dyn["event_time"].to_numpy(), ref_dyn["event_time"].to_numpy())
    for col in ("estimate", "se", "ci_lower", "ci_upper", "band_lower", "band_upper"):
        np.testing.assert_array_equal(dyn[col].to_numpy(), ref_dyn[col].to_numpy(), err_msg=col)


@pytest.fixture(scope="module")
def local_reference() -> tuple[pd.DataFrame, pd.DataFrame]:
    with connect("local", n_workers=2, threads_per_worker=1,
                 dashboard_address="127.0.0.1:0") as client:
        return _estimate(client)


# --------------------------------------------------------------------------------------------
# slurm
# --------------------------------------------------------------------------------------------
@pytest.mark.slurm
@pytest.mark.parametrize("profile", ["slurm", "slurm-numa"])
def test_slurm_two_jobs_match_local(slurm_service, local_reference, tls_dir, tmp_path,
                                    profile) -> None:
    with connect(profile, jobs=2, log_directory=os.fspath(tmp_path / "logs"),
                 local_directory=os.fspath(tmp_path / "dask"),
                 security={"tls": True, "directory": tls_dir},
                 scheduler_options={"dashboard_address": "127.0.0.1:0"},
                 wait_timeout=60) as client:
        assert client.scheduler.address.startswith("tls://")
        def worker_facts() -> dict[str, Any]:
            # nested: pickled by value (workers cannot import this test module)
            import os
            import socket

            return {"job": os.environ.get("SLURM_JOB_ID"), "pid": os.getpid(),
                    "host": socket.gethostname()}

        facts = client.run(worker_facts)
        assert len(facts) == 2
        assert len({f["job"] for f in facts.values()}) == 2, facts  # two distinct Slurm jobs
        assert all(f["job"] for f in facts.values())
        script = client.cluster.job_script()
        assert ("numactl --cpunodebind=" in script) == (profile == "slurm-numa")
        got = _estimate(client)
    _assert_same(got, local_reference)


# --------------------------------------------------------------------------------------------
# ssh
# --------------------------------------------------------------------------------------------
@pytest.mark.ssh
def test_ssh_two_workers_match_local_with_tls(ssh_service, local_reference, tls_dir,
                                              tmp_path) -> None:
    from distributed import Client
    from distributed.security import Security

    with connect("ssh", security={"tls": True, "directory": tls_dir},
                 scheduler_options={"dashboard_address": "127.0.0.1:0"},
                 wait_timeout=60) as client:
        addr = client.scheduler.address
        assert addr.startswith("tls://")
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2 and all(w.startswith("tls://") for w in workers)
        if shutil.which("numactl"):
            # numactl: auto -> the workers were started through numactl on this host
            pythons = [w.remote_python for w in client.cluster.workers.values()]
            assert all(" numactl --cpunodebind=0 --membind=0 " in f" {p}" for p in pythons), \
                pythons
        got = _estimate(client)

        # a plain-TCP client is refused by the TLS scheduler ...
        with pytest.raises((OSError, TimeoutError)):
            Client(addr.replace("tls://", "tcp://"), timeout="3s", set_as_default=False)
        # ... and so is a TLS client whose certificate another CA signed (mutual TLS)
        other = generate_certificates(tmp_path / "other-ca")
        stranger = Security(tls_ca_file=os.path.join(tls_dir, "ca.pem"),
                            tls_client_cert=other.cert, tls_client_key=other.key,
                            require_encryption=True)
        with pytest.raises((OSError, TimeoutError)):
            Client(addr, security=stranger, timeout="3s", set_as_default=False)
        # while the TLS connection still works
        assert client.submit(sum, [1, 2]).result() == 3
    _assert_same(got, local_reference)
