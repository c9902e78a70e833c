"""The FastAPI application, assembled: authentication, routes, middleware, OpenAPI.

==========================================  ===========================================================
``POST /jobs``                               a job spec (JSON or YAML, the schema of ``dte-dask run``)
                                             -> 202 and the job (``id``, ``state: queued``); 422 names
                                             the field at fault (also: a field too long, a window
                                             outside the panel's event times, a job whose estimated
                                             size passes the limits); 413 too large; 415 other media
                                             type; 429 queue full
``GET /jobs``                                job summaries (no spec), newest first (``?state=``,
                                             ``limit`` <= 200, ``offset``; ``total``, ``next_offset``)
``GET /jobs/{id}``                           state, progress fraction (scheduler task counts), queue
                                             position, dashboard link, timings, error, warnings,
                                             each estimator's overall estimate
``DELETE /jobs/{id}``                        cancel (queued: at once; running: its futures are
                                             released, it stops at the next stage or file, its
                                             partial outputs are removed, the state goes
                                             ``cancelling`` -> ``cancelled``); a finished job is
                                             deleted with its results (204)
``GET /jobs/{id}/results``                   the files of its results folder (409 once cancelled)
``GET /jobs/{id}/results/{name}``            one file (``summary.json``, ``estimators/NAME.csv``...)
``GET /metrics``                             Prometheus text (:mod:`dte_dask.service.metrics`)
``GET /openapi.json``                        the OpenAPI document
``GET /health``                              liveness/readiness; the only route without a token
==========================================  ===========================================================

Every route but ``/health`` needs ``Authorization: Bearer <token>``: missing -> 401, wrong ->
403. Jobs run on the cluster the service connected to at startup (a job's own ``cluster``
section is recorded but not used) and write ``<results_dir>/<id>/`` (its ``output`` is not used).
Running jobs have a wall-clock limit and, optionally, a memory budget on the workers
(:mod:`~dte_dask.service.executor`); finished jobs are deleted after ``retain_days``
(:mod:`~dte_dask.service.retention`). The threat model is in ``docs/security.md``.

The parts: response models in :mod:`~dte_dask.service.models`, the shared state in
:mod:`~dte_dask.service.state`, the routes in :mod:`~dte_dask.service.routes`, the OpenAPI document
in :mod:`~dte_dask.service.openapi`, middleware in :mod:`~dte_dask.service.middleware`.
"""
from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dte_dask.service.middleware import BodySizeLimit, MetricsPortOnly
from dte_dask.service.openapi import document_service_rules, openapi_document
from dte_dask.service.routes import add_health, api_router
from dte_dask.service.settings import ServiceSettings
from dte_dask.service.state import ServiceState
from dte_dask.service.validate import SpecProblem

__all__ = ["create_app", "ServiceState", "document_service_rules"]


def create_app(settings: ServiceSettings, *, client: Any = None) -> FastAPI:
    """The service as an ASGI app; the cluster is connected (or ``client`` used) at startup.

    Parameters
    ----------
    settings : ServiceSettings
    client : distributed.Client, optional
        Use this client's cluster instead of connecting to ``settings.profile`` (not closed at
        shutdown).
    """
    import dte_dask

    st = ServiceState(settings, client)
    token = settings.token.encode("utf-8")
    bearer = HTTPBearer(auto_error=False, scheme_name="bearer",
                        description="The service token (DTE_DASK_TOKEN or --token-file).")

    def require_token(cred: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:  # noqa: B008
        if cred is None or not cred.credentials:
            raise HTTPException(401, "missing bearer token (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(cred.credentials.encode("utf-8", "surrogateescape"), token):
            raise HTTPException(403, "wrong bearer token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(st.start)
        try:
            yield
        finally:
            await run_in_threadpool(st.stop)

    app = FastAPI(title="dte_dask job service", version=dte_dask.__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None,
                  description=(__doc__ or "").split("\n\n")[0])
    app.state.service = st
    app.include_router(api_router(st, require_token=require_token, openapi=lambda: app.openapi()))
    add_health(app, st, dte_dask.__version__)

    @app.exception_handler(SpecProblem)
    async def _spec_problem(request: Request, exc: SpecProblem) -> JSONResponse:
        return JSONResponse({"detail": exc.errors, "message": f"invalid job spec: {exc}"}, status_code=exc.status)

    app.openapi = lambda: openapi_document(app, settings)  # type: ignore[method-assign]
    app.add_middleware(BodySizeLimit, limit=settings.max_request_bytes)
    if settings.metrics_port:
        app.add_middleware(MetricsPortOnly, port=settings.metrics_port)
    return app
