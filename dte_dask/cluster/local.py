"""The ``local`` profile kind: a ``distributed.LocalCluster``, NUMA-planned where it fits."""
from __future__ import annotations

import logging
import os
from typing import Any

from dte_dask.cluster.schema import ProfileError

logger = logging.getLogger(__name__)

__all__ = ["default_workers", "local_layout", "start", "worker_env", "expected_workers", "scale", "timeout_hint"]


def default_workers(topology: Any) -> int:
    """Workers for a machine when none are asked for: each NUMA node's CPUs split into processes
    and threads as Dask's own ``LocalCluster`` splits a machine's
    (:func:`distributed.deploy.utils.nprocesses_nthreads`: one single-threaded process per CPU up
    to four CPUs, then about the square root of the CPUs as processes). Worker threads share one
    GIL, which the estimators' kernels hold between their numpy calls: two single-threaded
    processes ran the medical job's Callaway-Sant'Anna stage about 1.2x faster than one process of
    two threads (benchmarks/RESULTS.md). Nodes differing in size take the smallest node's split,
    so that every worker gets as many CPUs (plan_workers spreads workers evenly over nodes)."""
    from distributed.deploy.utils import nprocesses_nthreads

    from dte_dask.cluster.numa import TopologyError

    nodes = topology.cpu_nodes
    if not nodes:
        raise TopologyError("the topology has no node with CPUs; cannot place workers")
    return len(nodes) * nprocesses_nthreads(min(len(n.cpus) for n in nodes))[0]


def local_layout(c: Any) -> tuple[list[Any] | None, int | None, Any]:
    """NUMA plans, threads per worker and memory limit for a LocalSpec."""
    if c.n_workers == 0:  # a scheduler only: external workers bring their own layout
        return None, c.threads_per_worker, c.memory_limit
    from dte_dask.cluster.numa import TopologyError, plan_workers, read_topology

    try:
        topology = read_topology()
        n_workers = c.n_workers
        if n_workers is None and c.threads_per_worker is None and c.processes:
            n_workers = default_workers(topology)  # threads of one process share a GIL
        plans = plan_workers(topology, n_workers=n_workers, threads_per_worker=c.threads_per_worker,
                             memory_limit=c.memory_limit)
    except TopologyError as exc:
        if c.pin_cpus:
            raise ProfileError(f"pin_cpus: true but the workers do not fit the NUMA "
                               f"topology: {exc}") from None
        logger.info("no NUMA plan for this layout (%s); using LocalCluster defaults", exc)
        return None, c.threads_per_worker, c.memory_limit
    threads = c.threads_per_worker or max(1, min(p.nthreads for p in plans))
    memory = c.memory_limit if c.memory_limit is not None else plans[0].memory_limit
    return plans, threads, memory


def start(resolved: Any, security: Any) -> Any:
    """Start the LocalCluster of a resolved ``local`` profile."""
    from distributed import LocalCluster

    c = resolved.spec.cluster
    plans, threads, memory = local_layout(c)
    n_workers = c.n_workers if c.n_workers is not None else (len(plans) if plans else None)
    if resolved.spec.adapt is not None:
        n_workers = resolved.spec.adapt.minimum  # Adaptive adds the rest while tasks queue
    kwargs: dict[str, Any] = {
        "n_workers": n_workers,
        "threads_per_worker": threads,
        "processes": c.processes,
        "host": c.host,
        "scheduler_port": c.scheduler_port,
        "dashboard_address": c.dashboard_address,
    }
    if not c.processes and security is None:
        # threads only: distributed uses the inproc:// transport, which has no host or port
        del kwargs["host"], kwargs["scheduler_port"]
    if memory is not None:
        kwargs["memory_limit"] = memory
    env = worker_env(c)
    if env:  # each nanny puts these in the environment its worker process starts with
        from dte_dask.cluster.nanny import SpawnEnvNanny

        kwargs["worker_class"] = SpawnEnvNanny
        kwargs["spawn_env"] = env
    if c.local_directory:
        kwargs["local_directory"] = os.path.expanduser(c.local_directory)
    if security is not None:
        kwargs["security"] = security
        kwargs["protocol"] = "tls://"
    if c.pin_cpus and plans:
        from dte_dask.cluster.numa import PinCPUPlugin

        kwargs["plugins"] = {PinCPUPlugin.from_plans(plans)}
    logger.info("starting LocalCluster %s", {k: v for k, v in kwargs.items() if k != "security"})
    return LocalCluster(**kwargs)


def worker_env(c: Any) -> dict[str, str]:
    """Environment of the worker processes: ``dte_dask.cluster.worker-env``, then the profile's ``env``
    (merged and checked as for remote workers, :func:`dte_dask.cluster.env.remote_env`)."""
    if not c.processes:
        return {}
    from dte_dask.cluster.env import remote_env, worker_env_defaults

    return remote_env(c.env, (), base=worker_env_defaults())


def expected_workers(c: Any) -> int:
    """Workers a ``local`` cluster section starts."""
    if c.n_workers is not None:
        return int(c.n_workers)  # 0: a scheduler only, nothing to wait for
    return len(local_layout(c)[0] or [None])


def scale(cluster: Any, spec: Any) -> None:
    """LocalCluster starts its workers itself."""


def timeout_hint(spec: Any) -> str:
    return ""
