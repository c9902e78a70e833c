"""``dte-dask serve``: an HTTP job service in front of one Dask cluster.

Analysts and pipelines submit job specs (the schema of ``dte-dask run``, JSON or YAML), watch
them, fetch their results and cancel them, without a shell on the cluster.

* :mod:`~dte_dask.service.app` — the FastAPI app (:func:`create_app`), routes, auth, limits;
* :mod:`~dte_dask.service.executor` — concurrency limit, FIFO queue, per-job cancellation,
  wall-clock limit and memory budget;
* :mod:`~dte_dask.service.store` — jobs and their states in SQLite (survives restarts);
* :mod:`~dte_dask.service.validate` — request bodies -> validated specs (422 naming the field);
* :mod:`~dte_dask.service.paths` — data paths confined to the configured roots (lexically first);
* :mod:`~dte_dask.service.limits` — field sizes, event windows, the job-size estimate;
* :mod:`~dte_dask.service.retention` — finished jobs purged after ``retain_days``;
* :mod:`~dte_dask.service.middleware` — the request-body limit, the metrics-port filter;
* :mod:`~dte_dask.service.metrics` — Prometheus ``/metrics``;
* :mod:`~dte_dask.service.server` — uvicorn on sockets bound here (``--port 0`` works).

The threat model and the limits are in ``docs/security.md``. Needs the ``service`` extra
(``fastapi``, ``uvicorn``, ``prometheus_client``).
"""
from __future__ import annotations

from typing import Any

from dte_dask.service.settings import Limits, ServiceConfigError, ServiceSettings, read_token

__all__ = ["Limits", "ServiceConfigError", "ServiceSettings", "create_app", "read_token"]


def create_app(settings: ServiceSettings, *, client: Any = None) -> Any:
    """See :func:`dte_dask.service.app.create_app` (imported lazily: FastAPI is optional)."""
    from dte_dask.service.app import create_app as _create

    return _create(settings, client=client)
