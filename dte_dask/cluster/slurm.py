"""The ``slurm`` profile kind: ``dask_jobqueue.SLURMCluster``, workers optionally bound to NUMA nodes
with ``numactl`` in the job script."""
from __future__ import annotations

import logging
import os
import shlex
import sys
from typing import Any

from dte_dask.cluster.env import remote_env, worker_env_defaults
from dte_dask.cluster.schema import ProfileError

logger = logging.getLogger(__name__)

__all__ = ["NODES_FROM_JOB", "slurm_numactl", "ensure_jobqueue_config", "start", "expected_workers", "scale", "timeout_hint"]

NODES_FROM_JOB = ("DTE_DASK_NUMA_NODES=$(numactl --show 2>/dev/null | awk '/^nodebind:/ "
                   "{$1=\"\"; sub(/^ +/, \"\"); sub(/ +$/, \"\"); gsub(/ +/, \",\"); print}'); "
                   "DTE_DASK_NUMA_NODES=${DTE_DASK_NUMA_NODES:-0}")


def slurm_numactl(mode: str, numa_nodes: str, python: str) -> tuple[str, list[str]]:
    """``(python, extra prologue lines)`` putting numactl in front of a Slurm worker.

    ``always``: ``numactl --cpunodebind=N --membind=N python``; ``auto``: the same only if the
    compute node has numactl (decided by a prologue line); ``never``: unchanged. With
    ``numa_nodes="auto"`` N is computed in the job from the CPUs the job may use.
    """
    if mode == "never":
        return python, []
    lines: list[str] = []
    if numa_nodes == "auto":
        nodes = "$DTE_DASK_NUMA_NODES"
        lines.append(NODES_FROM_JOB if mode == "always" else
                     f"if command -v numactl >/dev/null 2>&1; then {NODES_FROM_JOB}; fi")
    else:
        nodes = numa_nodes
    prefix = f"numactl --cpunodebind={nodes} --membind={nodes}"
    if mode == "always":
        return f"{prefix} {python}", lines
    lines.append(f"if command -v numactl >/dev/null 2>&1; then DTE_DASK_NUMACTL=\"{prefix}\"; "
                 "else DTE_DASK_NUMACTL=\"\"; fi")
    return f"$DTE_DASK_NUMACTL {python}", lines


def ensure_jobqueue_config() -> None:
    """Put dask-jobqueue's shipped defaults back if ``dask.config`` lost them (a reset such as
    ``dask.config.refresh()`` or a test harness restoring an earlier snapshot): SLURMCluster
    reads ``jobqueue.slurm.*`` and fails with ``KeyError: 'jobqueue'`` without them."""
    import dask.config

    if dask.config.get("jobqueue.slurm", default=None) is not None:
        return
    import dask_jobqueue
    import yaml

    path = os.path.join(os.path.dirname(dask_jobqueue.__file__), "jobqueue.yaml")
    with open(path, encoding="utf-8") as fh:
        dask.config.update_defaults(yaml.safe_load(fh))


def start(resolved: Any, security: Any) -> Any:
    """Create the SLURMCluster of a resolved ``slurm`` profile (no job is submitted yet)."""
    try:
        from dask_jobqueue import SLURMCluster
        ensure_jobqueue_config()
    except ImportError as exc:
        raise ProfileError("Slurm profiles need dask-jobqueue: pip install 'dte_dask[slurm]' "
                           f"(or dask-jobqueue) ({exc})") from None
    c = resolved.spec.cluster
    kwargs = c.model_dump(exclude={"jobs", "numactl", "numa_nodes", "scheduler_options",
                                   "python", "job_script_prologue", "env", "forward_env"},
                          exclude_none=True)
    for k in ("local_directory", "log_directory", "shared_temp_directory"):
        if k in kwargs:
            kwargs[k] = os.path.expanduser(kwargs[k])
    python = c.python or shlex.quote(sys.executable)
    python, extra_lines = slurm_numactl(c.numactl, c.numa_nodes, python)
    kwargs["python"] = python
    exports = [f"export {k}={shlex.quote(v)}"
               for k, v in remote_env(c.env, c.forward_env, base=worker_env_defaults()).items()]
    kwargs["job_script_prologue"] = exports + list(c.job_script_prologue) + extra_lines
    scheduler_options = c.scheduler_options.model_dump(exclude_none=True)
    scheduler_options.pop("protocol", None)  # jobqueue picks tls:// when security is given
    kwargs["scheduler_options"] = scheduler_options
    if security is not None:
        kwargs["security"] = security
    logger.info("starting SLURMCluster %s", {k: v for k, v in kwargs.items() if k != "security"})
    return SLURMCluster(**kwargs)


def expected_workers(c: Any) -> int:
    """Workers a ``slurm`` cluster section starts: ``jobs`` x ``processes``."""
    return int(c.jobs) * int(c.processes)


def scale(cluster: Any, spec: Any) -> None:
    """Submit the profile's jobs."""
    if spec.cluster.jobs:
        cluster.scale(jobs=spec.cluster.jobs)


def timeout_hint(spec: Any) -> str:
    return ("; check `squeue` (jobs pending for resources?) and the job "
            f"logs in {spec.cluster.log_directory or 'the submit directory'}")
