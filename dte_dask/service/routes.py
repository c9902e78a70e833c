"""The routes of the service, over a :class:`~dte_dask.service.state.ServiceState`.

:func:`api_router` builds the token-protected routes (jobs, results, metrics, the OpenAPI
document); :func:`add_health` the one route without a token. :mod:`dte_dask.service.app` assembles
them with authentication, middleware and the OpenAPI document.
"""
from __future__ import annotations

import logging
import mimetypes
import os
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response

from dte_dask.service.executor import QueueFull
from dte_dask.service.limits import check_size, check_sizes
from dte_dask.service.metrics import CONTENT_TYPE_LATEST
from dte_dask.service.models import (
    ERROR_RESPONSES,
    JOB_ID,
    MAX_PAGE,
    Health,
    JobInfo,
    JobList,
    JobSummary,
    Problem,
    ResultFile,
    ResultList,
    State,
)
from dte_dask.service.paths import confine_source
from dte_dask.service.retention import remove_results
from dte_dask.service.state import ServiceState, iso_time, job_info
from dte_dask.service.store import FINAL, JobStore
from dte_dask.service.validate import (
    JSON_TYPES,
    YAML_TYPES,
    SpecProblem,
    UnsupportedMediaType,
    check_columns,
    check_disclosure,
    check_limits,
    load_body,
    validate_spec,
)

logger = logging.getLogger("dte_dask.service")


def api_router(st: ServiceState, *, require_token: Callable[..., None],
               openapi: Callable[[], dict[str, Any]]) -> APIRouter:
    """The token-protected routes over ``st`` (``openapi`` returns the OpenAPI document)."""
    settings = st.settings
    api = APIRouter(dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)

    def store() -> JobStore:
        if st.store is None or st.executor is None:
            raise HTTPException(503, "the service is starting or stopping")
        return st.store

    def get_row(job_id: str) -> dict[str, Any]:
        row = store().get(job_id)
        if row is None:
            raise HTTPException(404, f"no job {job_id}")
        return row

    JobId = PathParam(..., pattern=JOB_ID, description="the id POST /jobs returned")

    # ---------------------------------------------------------------- jobs
    body_schema = {"$ref": "#/components/schemas/JobSpec"}
    request_body = {"required": True, "description": "A job spec, the schema of `dte-dask run` (JSON or YAML).",
                    "content": {**{t: {"schema": body_schema} for t in JSON_TYPES},
                                "application/yaml": {"schema": {"type": "string"}}}}

    job_links = {
        "GetJob": {"operationId": "get_job", "parameters": {"job_id": "$response.body#/id"}},
        "CancelJob": {"operationId": "cancel_job", "parameters": {"job_id": "$response.body#/id"}},
        "ListResults": {"operationId": "list_results", "parameters": {"job_id": "$response.body#/id"}},
    }

    @api.post("/jobs", status_code=202, response_model=JobInfo, openapi_extra={"requestBody": request_body},
              operation_id="submit_job",
              responses={202: {"links": job_links}, 413: {"model": Problem}, 415: {"model": Problem},
                         422: {"model": Problem}, 429: {"model": Problem}})
    async def submit_job(request: Request) -> Response:
        """Validate a job spec and queue it."""
        body = await request.body()
        info = await run_in_threadpool(_submit, body, request.headers.get("content-type"))
        return JSONResponse(info.model_dump(mode="json"), status_code=202, headers={"Location": info.links["self"]})

    def _submit(body: bytes, content_type: str | None) -> JobInfo:
        s = store()
        assert st.executor is not None and st.metrics is not None
        try:
            obj = load_body(body, content_type)
            check_sizes(obj, settings.limits)
            job = validate_spec(obj)
            check_limits(job, settings.limits)
            if job.data.storage_options:
                raise SpecProblem.one(["data", "storage_options"], "set by the service for its allowed buckets "
                                      "(dte-dask serve --bucket-option); a job cannot choose them", "value_error")
            source = confine_source(job.data.source, settings.data_roots, settings.data_buckets,
                                    settings.bucket_options)
            if "://" in source:
                job.data.storage_options = dict(settings.bucket_options)
            check_columns(job, source)
            warnings = check_size(job, settings.limits, source)
            job.disclosure = check_disclosure(job.disclosure, settings.disclosure)
        except UnsupportedMediaType as exc:
            st.metrics.rejected.labels(reason="media_type").inc()
            raise HTTPException(415, f"send the job as {JSON_TYPES[0]} or {YAML_TYPES[0]}, not {exc}") from None
        except SpecProblem as exc:
            big = {e.get("type") for e in exc.errors} & {"job_too_large", "task_too_large"}
            st.metrics.rejected.labels(reason="too_large" if big else "invalid").inc()
            raise
        if job.cluster.profile != "local" or job.cluster.overrides:
            warnings.append("cluster.profile/overrides are not used: jobs run on the service's cluster")
        if job.output != "results":
            warnings.append("output is not used: results are served from GET /jobs/{id}/results")
        job_id = uuid.uuid4().hex
        with st.submit_lock:
            if not st.executor.can_accept():
                st.metrics.rejected.labels(reason="queue_full").inc()
                raise HTTPException(429, f"the queue is full ({settings.max_queued} jobs waiting); retry later",
                                    headers={"Retry-After": "10"})
            row = s.add(job_id, job.name, job.model_dump(mode="json"), os.fspath(settings.results_root / job_id),
                        warnings)
            try:
                st.executor.submit(job_id)
            except QueueFull as exc:  # pragma: no cover - can_accept() said yes under the same lock
                s.transition(job_id, ["queued"], "failed", error=str(exc))
                raise HTTPException(429, str(exc)) from None
        st.metrics.submitted.inc()
        logger.info("job %s: queued %r", job_id, job.name)
        return job_info(st, row)

    @api.get("/jobs", response_model=JobList, operation_id="list_jobs")
    def list_jobs(state: Annotated[State | None, Query(description="only jobs in this state")] = None,
                  limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
                  offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> JobList:
        """Job summaries, newest first, a page at a time (GET /jobs/{id} has the spec and results)."""
        rows, total = store().list(state, limit, offset)
        jobs = [JobSummary(id=r["id"], name=r["name"], state=r["state"], submitted_at=iso_time(r["submitted_at"]),
                           started_at=iso_time(r["started_at"]), finished_at=iso_time(r["finished_at"]), error=r["error"],
                           links={"self": f"/jobs/{r['id']}", "results": f"/jobs/{r['id']}/results"}) for r in rows]
        nxt = offset + len(rows) if offset + len(rows) < total else None
        return JobList(jobs=jobs, total=total, limit=limit, offset=offset, next_offset=nxt)

    @api.get("/jobs/{job_id}", response_model=JobInfo, operation_id="get_job",
             responses={200: {"links": job_links}, 404: {"model": Problem}})
    def get_job(job_id: str = JobId) -> JobInfo:
        """A job's state, progress, timings, error."""
        return job_info(st, get_row(job_id))

    @api.delete("/jobs/{job_id}", response_model=JobInfo, status_code=202, operation_id="cancel_job",
                responses={204: {"description": "the job had finished: it is deleted, with its results"},
                           404: {"model": Problem}})
    def cancel_job(job_id: str = JobId) -> Any:
        """Cancel a queued or running job (its futures are released, its partial outputs removed);
        delete a finished one with its results."""
        row = get_row(job_id)
        if row["state"] in FINAL:
            remove_results(row["results_dir"], settings.results_root)
            store().delete(job_id)
            logger.info("job %s: deleted (%s)", job_id, row["state"])
            return Response(status_code=204)
        assert st.executor is not None
        st.executor.cancel(job_id)
        return job_info(st, get_row(job_id), progress=False)

    # ---------------------------------------------------------------- results
    def results_dir(row: dict[str, Any]) -> Path:
        if row["state"] in ("cancelling", "cancelled"):
            raise HTTPException(409, f"job {row['id']} was cancelled: it has no results")
        return Path(row["results_dir"] or settings.results_root / row["id"])

    @api.get("/jobs/{job_id}/results", response_model=ResultList, operation_id="list_results", responses={
        200: {"links": {"GetResult": {"operationId": "get_result", "parameters": {
            "job_id": "$response.body#/job", "name": "$response.body#/files/0/name"}}}},
        404: {"model": Problem}, 409: {"model": Problem}})
    def list_results(job_id: str = JobId) -> ResultList:
        """The files of a job's results folder (empty until it has written them)."""
        row = get_row(job_id)
        root = results_dir(row)
        files = []
        if root.is_dir():
            for p in sorted(root.rglob("*")):
                if p.is_file() and not p.is_symlink():
                    rel = p.relative_to(root).as_posix()
                    files.append(ResultFile(name=rel, size=p.stat().st_size, media_type=media_type(rel),
                                            url=f"/jobs/{job_id}/results/{rel}"))
        return ResultList(job=job_id, state=row["state"], files=files)

    @api.get("/jobs/{job_id}/results/{name:path}", operation_id="get_result", responses={
        200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
              "description": "the file"}, 404: {"model": Problem}, 409: {"model": Problem}})
    def get_result(job_id: str = JobId, name: str = PathParam(..., description="a name from GET .../results")
                   ) -> Response:
        """Download one result file."""
        row = get_row(job_id)
        root = results_dir(row)
        pure = PurePosixPath(name)
        if not name or "\x00" in name or pure.is_absolute() or ".." in pure.parts or "\\" in name:
            raise HTTPException(404, f"no result {name!r}")
        path = root / pure
        try:
            real, real_root = path.resolve(), root.resolve()
        except (OSError, RuntimeError, ValueError):
            raise HTTPException(404, f"no result {name!r}") from None
        if not real.is_relative_to(real_root) or not real.is_file() or path.is_symlink():
            raise HTTPException(404, f"no result {name!r}")
        return FileResponse(real, media_type=media_type(name), filename=pure.name)

    # ---------------------------------------------------------------- operations
    @api.get("/metrics", response_class=Response, operation_id="metrics", responses={
        200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
              "description": "Prometheus text exposition"}})
    def metrics() -> Response:
        """Prometheus metrics: jobs by state, durations, cluster workers and memory."""
        if st.metrics is None:
            raise HTTPException(503, "the service is starting")
        return Response(st.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/openapi.json", include_in_schema=False)
    def openapi_doc() -> JSONResponse:
        return JSONResponse(openapi())

    return api


def add_health(app: FastAPI, st: ServiceState, version: str) -> None:
    """``GET /health``: liveness and readiness, the only route without a token."""

    @app.get("/health", response_model=Health, operation_id="health", responses={503: {"model": Health}})
    def health() -> Response:
        """Liveness and readiness (no token needed): 200 once the cluster is connected."""
        ok = st.ready and st.client is not None and getattr(st.client, "status", "") == "running"
        body = Health(status="ok" if ok else "unavailable", version=version)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


def media_type(name: str) -> str:
    if name.endswith(".parquet"):
        return "application/vnd.apache.parquet"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"
