"""Environment variables handed to remote worker processes (SSH hosts, Slurm jobs)."""
from __future__ import annotations

import fnmatch
import os
import re
import shlex
from collections.abc import Mapping

from dte_dask.cluster.schema import ProfileError

__all__ = ["remote_env", "env_prefix", "worker_env_defaults"]


def worker_env_defaults() -> dict[str, str]:
    """``dte_dask.cluster.worker-env``: what every worker process dte_dask starts gets, under its
    profile's own variables (package default: glibc's ``MALLOC_MMAP_THRESHOLD_``)."""
    import dask.config

    base = dask.config.get("dte_dask.cluster.worker-env", default={}) or {}
    return {str(k): str(v) for k, v in base.items()}


def remote_env(env: Mapping[str, str], forward_env: list[str] | tuple[str, ...],
               environ: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables to set in remote processes: ``base`` (e.g. :func:`worker_env_defaults`), then
    ``forward_env`` matches of this process's environment (glob patterns such as ``OPENBLAS_*``),
    then ``env`` (which wins).

    Raises
    ------
    ProfileError
        If a variable name is not a valid shell identifier.
    """
    source = os.environ if environ is None else environ
    out: dict[str, str] = {str(k): str(v) for k, v in (base or {}).items()}
    for pattern in forward_env:
        for name in sorted(source):
            if fnmatch.fnmatchcase(name, pattern):
                out[name] = source[name]
    out.update({str(k): str(v) for k, v in env.items()})
    bad = [k for k in out if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
    if bad:
        raise ProfileError(f"invalid environment variable name(s) {bad}")
    return out



def env_prefix(env: Mapping[str, str]) -> str:
    """``env A=1 B=2 `` (shell-quoted), or ``""``."""
    if not env:
        return ""
    return "env " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " "
