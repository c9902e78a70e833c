"""The FastAPI application: routes, authentication, request limits, OpenAPI.

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
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hmac
import logging
import mimetypes
import os
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from dte_dask.service.executor import JobExecutor, QueueFull
from dte_dask.service.limits import check_size, check_sizes
from dte_dask.service.metrics import CONTENT_TYPE_LATEST, ServiceMetrics
from dte_dask.service.middleware import BodySizeLimit, MetricsPortOnly
from dte_dask.service.paths import confine_source
from dte_dask.service.retention import Purger, remove_results
from dte_dask.service.settings import ServiceSettings
from dte_dask.service.store import FINAL, STATES, JobStore
from dte_dask.service.validate import (
    JSON_TYPES,
    YAML_TYPES,
    SpecProblem,
    UnsupportedMediaType,
    check_columns,
    check_limits,
    load_body,
    validate_spec,
)

logger = logging.getLogger("dte_dask.service")

JOB_ID = r"^[0-9a-f]{32}$"
State = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled", "interrupted"]
assert set(State.__args__) == set(STATES)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- response models
class Progress(BaseModel):
    fraction: float = Field(..., ge=0, le=1, description="tasks done / tasks submitted so far (the total grows "
                                                         "as the job submits its next graphs)")
    tasks_done: int
    tasks_total: int


class JobInfo(BaseModel):
    id: str
    name: str
    state: State
    submitted_at: _dt.datetime
    started_at: _dt.datetime | None = None
    finished_at: _dt.datetime | None = None
    queued_s: float | None = Field(None, description="seconds between submission and start (or now)")
    run_s: float | None = Field(None, description="seconds between start and end (or now)")
    queue_position: int | None = Field(None, description="0 = next to start; only while queued")
    progress: Progress | None = None
    dashboard: str | None = Field(None, description="the cluster's Dask dashboard")
    error: str | None = None
    warnings: list[str] = Field(default_factory=list)
    summary: dict[str, Any] | None = Field(None, description="each estimator's kind and overall estimate "
                                                              "(and the task counts), once succeeded")
    spec: dict[str, Any]
    links: dict[str, str]


class JobSummary(BaseModel):
    id: str
    name: str
    state: State
    submitted_at: _dt.datetime
    started_at: _dt.datetime | None = None
    finished_at: _dt.datetime | None = None
    error: str | None = Field(None, description="the first 500 characters; GET /jobs/{id} has it all")
    links: dict[str, str]


class JobList(BaseModel):
    jobs: list[JobSummary]
    total: int = Field(..., description="jobs in all (with that state)")
    limit: int
    offset: int
    next_offset: int | None = Field(None, description="offset of the next page; null on the last")


MAX_PAGE = 200


class ResultFile(BaseModel):
    name: str
    size: int
    media_type: str
    url: str


class ResultList(BaseModel):
    job: str
    state: State
    files: list[ResultFile]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    version: str


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    detail: str | list[ErrorItem]


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing bearer token"},
    403: {"model": Problem, "description": "wrong bearer token"},
}


# ----------------------------------------------------------------------------- state
class ServiceState:
    """What the routes share: settings, store, executor, metrics, the cluster's client."""

    def __init__(self, settings: ServiceSettings, client: Any = None) -> None:
        self.settings = settings
        self.client = client
        self._own_client = client is None
        self._stack = contextlib.ExitStack()
        self.store: JobStore | None = None
        self.executor: JobExecutor | None = None
        self.dashboard: str | None = None
        self.ready = False
        self.submit_lock = threading.Lock()
        self.metrics: ServiceMetrics | None = None
        self.purger: Purger | None = None

    def start(self) -> None:
        s = self.settings
        s.results_root.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(s.db_path)
        self._stack.callback(self.store.close)
        self.metrics = ServiceMetrics(self.store, max_concurrent=s.max_concurrent,
                                      executor=lambda: self.executor, client=lambda: self.client)
        resume = self.store.recover()
        _warm_up()  # the estimators' imports, so that the first POST /jobs answers as fast as the next
        if self.client is None:
            from dte_dask.cluster import connect

            self.client = self._stack.enter_context(connect(s.profile))
        with contextlib.suppress(Exception):
            if "dashboard" in (self.client.scheduler_info().get("services") or {}):
                self.dashboard = self.client.dashboard_link
        self.executor = JobExecutor(self.store, self.client, max_concurrent=s.max_concurrent,
                                    max_queued=max(s.max_queued, len(resume)), prepare=self.prepare,
                                    on_finish=self.metrics.job_finished, job_timeout_s=s.job_timeout_s,
                                    job_memory_bytes=s.job_memory_bytes, results_root=s.results_root)
        self.executor.start(resume)
        if s.retain_days is not None:
            self.purger = Purger(self.store, s.results_root, s.retain_days, s.purge_interval_s)
            self._stack.callback(self.purger.stop)
            self.purger.start()
        self.ready = True
        logger.info("dte-dask serve ready on %s (profile %s; %d job(s) resumed from the queue; db %s)",
                    s.public_url or "<app>", s.profile if isinstance(s.profile, str) else "<inline>",
                    len(resume), s.db_path)

    def stop(self) -> None:
        self.ready = False
        if self.executor is not None:
            self.executor.shutdown(self.settings.shutdown_grace_s)
        self._stack.close()

    def prepare(self, row: dict[str, Any]) -> Any:
        """The stored job as it runs: path confined again, output = the job's results folder."""
        job = validate_spec(row["spec"])
        try:
            job.data.source = confine_source(job.data.source, self.settings.data_roots, self.settings.data_buckets,
                                             self.settings.bucket_options)
        except SpecProblem as exc:
            raise ValueError(str(exc)) from None
        job.data.storage_options = dict(self.settings.bucket_options) if "://" in job.data.source else None
        job.output = row["results_dir"]
        return job


def _warm_up() -> None:
    import dte_dask
    from dte_dask.jobs.spec import ESTIMATORS

    for kind in ESTIMATORS:
        getattr(dte_dask, kind, None)


def _iso(t: float | None) -> _dt.datetime | None:
    return None if t is None else _dt.datetime.fromtimestamp(t, tz=_dt.UTC)


def _info(st: ServiceState, row: dict[str, Any], *, progress: bool = True) -> JobInfo:
    import time

    now = time.time()
    sub, start, end = row["submitted_at"], row["started_at"], row["finished_at"]
    queued_s = ((start if start is not None else (end if end is not None else now)) - sub)
    run_s = None if start is None else ((end if end is not None else now) - start)
    prog = None
    if row["state"] == "succeeded":
        last = (row["summary"] or {}).get("progress") or {}
        done = int(last.get("tasks_total") or last.get("tasks_done") or 0)
        prog = Progress(fraction=1.0, tasks_done=done, tasks_total=done)
    elif row["state"] == "running" and progress and st.executor is not None:
        p = st.executor.progress(row["id"])
        if p is not None:
            prog = Progress(**p)
    pos = st.executor.position(row["id"]) if row["state"] == "queued" and st.executor else None
    jid = row["id"]
    return JobInfo(id=jid, name=row["name"], state=row["state"], submitted_at=_iso(sub), started_at=_iso(start),
                   finished_at=_iso(end), queued_s=max(0.0, queued_s), run_s=None if run_s is None else max(0.0, run_s),
                   queue_position=pos, progress=prog,
                   dashboard=st.dashboard if row["state"] in ("running", "cancelling") else None,
                   error=row["error"], warnings=row["warnings"] or [], summary=row["summary"], spec=row["spec"],
                   links={"self": f"/jobs/{jid}", "results": f"/jobs/{jid}/results"})


# ----------------------------------------------------------------------------- app
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
    api = APIRouter(dependencies=[Depends(require_token)], responses=_ERRORS)

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
        return _info(st, row)

    @api.get("/jobs", response_model=JobList, operation_id="list_jobs")
    def list_jobs(state: Annotated[State | None, Query(description="only jobs in this state")] = None,
                  limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
                  offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> JobList:
        """Job summaries, newest first, a page at a time (GET /jobs/{id} has the spec and results)."""
        rows, total = store().list(state, limit, offset)
        jobs = [JobSummary(id=r["id"], name=r["name"], state=r["state"], submitted_at=_iso(r["submitted_at"]),
                           started_at=_iso(r["started_at"]), finished_at=_iso(r["finished_at"]), error=r["error"],
                           links={"self": f"/jobs/{r['id']}", "results": f"/jobs/{r['id']}/results"}) for r in rows]
        nxt = offset + len(rows) if offset + len(rows) < total else None
        return JobList(jobs=jobs, total=total, limit=limit, offset=offset, next_offset=nxt)

    @api.get("/jobs/{job_id}", response_model=JobInfo, operation_id="get_job",
             responses={200: {"links": job_links}, 404: {"model": Problem}})
    def get_job(job_id: str = JobId) -> JobInfo:
        """A job's state, progress, timings, error."""
        return _info(st, get_row(job_id))

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
        return _info(st, get_row(job_id), progress=False)

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
                    files.append(ResultFile(name=rel, size=p.stat().st_size, media_type=_media_type(rel),
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
        return FileResponse(real, media_type=_media_type(name), filename=pure.name)

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
        return JSONResponse(app.openapi())

    @app.get("/health", response_model=Health, operation_id="health", responses={503: {"model": Health}})
    def health() -> Response:
        """Liveness and readiness (no token needed): 200 once the cluster is connected."""
        ok = st.ready and st.client is not None and getattr(st.client, "status", "") == "running"
        body = Health(status="ok" if ok else "unavailable", version=dte_dask.__version__)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    app.include_router(api)

    @app.exception_handler(SpecProblem)
    async def _spec_problem(request: Request, exc: SpecProblem) -> JSONResponse:
        return JSONResponse({"detail": exc.errors, "message": f"invalid job spec: {exc}"}, status_code=exc.status)

    def custom_openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        from dte_dask.jobs.spec import JobSpec

        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        spec_schema = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
        comps = doc.setdefault("components", {}).setdefault("schemas", {})
        comps.update(spec_schema.pop("$defs", {}))
        comps["JobSpec"] = spec_schema
        _document_service_rules(comps, settings)
        app.openapi_schema = doc
        return doc

    app.openapi = custom_openapi  # type: ignore[method-assign]
    app.add_middleware(BodySizeLimit, limit=settings.max_request_bytes)
    if settings.metrics_port:
        app.add_middleware(MetricsPortOnly, port=settings.metrics_port)
    return app


def _document_service_rules(schemas: dict[str, Any], settings: ServiceSettings) -> None:
    """Spell the service's own checks (limits, names, option names, sources) in the JobSpec schema."""
    import inspect

    import dte_dask
    from dte_dask.jobs.spec import _RESERVED, AGGREGATIONS, ESTIMATORS
    from dte_dask.service.validate import _NAME, BUILTIN_SOURCES

    lim = settings.limits
    name = {"anyOf": [{"type": "string", "pattern": _NAME.pattern, "maxLength": 100}, {"type": "null"}],
            "default": None, "title": "Name", "description": "result name (a file name); default: the kind"}
    variants = []
    for kind in ESTIMATORS:
        fn = getattr(dte_dask, kind, None)
        if fn is None:
            continue
        params = list(inspect.signature(fn).parameters)[1:]
        aggs: dict[str, Any] = {"type": "array", "items": {"type": "string", "enum": list(AGGREGATIONS)},
                                "title": "Aggregations"}
        if kind != "att_gt":
            aggs["maxItems"] = 0
        variants.append({
            "type": "object", "title": f"EstimatorSpec ({kind})", "additionalProperties": False, "required": ["kind"],
            "properties": {
                "kind": {"type": "string", "enum": [kind], "title": "Kind"},
                "name": name,
                "options": {"type": "object", "title": "Options", "additionalProperties": True,
                            "propertyNames": {"enum": sorted(p for p in params if p not in _RESERVED)},
                            "description": f"keyword options of dte_dask.{kind}"},
                "aggregations": aggs,
            }})
    if variants:
        schemas["EstimatorSpec"] = {"title": "EstimatorSpec", "oneOf": variants,
                                    "description": "one estimator: its kind, result name and options"}
    with contextlib.suppress(KeyError, TypeError):
        import copy

        data = schemas["DataSpec"]
        desc = data["properties"]["source"].get("description", "")
        builtin = copy.deepcopy(data)
        builtin["title"] = "DataSpec (bundled or simulated)"
        builtin["properties"]["source"] = {"type": "string", "enum": list(BUILTIN_SOURCES), "title": "Source"}
        files = copy.deepcopy(data)
        files["title"] = "DataSpec (files)"
        files["properties"]["source"] = {
            "type": "string", "minLength": 1, "title": "Source",
            "description": desc + "; relative to the service's data roots, and it must stay inside them"}
        files["required"] = sorted({*files.get("required", []), "unit", "time", "outcome"})
        for col in ("unit", "time", "outcome"):
            files["properties"][col] = {"type": "string", "minLength": 1, "title": col.capitalize()}
        files["anyOf"] = [{"required": [c], "properties": {c: {"type": "string", "minLength": 1}}}
                          for c in ("group", "treatment")]
        schemas["DataSpec"] = {"title": "DataSpec", "description": "the panel: " + desc, "anyOf": [builtin, files]}
    with contextlib.suppress(KeyError, TypeError):
        schemas["InferenceSpec"]["properties"]["n_boot"]["maximum"] = lim.max_n_boot
    with contextlib.suppress(KeyError, TypeError):
        sim = schemas["SimulateSpec"]["properties"]
        sim["units"]["maximum"] = max(1, lim.max_simulate_rows // 2)
        sim["units"]["description"] = f"units x periods at most {lim.max_simulate_rows} on this service"
        for branch in sim["periods"].get("anyOf", []):
            if branch.get("type") == "integer":
                branch["maximum"] = max(2, lim.max_simulate_rows)
    with contextlib.suppress(KeyError, TypeError):
        for variant in schemas["DataSpec"]["anyOf"]:
            for branch in variant["properties"]["npartitions"].get("anyOf", []):
                if branch.get("type") == "integer":
                    branch["maximum"] = lim.max_npartitions
    with contextlib.suppress(KeyError, TypeError):
        schemas["JobSpec"]["properties"]["estimators"]["maxItems"] = lim.max_estimators
        schemas["JobSpec"]["properties"]["name"]["maxLength"] = lim.max_name_chars


def _media_type(name: str) -> str:
    if name.endswith(".parquet"):
        return "application/vnd.apache.parquet"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"
