"""Response models of the service (pydantic), the job-id pattern and the error responses."""
from __future__ import annotations

import datetime as _dt
from typing import Any, Literal

from pydantic import BaseModel, Field

from dte_dask.service.store import STATES

JOB_ID = r"^[0-9a-f]{32}$"
State = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled", "interrupted"]
assert set(State.__args__) == set(STATES)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- response models
class Progress(BaseModel):
    fraction: float = Field(..., ge=0, le=1, description="tasks done / tasks submitted so far (the total grows "
                                                         "as the job submits its next graphs)")
    tasks_done: int
    tasks_total: int


class JobCore(BaseModel):
    """The fields a job's list entry and its full record share."""

    id: str
    name: str
    state: State
    submitted_at: _dt.datetime
    started_at: _dt.datetime | None = None
    finished_at: _dt.datetime | None = None
    links: dict[str, str]


class JobInfo(JobCore):
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


class JobSummary(JobCore):
    error: str | None = Field(None, description="the first 500 characters; GET /jobs/{id} has it all")


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


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing bearer token"},
    403: {"model": Problem, "description": "wrong bearer token"},
}

