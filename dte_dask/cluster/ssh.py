"""The ``ssh`` profile kind: ``distributed.deploy.ssh.SSHCluster``, with an optional NUMA probe of
the worker hosts (``numactl`` prefixes per host) and TLS settings passed on through dask config."""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

import dask.config

from dte_dask.cluster.env import env_prefix, remote_env, worker_env_defaults
from dte_dask.cluster.schema import ProfileError

logger = logging.getLogger(__name__)

__all__ = ["security_config", "PROBE_CMD", "parse_probe", "probe_hosts", "ssh_numa_remote_python",
           "expand_connect", "start", "expected_workers", "scale", "timeout_hint"]


def security_config(sec: Any) -> dict[str, Any]:
    """``dask.config`` equivalent of a Security object (inherited by remote SSH processes)."""
    cfg: dict[str, Any] = {"distributed.comm.require-encryption": bool(sec.require_encryption)}
    if sec.tls_ca_file:
        cfg["distributed.comm.tls.ca-file"] = sec.tls_ca_file
    for role in ("scheduler", "worker", "client"):
        cert = getattr(sec, f"tls_{role}_cert", None)
        key = getattr(sec, f"tls_{role}_key", None)
        if cert:
            cfg[f"distributed.comm.tls.{role}.cert"] = cert
        if key:
            cfg[f"distributed.comm.tls.{role}.key"] = key
    for name in ("ca-file", "scheduler.cert", "worker.cert", "client.cert"):
        v = cfg.get(f"distributed.comm.tls.{name}")
        if isinstance(v, str) and "-----BEGIN" in v:
            logger.warning("TLS material held in memory is handed to remote SSH processes "
                           "through their command line; prefer certificate files")
            break
    return cfg


PROBE_CMD = (
    "if command -v numactl >/dev/null 2>&1; then echo numactl=yes; else echo numactl=no; fi; "
    "for d in /sys/devices/system/node/node[0-9]*; do "
    "[ -r \"$d/cpulist\" ] && [ -n \"$(tr -d '[:space:]' < \"$d/cpulist\")\" ] "
    "&& echo \"node=${d##*node}\"; done; true"
)


def parse_probe(text: str) -> tuple[bool, list[int]]:
    has = "numactl=yes" in text
    nodes = sorted(int(line[5:]) for line in text.splitlines()
                   if line.startswith("node=") and line[5:].strip().isdigit())
    return has, nodes


def probe_hosts(hosts: list[str], options: list[dict[str, Any]]
                 ) -> dict[str, tuple[bool, list[int]]]:
    """``{host: (numactl on PATH, NUMA nodes with CPUs)}`` over SSH, one connection per host."""
    import asyncssh

    async def one(host: str, opts: dict[str, Any]) -> tuple[str, tuple[bool, list[int]]]:
        try:
            async with asyncssh.connect(host, **opts) as conn:
                r = await conn.run(PROBE_CMD, check=False)
        except (OSError, asyncssh.Error) as exc:
            port = opts.get("port", 22)
            raise ProfileError(f"cannot log in to {host}:{port} over SSH to look for numactl "
                               f"({type(exc).__name__}: {exc}); check connect_options, or "
                               "set numactl: never") from exc
        return host, parse_probe(str(r.stdout or ""))

    async def all_hosts() -> dict[str, tuple[bool, list[int]]]:
        seen: dict[str, dict[str, Any]] = {}
        for h, o in zip(hosts, options, strict=False):
            seen.setdefault(h, o)
        res = await asyncio.gather(*(one(h, o) for h, o in seen.items()))
        return dict(res)

    # a fresh event loop in a helper thread: callers may already be inside one
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, all_hosts()).result()


def ssh_numa_remote_python(hosts: list[str], remote_python: list[str],
                           probe: Mapping[str, tuple[bool, list[int]]], mode: str) -> list[str]:
    """Per-host ``remote_python`` with a numactl prefix for the worker entries.

    ``hosts[0]`` (the scheduler) is left alone. The k-th worker entry of a host is bound to
    that host's k-th NUMA node (round robin) with ``numactl --cpunodebind=N --membind=N``.

    Raises
    ------
    ProfileError
        ``mode="always"`` and a worker host has no numactl.
    """
    out = [remote_python[0]]
    seen: dict[str, int] = {}
    for host, py in zip(hosts[1:], remote_python[1:], strict=False):
        has, nodes = probe.get(host, (False, []))
        if mode == "always" and not has:
            raise ProfileError(f"numactl: always, but host {host!r} has no numactl on PATH "
                               "(apt-get install numactl, or use numactl: auto)")
        if has and nodes:
            k = seen.get(host, 0)
            seen[host] = k + 1
            node = nodes[k % len(nodes)]
            out.append(f"numactl --cpunodebind={node} --membind={node} {py}")
        else:
            out.append(py)
    return out


def expand_connect(opts: dict[str, Any]) -> dict[str, Any]:
    out = dict(opts)
    for k in ("client_keys", "config"):
        if out.get(k):
            out[k] = [os.path.expanduser(p) for p in out[k]]
    for k in ("known_hosts", "agent_path"):
        if isinstance(out.get(k), str):
            out[k] = os.path.expanduser(out[k])
    return out


def start(resolved: Any, security: Any) -> Any:
    """Start the SSHCluster of a resolved ``ssh`` profile."""
    try:
        import asyncssh  # noqa: F401
        from distributed.deploy.ssh import SSHCluster
    except ImportError as exc:
        raise ProfileError("SSH profiles need asyncssh: pip install 'dte_dask[ssh]' "
                           f"(or asyncssh) ({exc})") from None
    c = resolved.spec.cluster
    hosts = list(c.hosts)
    if isinstance(c.connect_options, list):
        connect = [expand_connect(o.model_dump(exclude_unset=True)) for o in c.connect_options]
    else:
        connect = [expand_connect(c.connect_options.model_dump(exclude_unset=True))] * len(hosts)
    if isinstance(c.remote_python, list):
        pythons = list(c.remote_python)
    else:
        pythons = [c.remote_python or sys.executable] * len(hosts)
    if c.numactl != "never":
        probe = probe_hosts(hosts[1:], connect[1:])
        pythons = ssh_numa_remote_python(hosts, pythons, probe, c.numactl)
    prefix = env_prefix(remote_env(c.env, c.forward_env, base=worker_env_defaults()))
    pythons = [prefix + py for py in pythons]
    worker_options = c.worker_options.model_dump(exclude_none=True)
    scheduler_options = c.scheduler_options.model_dump(exclude_none=True)
    if security is not None:
        scheduler_options.setdefault("protocol", "tls")
    logger.info("starting SSHCluster hosts=%s remote_python=%s", hosts, pythons)
    cfg = security_config(security) if security is not None else {}
    # the remote scheduler and workers inherit this process's dask config
    # (DASK_INTERNAL_INHERIT_CONFIG), which is how they learn the TLS files
    with dask.config.set(cfg):
        return SSHCluster(
            hosts,
            connect_options=connect,
            worker_options=worker_options,
            scheduler_options=scheduler_options,
            worker_class=c.worker_class,
            remote_python=pythons,
            security=security,
        )


def expected_workers(c: Any) -> int:
    """Workers an ``ssh`` cluster section starts (the first host runs the scheduler)."""
    return (len(c.hosts) - 1) * int(c.worker_options.n_workers or 1)


def scale(cluster: Any, spec: Any) -> None:
    """SSHCluster starts its workers itself."""


def timeout_hint(spec: Any) -> str:
    return "; check that every host accepts the SSH login and runs the same Python environment"
