"""NUMA topology, per-worker CPU/memory plans and CPU pinning of Dask workers.

Three pieces:

* :func:`read_topology` reads the NUMA nodes of this machine from sysfs
  (``/sys/devices/system/node/nodeN/{cpulist,meminfo}``). Where that directory is absent (some
  containers, non-Linux systems) the machine is treated as one node holding the CPUs this process
  may run on (``os.sched_getaffinity(0)``).
* :func:`plan_workers` turns a topology into one :class:`WorkerPlan` per Dask worker: the NUMA
  node(s) it lives on, its CPUs, its thread count, its memory limit and a ``numactl`` prefix that
  SSH/Slurm launchers can put in front of the worker's python (``numactl`` binds memory too, which
  ``sched_setaffinity`` cannot).
* :class:`PinCPUPlugin` / :func:`pin_local_cluster` pin the processes of an already running
  (e.g. ``LocalCluster``) set of workers to the CPUs of their plan.

Pinning notes (verified on distributed 2026.8, Linux; see the project's shared NUMA recipe):

* On Linux ``os.sched_setaffinity(0, mask)`` changes the *calling thread* only. A
  ``WorkerPlugin.setup`` runs on the worker's event-loop thread, so the plugin walks
  ``/proc/self/task`` and pins **every** thread; threads created later inherit the mask.
* A ``NannyPlugin`` is deliberately not used: all nannies of a ``LocalCluster`` live in the client
  process, so pinning "the nanny" would pin the caller itself (the last nanny wins). Where each
  nanny is its own process (``dask worker``, jobqueue, SSH) use :attr:`WorkerPlan.numactl_prefix`.
* Workers are matched to plans by name: plan ``i`` is named ``str(i)``, which is how
  ``LocalCluster`` names its workers (``0, 1, ...``).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from dte_dask.exceptions import DteDaskError

logger = logging.getLogger(__name__)

SYSFS_NODE_ROOT = "/sys/devices/system/node"
"""Where Linux describes NUMA nodes."""

DEFAULT_MEMORY_FRACTION = 0.9
"""Share of the machine's memory given to workers when no ``memory_limit`` is set."""

_NODE_DIR = re.compile(r"^node(\d+)$")
_CPU_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
_MEMTOTAL = re.compile(r"^Node\s+\d+\s+MemTotal:\s+(\d+)\s*kB\s*$", re.MULTILINE)

__all__ = [
    "SYSFS_NODE_ROOT", "TopologyError", "NumaNode", "Topology", "WorkerPlan", "parse_cpulist",
    "format_cpulist", "read_topology", "system_memory", "plan_workers", "numactl_available",
    "pin_all_threads", "worker_affinity", "PinCPUPlugin", "pin_local_cluster",
]


class TopologyError(DteDaskError, ValueError):
    """The NUMA topology cannot be read, or a worker layout does not fit on it."""


# --------------------------------------------------------------------------------------------
# topology
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NumaNode:
    """One NUMA node.

    Parameters
    ----------
    id : int
        Node number (``N`` of ``nodeN``).
    cpus : tuple of int
        Logical CPU ids of the node, sorted. May be empty (memory-only nodes).
    memory_bytes : int or None
        ``MemTotal`` of ``nodeN/meminfo`` in bytes, ``None`` when unknown. On ballooned VMs this
        can be far below the machine's total, so it is reported, never relied on for limits.
    """

    id: int
    cpus: tuple[int, ...]
    memory_bytes: int | None = None


@dataclass(frozen=True)
class Topology:
    """The NUMA nodes of a machine.

    Parameters
    ----------
    nodes : tuple of NumaNode
        Sorted by node id.
    total_memory : int
        Memory usable by workers, in bytes (host total, lowered by cgroup/rlimit limits).
    source : str
        ``"sysfs"`` when read from the node directory, ``"affinity"`` for the one-node fallback.
    root : str
        The sysfs directory that was read (or looked for).
    """

    nodes: tuple[NumaNode, ...]
    total_memory: int
    source: str = "sysfs"
    root: str = SYSFS_NODE_ROOT

    @property
    def n_nodes(self) -> int:
        """Number of NUMA nodes (including memory-only ones)."""
        return len(self.nodes)

    @property
    def cpu_nodes(self) -> tuple[NumaNode, ...]:
        """Nodes that have at least one CPU (the ones workers are placed on)."""
        return tuple(n for n in self.nodes if n.cpus)

    @property
    def cpus(self) -> tuple[int, ...]:
        """All CPUs of all nodes, sorted."""
        return tuple(sorted(c for n in self.nodes for c in n.cpus))

    @property
    def n_cpus(self) -> int:
        """Number of logical CPUs over all nodes."""
        return len(self.cpus)


def parse_cpulist(text: str, source: str | os.PathLike[str] | None = None) -> tuple[int, ...]:
    """Parse a Linux CPU list such as ``"0-3,8-11"`` into sorted CPU ids.

    Parameters
    ----------
    text : str
        The list; an empty string (or only whitespace) means no CPUs.
    source : str or path, optional
        Where the text was read, named in the error message.

    Returns
    -------
    tuple of int

    Raises
    ------
    TopologyError
        If a part is not ``N`` or ``N-M`` with ``N <= M``.
    """
    where = f" in {os.fspath(source)}" if source is not None else ""
    cpus: set[int] = set()
    stripped = text.strip()
    if not stripped:
        return ()
    for part in stripped.split(","):
        m = _CPU_RANGE.match(part.strip())
        if m is None:
            raise TopologyError(f"malformed CPU list{where}: {text.strip()!r} (bad part {part!r}; "
                                "expected e.g. '0-3,8-11')")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise TopologyError(f"malformed CPU list{where}: {text.strip()!r} (range {part!r} "
                                "is decreasing)")
        cpus.update(range(lo, hi + 1))
    return tuple(sorted(cpus))


def format_cpulist(cpus: Iterable[int]) -> str:
    """Format CPU ids the way Linux does (``[0, 1, 2, 3, 8]`` -> ``"0-3,8"``)."""
    ids = sorted(set(int(c) for c in cpus))
    parts: list[str] = []
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)


def system_memory() -> int:
    """Memory available to this process tree in bytes (host, cgroup and RSS rlimit; dask's rule)."""
    from distributed.system import memory_limit

    return int(memory_limit())


def _allowed_cpus() -> tuple[int, ...]:
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


def _read_node_memory(path: Path) -> int | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    m = _MEMTOTAL.search(text)
    return int(m.group(1)) * 1024 if m else None


def read_topology(
    root: str | os.PathLike[str] = SYSFS_NODE_ROOT,
    *,
    total_memory: int | None = None,
    restrict_to_affinity: bool | None = None,
) -> Topology:
    """Read the NUMA nodes, their CPUs and (when known) their memory.

    Parameters
    ----------
    root : str or path, default ``/sys/devices/system/node``
        Directory holding ``nodeN/cpulist`` (and optionally ``nodeN/meminfo``). Injectable so
        tests can use a fake tree. If it is missing or holds no ``nodeN`` directory, the machine
        is one node 0 with the CPUs of ``os.sched_getaffinity(0)`` (``source="affinity"``).
    total_memory : int, optional
        Bytes usable by workers; default :func:`system_memory`.
    restrict_to_affinity : bool, optional
        Keep only CPUs this process may run on (a container's cpuset often is a subset of the
        host's nodes). Default: ``True`` for the real sysfs root, ``False`` for any other root
        (fake trees describe machines other than this one).

    Returns
    -------
    Topology

    Raises
    ------
    TopologyError
        If a ``nodeN/cpulist`` file is unreadable or malformed (the message names the file).
    """
    root_path = Path(root)
    if restrict_to_affinity is None:
        restrict_to_affinity = os.path.abspath(root_path) == SYSFS_NODE_ROOT
    mem = int(total_memory) if total_memory is not None else system_memory()

    node_dirs: list[tuple[int, Path]] = []
    if root_path.is_dir():
        for entry in root_path.iterdir():
            m = _NODE_DIR.match(entry.name)
            if m and entry.is_dir():
                node_dirs.append((int(m.group(1)), entry))
    if not node_dirs:
        return Topology(nodes=(NumaNode(0, _allowed_cpus(), None),), total_memory=mem,
                        source="affinity", root=os.fspath(root_path))

    allowed = set(_allowed_cpus()) if restrict_to_affinity else None
    nodes = []
    for node_id, path in sorted(node_dirs):
        cpulist = path / "cpulist"
        try:
            text = cpulist.read_text()
        except OSError as exc:
            raise TopologyError(f"cannot read {cpulist}: {exc}") from exc
        cpus = parse_cpulist(text, source=cpulist)
        if allowed is not None:
            cpus = tuple(c for c in cpus if c in allowed)
        nodes.append(NumaNode(node_id, cpus, _read_node_memory(path / "meminfo")))
    if not any(n.cpus for n in nodes):
        # e.g. a cpuset naming CPUs sysfs does not list: trust the affinity mask
        return Topology(nodes=(NumaNode(0, _allowed_cpus(), None),), total_memory=mem,
                        source="affinity", root=os.fspath(root_path))
    return Topology(nodes=tuple(nodes), total_memory=mem, source="sysfs",
                    root=os.fspath(root_path))


# --------------------------------------------------------------------------------------------
# plans
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerPlan:
    """Where one Dask worker runs and how big it is.

    Parameters
    ----------
    index : int
        Position in the plan list; the worker must be named ``str(index)``.
    nodes : tuple of int
        NUMA node(s) the worker lives on (several when there are fewer workers than nodes).
    cpus : tuple of int
        CPUs the worker is pinned to.
    nthreads : int
        Threads of the worker.
    memory_limit : int
        Worker memory limit in bytes.
    whole_nodes : bool
        True when ``cpus`` are all CPUs of ``nodes`` (the worker owns its nodes); False when
        the worker shares a node with others and owns only a slice of it.
    """

    index: int
    nodes: tuple[int, ...]
    cpus: tuple[int, ...]
    nthreads: int
    memory_limit: int
    whole_nodes: bool = True

    @property
    def name(self) -> str:
        """Worker name matched by :class:`PinCPUPlugin` (``str(index)``)."""
        return str(self.index)

    @property
    def node(self) -> int | None:
        """The worker's NUMA node, or ``None`` when it spans several."""
        return self.nodes[0] if len(self.nodes) == 1 else None

    @property
    def cpulist(self) -> str:
        """The worker's CPUs in Linux list form (``"0-3"``)."""
        return format_cpulist(self.cpus)

    @property
    def numactl_prefix(self) -> str:
        """Command prefix binding a process to this plan's CPUs and memory node(s).

        ``numactl --cpunodebind=N --membind=N`` when the worker owns whole nodes, else
        ``numactl --physcpubind=<cpus> --membind=N``. Put it in front of the worker's python
        (jobqueue ``python=``, SSHCluster ``remote_python=``). Needs ``numactl`` on the host
        (see :func:`numactl_available`).
        """
        nodes = ",".join(str(n) for n in self.nodes)
        if self.whole_nodes:
            return f"numactl --cpunodebind={nodes} --membind={nodes}"
        return f"numactl --physcpubind={self.cpulist} --membind={nodes}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description."""
        return {
            "name": self.name,
            "nodes": list(self.nodes),
            "cpus": self.cpulist,
            "nthreads": self.nthreads,
            "memory_limit": self.memory_limit,
            "numactl_prefix": self.numactl_prefix,
        }


def numactl_available() -> bool:
    """Whether a ``numactl`` executable is on ``PATH``."""
    return shutil.which("numactl") is not None


def _split_even(items: Sequence[Any], k: int) -> list[list[Any]]:
    """Split ``items`` into ``k`` contiguous chunks whose sizes differ by at most one."""
    q, r = divmod(len(items), k)
    out, start = [], 0
    for i in range(k):
        size = q + (1 if i < r else 0)
        out.append(list(items[start:start + size]))
        start += size
    return out


def _parse_memory(memory_limit: int | str) -> int:
    if isinstance(memory_limit, str):
        from dask.utils import parse_bytes

        return int(parse_bytes(memory_limit))
    return int(memory_limit)


def plan_workers(
    topology: Topology,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: int | str | None = None,
) -> list[WorkerPlan]:
    """Lay workers out over NUMA nodes.

    Rules (only nodes with CPUs are used):

    * ``n_workers=None``: one worker per node, owning all its CPUs.
    * ``n_workers >= nodes``: workers are spread evenly, node ``i`` getting
      ``n_workers // nodes`` workers plus one for the first ``n_workers % nodes`` nodes; the
      workers sharing a node split its CPUs into contiguous, near-equal slices (e.g. 1 node of
      CPUs 0-7 and 2 workers -> ``0-3`` and ``4-7``).
    * ``n_workers < nodes``: each worker owns a contiguous group of whole nodes, the groups
      differing by at most one node (e.g. 4 nodes x 8 CPUs and 2 workers -> nodes ``0,1`` and
      ``2,3``, 16 CPUs each). Memory stays local to the group (``--membind=0,1``).

    Parameters
    ----------
    topology : Topology
    n_workers : int, optional
        Number of workers; default one per node.
    threads_per_worker : int, optional
        Threads per worker; default the number of CPUs of the worker.
    memory_limit : int or str, optional
        Memory limit *per worker* (bytes, or a string such as ``"4GiB"``); default
        ``topology.total_memory * 0.9 / n_workers``.

    Returns
    -------
    list of WorkerPlan
        Ordered by index; plan ``i`` is for the worker named ``str(i)``.

    Raises
    ------
    TopologyError
        If there are no CPUs, ``n_workers``/``threads_per_worker`` is not positive, or more
        workers share a node than it has CPUs (pinned workers would overlap).
    """
    nodes = topology.cpu_nodes
    if not nodes:
        raise TopologyError("the topology has no node with CPUs; cannot place workers")
    k = len(nodes) if n_workers is None else int(n_workers)
    if k < 1:
        raise TopologyError(f"n_workers must be >= 1, got {n_workers!r}")
    if threads_per_worker is not None and int(threads_per_worker) < 1:
        raise TopologyError(f"threads_per_worker must be >= 1, got {threads_per_worker!r}")
    mem = (int(topology.total_memory * DEFAULT_MEMORY_FRACTION / k) if memory_limit is None
           else _parse_memory(memory_limit))
    if mem <= 0:
        raise TopologyError(f"memory_limit must be positive, got {memory_limit!r}")

    # (node ids, cpus, whole_nodes) for every worker
    slots: list[tuple[tuple[int, ...], tuple[int, ...], bool]] = []
    if k < len(nodes):
        for group in _split_even(nodes, k):
            slots.append((tuple(n.id for n in group),
                          tuple(sorted(c for n in group for c in n.cpus)), True))
    else:
        per_node = [len(c) for c in _split_even(range(k), len(nodes))]
        for node, count in zip(nodes, per_node):
            if count > len(node.cpus):
                raise TopologyError(
                    f"{count} workers would share NUMA node {node.id}, which has only "
                    f"{len(node.cpus)} CPU(s) ({format_cpulist(node.cpus)}); use fewer workers "
                    "or do not pin them")
            for chunk in _split_even(node.cpus, count):
                slots.append(((node.id,), tuple(chunk), count == 1))

    return [
        WorkerPlan(index=i, nodes=ids, cpus=cpus,
                   nthreads=int(threads_per_worker) if threads_per_worker else len(cpus),
                   memory_limit=mem, whole_nodes=whole)
        for i, (ids, cpus, whole) in enumerate(slots)
    ]


# --------------------------------------------------------------------------------------------
# pinning
# --------------------------------------------------------------------------------------------
def _thread_ids() -> list[int]:
    return sorted(int(t) for t in os.listdir("/proc/self/task"))


def pin_all_threads(cpus: Iterable[int]) -> dict[int, list[int]]:
    """Set the CPU mask of every thread of the *current process* (Linux only).

    Threads started afterwards inherit the mask of the thread that starts them, so after this
    call the whole process stays on ``cpus``.

    Parameters
    ----------
    cpus : iterable of int

    Returns
    -------
    dict
        Thread id -> its affinity after pinning (threads that exited meanwhile are left out).

    Raises
    ------
    TopologyError
        If ``cpus`` is empty, the platform cannot set affinities, or none of ``cpus`` is
        usable here (the kernel answers ``EINVAL``).
    """
    mask = set(int(c) for c in cpus)
    if not mask:
        raise TopologyError("cannot pin to an empty CPU set")
    if not hasattr(os, "sched_setaffinity") or not os.path.isdir("/proc/self/task"):
        raise TopologyError("CPU pinning needs Linux (os.sched_setaffinity and /proc/self/task)")
    result: dict[int, list[int]] = {}
    for tid in _thread_ids():
        try:
            os.sched_setaffinity(tid, mask)
            result[tid] = sorted(os.sched_getaffinity(tid))
        except (ProcessLookupError, PermissionError):
            continue  # thread exited meanwhile / not ours to change
        except OSError as exc:
            raise TopologyError(f"cannot pin thread {tid} of pid {os.getpid()} to CPUs "
                                f"{format_cpulist(mask)}: {exc}") from exc
    return result


def worker_affinity() -> dict[str, Any]:
    """Report the CPU affinity of this process and of each of its threads.

    Meant for ``client.run(worker_affinity)``; works in any process on Linux.

    Returns
    -------
    dict
        ``{"pid": int, "process": [cpus of the calling thread], "threads": {tid: [cpus]}}``.
    """
    threads: dict[int, list[int]] = {}
    for tid in _thread_ids():
        try:
            threads[tid] = sorted(os.sched_getaffinity(tid))
        except (ProcessLookupError, PermissionError):
            continue
    return {"pid": os.getpid(), "process": sorted(os.sched_getaffinity(0)), "threads": threads}


class PinCPUPlugin(WorkerPlugin):
    """Pin each worker process (all of its threads) to the CPUs assigned to its name.

    Parameters
    ----------
    cpus_by_name : mapping
        Worker name (compared as ``str``) -> CPU ids. A worker whose name is absent is left
        unpinned (logged), e.g. one added later by ``cluster.scale``.
    name : str, optional
        Plugin name; registering another plugin of the same name replaces this one.

    Notes
    -----
    Either register it on a running cluster (``client.register_plugin(plugin)``, which also
    applies to workers started later) or pass it at start-up
    (``LocalCluster(..., plugins={plugin})``). Build it from plans with :meth:`from_plans`.
    """

    def __init__(self, cpus_by_name: Mapping[Any, Iterable[int]],
                 name: str = "dte-dask-pin-cpu") -> None:
        self.cpus_by_name = {str(k): tuple(sorted(set(int(c) for c in v)))
                             for k, v in cpus_by_name.items()}
        self.name = name
        self.pinned: tuple[int, ...] | None = None

    @classmethod
    def from_plans(cls, plans: Iterable[WorkerPlan], name: str = "dte-dask-pin-cpu"
                   ) -> PinCPUPlugin:
        """Plugin giving worker ``plan.name`` the CPUs ``plan.cpus``."""
        return cls({p.name: p.cpus for p in plans}, name=name)

    def setup(self, worker: Any) -> None:
        """Pin every thread of the worker process (runs once per worker)."""
        cpus = self.cpus_by_name.get(str(worker.name))
        if cpus is None:
            logger.warning("worker %s (%s) has no CPU plan; left unpinned", worker.name,
                           worker.address)
            return
        pin_all_threads(cpus)
        self.pinned = cpus
        logger.info("worker %s pinned to CPUs %s", worker.name, format_cpulist(cpus))


def _worker_name(dask_worker: Any) -> str:
    return str(dask_worker.name)


def pin_local_cluster(client: Any, plans: Sequence[WorkerPlan], *, check: bool = True
                      ) -> dict[str, dict[str, Any]]:
    """Pin the running workers of ``client`` to the CPUs of their plans.

    Parameters
    ----------
    client : distributed.Client
    plans : sequence of WorkerPlan
        Worker named ``str(i)`` gets ``plans[i].cpus`` (``LocalCluster`` names workers so).
    check : bool, default True
        Read every worker's thread affinities back and raise if any thread is off-plan.

    Returns
    -------
    dict
        Worker name -> :func:`worker_affinity` report after pinning (empty if ``check=False``).

    Raises
    ------
    TopologyError
        If a running worker has no plan, or (``check``) a thread was not pinned.
    """
    by_name = {p.name: p for p in plans}
    names = client.run(_worker_name)
    missing = sorted(n for n in names.values() if n not in by_name)
    if missing:
        raise TopologyError(f"workers {missing} have no plan; plans are named "
                            f"{sorted(by_name)} (name workers by plan index)")
    client.register_plugin(PinCPUPlugin.from_plans(plans))
    if not check:
        return {}
    reports = client.run(worker_affinity)
    out: dict[str, dict[str, Any]] = {}
    for addr, report in reports.items():
        name = names.get(addr)
        if name is None:  # a worker that joined after we listed them
            continue
        want = sorted(by_name[name].cpus)
        # a cpuset may shrink the mask further, so "on plan" means a non-empty subset
        bad = {tid: cpus for tid, cpus in report["threads"].items()
               if not cpus or not set(cpus) <= set(want)}
        if bad:
            raise TopologyError(f"worker {name} ({addr}): threads {bad} not on CPUs {want}")
        out[name] = report
    return out
