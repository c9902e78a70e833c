"""``dte-dask doctor``: describe this machine and recommend a Dask worker layout for it.

:func:`collect` gathers what matters for running dte_dask fast (CPU architecture, cores, NUMA
nodes, memory, the BLAS and its threads, package versions) and derives a recommended layout:
workers per NUMA node, threads per worker, memory limit per worker and units per partition.
:func:`format_report` renders it for humans; the CLI prints either that or JSON. Nothing here
starts a cluster or writes a file.
"""
from __future__ import annotations

import importlib.metadata
import math
import os
import platform
from typing import Any

import psutil

from dte_dask import config
from dte_dask.cluster.local import default_workers
from dte_dask.cluster.numa import (
    SYSFS_NODE_ROOT,
    format_cpulist,
    numactl_available,
    plan_workers,
    read_topology,
    system_memory,
)

__all__ = [
    "DEFAULT_PERIODS",
    "MAX_THREADS_PER_WORKER",
    "collect",
    "blas_info",
    "package_versions",
    "recommend_layout",
    "recommend_partition_units",
    "format_report",
]

DEFAULT_PERIODS = 24
"""Periods T assumed by the partition-size rule when the panel is not known."""

MAX_THREADS_PER_WORKER = 8
"""Above this many threads per worker the report suggests more, smaller workers (GIL contention)."""

BYTES_PER_VALUE = 8          # float64
WORKING_COPIES = 6           # wide outcome, differences, masks, influence functions, weights...
MEMORY_SHARE = 0.25          # share of a worker's memory that in-flight blocks may use
MAX_COLUMN_BYTES = 128 << 20  # one float64 column of a partition stays under ~128 MiB

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                   "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
PACKAGES = ("dte_dask", "dask", "distributed", "numpy", "numba", "pandas", "pyarrow", "scipy",
            "threadpoolctl")


# --------------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------------
def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions (``None`` when absent), read from metadata without importing them."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _numpy_build_blas() -> list[dict[str, Any]]:
    import numpy

    try:
        cfg = numpy.show_config(mode="dicts")
    except TypeError:  # numpy < 1.26 prints only
        return []
    deps = (cfg or {}).get("Build Dependencies", {})
    libs = []
    for api in ("blas", "lapack"):
        d = deps.get(api) or {}
        if d:
            libs.append({"user_api": api, "internal_api": d.get("name"),
                         "version": d.get("version"), "num_threads": None,
                         "config": d.get("openblas configuration")})
    return libs


def blas_info() -> dict[str, Any]:
    """The BLAS/OpenMP libraries in use and their thread settings.

    Uses ``threadpoolctl`` when it is importable (the libraries actually loaded, with their
    current thread counts; numpy is imported first so its BLAS is loaded). Otherwise falls back
    to numpy's build configuration, which names the BLAS but not its thread count.

    Returns
    -------
    dict
        ``source`` (``"threadpoolctl"`` or ``"numpy.show_config"``), ``libraries`` (list of
        dicts: ``user_api``, ``internal_api``, ``version``, ``num_threads``...), ``env`` (the
        thread variables of this process) and ``worker_env`` (what dask's nanny sets in each
        worker, ``distributed.nanny.pre-spawn-environ``).
    """
    import dask.config
    import numpy  # noqa: F401  (load the BLAS so threadpoolctl sees it)

    try:
        import threadpoolctl
    except ImportError:
        source, libs = "numpy.show_config", _numpy_build_blas()
    else:
        source = "threadpoolctl"
        keep = ("user_api", "internal_api", "version", "num_threads", "threading_layer",
                "architecture")
        libs = [{k: d.get(k) for k in keep} for d in threadpoolctl.threadpool_info()]
    worker_env = dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {}
    return {
        "source": source,
        "libraries": libs,
        "env": {k: os.environ.get(k) for k in THREAD_ENV_VARS},
        "worker_env": {k: str(v) for k, v in worker_env.items() if k in THREAD_ENV_VARS},
    }


def recommend_partition_units(
    memory_limit: int,
    nthreads: int,
    periods: int = DEFAULT_PERIODS,
    block: int | None = None,
) -> int:
    """Units per partition that fit a worker's memory.

    The rule: a task works on a block of ``U`` units x ``T`` periods of float64 (8 bytes) and
    holds about 6 working copies of it (wide outcome, pre-period differences, cell masks,
    influence functions, multiplier weights). Each of the worker's ``nthreads`` threads may hold
    one block at a time, and together they must fit in 1/4 of the worker's memory limit (the
    rest is headroom below dask's spill/pause thresholds and for results)::

        U_mem = memory_limit / 4 / (nthreads * T * 8 * 6)

    ``U`` is also capped so that one float64 column of a partition stays under 128 MiB
    (``U_cap = 128 MiB / (T * 8)``; dask advises partitions of ~100 MB), then rounded down to
    a multiple of the RNG block size (``dte_dask.rng-block-size``, so bootstrap blocks never
    straddle partitions) and is at least one block.

    Examples (T=24, block 4096): a 4 GiB worker with 4 threads -> 229,376 units (``U_mem``
    binds); a 100 GiB worker with 8 threads -> 696,320 units (the 128 MiB cap binds).

    Parameters
    ----------
    memory_limit : int
        Worker memory limit in bytes.
    nthreads : int
        Threads of the worker.
    periods : int, default 24
        Periods ``T`` of the panel.
    block : int, optional
        Rounding unit; default ``dte_dask.rng-block-size``.

    Returns
    -------
    int
    """
    block = int(block or config.get("rng-block-size"))
    t = max(int(periods), 1)
    u_mem = memory_limit * MEMORY_SHARE / (max(int(nthreads), 1) * t * BYTES_PER_VALUE
                                          * WORKING_COPIES)
    u_cap = MAX_COLUMN_BYTES / (t * BYTES_PER_VALUE)
    units = int(min(u_mem, u_cap)) // block * block
    return max(units, block)


def recommend_layout(topology: Any, periods: int = DEFAULT_PERIODS,
                     max_threads_per_worker: int | None = None) -> dict[str, Any]:
    """Recommended workers, threads, memory and partition size for a topology.

    The ``local`` profile's own layout: each NUMA node's CPUs split into worker processes and
    threads as Dask splits a machine (:func:`~dte_dask.cluster.local.default_workers`: memory stays
    local to the node, and few threads share each process's GIL), or, with
    ``max_threads_per_worker`` set, ``ceil(cpus / max_threads_per_worker)`` workers per node.
    Each worker gets its slice of the node's CPUs as threads and ``0.9 * memory / n_workers``
    bytes (:func:`~dte_dask.cluster.numa.plan_workers`); the partition size follows
    :func:`recommend_partition_units`.

    Parameters
    ----------
    topology : Topology
    periods : int, default 24
    max_threads_per_worker : int, optional
        Split each node into workers of at most this many threads instead.

    Returns
    -------
    dict
        ``n_workers``, ``workers_per_node``, ``threads_per_worker``, ``memory_limit_bytes``,
        ``partition_units`` (an upper bound), ``periods``, ``pinning`` (``"none"`` for one
        worker on one node, else ``"numactl"`` when it is installed or ``"sched_setaffinity"``
        via :class:`~dte_dask.cluster.numa.PinCPUPlugin`) and ``workers`` (one plan dict each, with
        its CPUs and ``numactl`` prefix).
    """
    nodes = topology.cpu_nodes
    if max_threads_per_worker is None:
        per_node = default_workers(topology) // len(nodes)
    else:
        per_node = max(1, math.ceil(min(len(n.cpus) for n in nodes) / max_threads_per_worker))
    plans = plan_workers(topology, n_workers=per_node * len(nodes))
    threads = min(p.nthreads for p in plans)
    memory = min(p.memory_limit for p in plans)
    has_numactl = numactl_available()
    return {
        "n_workers": len(plans),
        "workers_per_node": per_node,
        "threads_per_worker": threads,
        "memory_limit_bytes": memory,
        "partition_units": recommend_partition_units(memory, threads, periods),
        "periods": int(periods),
        "pinning": ("none" if len(plans) == 1 and topology.n_nodes == 1
                    else "numactl" if has_numactl else "sched_setaffinity"),
        "workers": [p.to_dict() for p in plans],
    }


def _notes(info: dict[str, Any]) -> list[str]:
    notes = []
    numa, rec = info["numa"], info["recommendation"]
    if numa["source"] == "affinity":
        notes.append("no NUMA information in sysfs (container or non-Linux): treated as one node")
    if numa["n_nodes"] > 1 and not numa["numactl"]:
        notes.append("numactl not found: CPU pinning works (PinCPUPlugin) but memory cannot be "
                     "bound to a node; install numactl for --membind")
    threads = [lib.get("num_threads") for lib in info["blas"]["libraries"]]
    if any(isinstance(n, int) and n > 1 for n in threads) and not info["blas"]["worker_env"]:
        notes.append("BLAS uses several threads and workers do not reset them: set "
                     "OMP_NUM_THREADS=1 for workers to avoid oversubscription")
    if rec["threads_per_worker"] > MAX_THREADS_PER_WORKER:
        notes.append("many threads per worker: consider more, smaller workers")
    return notes


# --------------------------------------------------------------------------------------------
# public
# --------------------------------------------------------------------------------------------
def collect(sysfs_root: str | os.PathLike[str] = SYSFS_NODE_ROOT, *,
            periods: int = DEFAULT_PERIODS, total_memory: int | None = None) -> dict[str, Any]:
    """Describe this machine and recommend a worker layout (JSON-serialisable).

    Parameters
    ----------
    sysfs_root : str or path, default ``/sys/devices/system/node``
        NUMA node directory (a fake tree in tests); missing -> one node.
    periods : int, default 24
        Periods ``T`` used by the partition-size rule (:func:`recommend_partition_units`).
    total_memory : int, optional
        Memory for workers in bytes; default this machine's (cgroup/rlimit aware).

    Returns
    -------
    dict
        Keys ``platform``, ``cpu``, ``numa``, ``memory``, ``blas``, ``versions``,
        ``recommendation`` (see :func:`recommend_layout`) and ``notes`` (list of hints).

    Raises
    ------
    TopologyError
        If the sysfs tree is malformed.
    """
    topology = read_topology(sysfs_root, total_memory=total_memory)
    vm = psutil.virtual_memory()
    usable = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
              else os.cpu_count())
    info: dict[str, Any] = {
        "platform": {"system": platform.system(), "release": platform.release(),
                     "machine": platform.machine(), "python": platform.python_version()},
        "cpu": {"architecture": platform.machine(),
                "physical_cores": psutil.cpu_count(logical=False),
                "logical_cores": psutil.cpu_count(logical=True),
                "usable_cpus": usable},
        "numa": {"source": topology.source, "root": topology.root,
                 "n_nodes": topology.n_nodes, "numactl": numactl_available(),
                 "nodes": [{"id": n.id, "cpus": format_cpulist(n.cpus), "n_cpus": len(n.cpus),
                            "memory_bytes": n.memory_bytes} for n in topology.nodes]},
        "memory": {"total_bytes": int(vm.total), "available_bytes": int(vm.available),
                   "limit_bytes": int(total_memory) if total_memory else system_memory()},
        "blas": blas_info(),
        "versions": package_versions(),
        "recommendation": recommend_layout(topology, periods=periods),
    }
    info["notes"] = _notes(info)
    return info


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / (1 << 30):.1f} GiB"


def format_report(info: dict[str, Any]) -> str:
    """Render :func:`collect`'s result as a plain-text report."""
    cpu, numa, mem, rec = info["cpu"], info["numa"], info["memory"], info["recommendation"]
    blas, ver = info["blas"], info["versions"]
    lines = [
        "dte-dask doctor",
        "",
        "Machine",
        f"  architecture     {cpu['architecture']} ({info['platform']['system']} "
        f"{info['platform']['release']})",
        f"  cores            {cpu['physical_cores']} physical, {cpu['logical_cores']} logical, "
        f"{cpu['usable_cpus']} usable by this process",
        f"  memory           {_gib(mem['total_bytes'])} total, {_gib(mem['available_bytes'])} "
        f"available, {_gib(mem['limit_bytes'])} limit (cgroup/rlimit)",
        f"  NUMA             {numa['n_nodes']} node(s) from {numa['source']} ({numa['root']}); "
        f"numactl {'found' if numa['numactl'] else 'not found'}",
    ]
    for n in numa["nodes"]:
        lines.append(f"    node {n['id']:<3} CPUs {n['cpus'] or '-':<20} ({n['n_cpus']})  "
                     f"memory {_gib(n['memory_bytes'])}")
    lines += ["", f"BLAS (via {blas['source']})"]
    for lib in blas["libraries"] or [{"user_api": "?", "internal_api": "unknown"}]:
        lines.append(f"  {lib.get('user_api')}: {lib.get('internal_api')} {lib.get('version') or ''}"
                     f"  threads={lib.get('num_threads') if lib.get('num_threads') else '?'}")
    env = ", ".join(f"{k}={v}" for k, v in blas["env"].items() if v is not None) or "none set"
    wenv = ", ".join(f"{k}={v}" for k, v in blas["worker_env"].items()) or "none"
    lines += [f"  thread env here  {env}", f"  worker env       {wenv} (dask nanny)", "",
              "Versions",
              "  " + ", ".join(f"{k} {v if v else '-'}" for k, v in ver.items()), "",
              "Recommended layout",
              f"  workers          {rec['n_workers']} ({rec['workers_per_node']} per NUMA node)",
              f"  threads/worker   {rec['threads_per_worker']}",
              f"  memory/worker    {_gib(rec['memory_limit_bytes'])}",
              f"  partition size   up to {rec['partition_units']:,} units (T={rec['periods']} "
              "periods)",
              f"  pinning          {rec['pinning']}"]
    for w in rec["workers"]:
        lines.append(f"    worker {w['name']:<3} CPUs {w['cpus']:<20} {w['numactl_prefix']}")
    if info.get("notes"):
        lines += ["", "Notes"] + [f"  - {n}" for n in info["notes"]]
    return "\n".join(lines) + "\n"
