"""A nanny that sets environment variables before its worker process starts (imported only when a
local cluster with ``cluster.env`` starts, so :mod:`dte_dask.cluster` imports no distributed)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from distributed import Nanny


class SpawnEnvNanny(Nanny):
    """``distributed.Nanny`` whose ``spawn_env`` is in the environment its worker process starts with.

    Nanny's own ``env=`` is applied inside the worker after it has started, too late for what a
    process reads once at start-up (glibc's ``MALLOC_*``, OpenMP/BLAS thread counts); these join
    ``distributed.nanny.pre-spawn-environ`` instead (which, as distributed does, puts them in this
    process's ``os.environ`` just before spawning).
    """

    def __init__(self, *args: Any, spawn_env: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pre_spawn_env.update({str(k): str(v) for k, v in (spawn_env or {}).items()})
