"""Request bodies -> validated :class:`~dte_dask.jobs.spec.JobSpec`, before anything runs.

A job arrives as JSON (``application/json``) or YAML (``application/yaml``, ``text/yaml``,
``application/x-yaml``, ``text/plain``): the same schema as ``dte-dask run``. Every problem is a
:class:`SpecProblem` whose errors carry the field's location (``["body", "data", "source"]``),
which the API answers with 422. On top of the spec's own rules the service checks

* its :class:`~dte_dask.service.settings.Limits` (simulated panel size, bootstrap draws,
  estimators, partitions) and that estimator names can become file names;
* that the job's disclosure control is at least as strict as the service's (:func:`check_disclosure`);
* that a file source lies inside one of the configured data roots: see
  :mod:`dte_dask.service.paths` (decided lexically first; one answer for every refused path).

YAML is read without anchors/aliases (no "billion laughs"), and numbers must be finite.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

import yaml
from pydantic import ValidationError

from dte_dask.disclosure import DisclosureSpec
from dte_dask.jobs.spec import JobSpec
from dte_dask.service.settings import Limits

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")
JSON_TYPES = ("application/json",)
BUILTIN_SOURCES = ("mpdta", "simulate")
RESULT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # as dte_dask.report: it becomes a file name


class SpecProblem(Exception):
    """A job spec that cannot run; ``errors`` are ``{"loc": [...], "msg": str, "type": str}``."""

    def __init__(self, errors: list[dict[str, Any]], status: int = 422) -> None:
        self.errors = errors
        self.status = status
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))

    @classmethod
    def one(cls, loc: list[Any], msg: str, type_: str = "value_error", status: int = 422) -> SpecProblem:
        return cls([{"loc": ["body", *loc], "msg": msg, "type": type_}], status=status)


class UnsupportedMediaType(Exception):
    """The body's content type is neither JSON nor YAML (415)."""


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses anchors and aliases."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"YAML aliases are not accepted (alias *{event.anchor}{event.start_mark})")
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:
            raise yaml.YAMLError(f"YAML anchors are not accepted (&{event.anchor}{event.start_mark})")
        return super().compose_node(parent, index)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid number here (numbers must be finite)")


def load_body(body: bytes, content_type: str | None) -> Any:
    """Decode a request body as JSON or YAML (by content type; none given: YAML, a JSON superset).

    Raises
    ------
    UnsupportedMediaType
        Another content type.
    SpecProblem
        Not UTF-8, not parseable, or holding a non-finite number.
    """
    ct = (content_type or "").split(";")[0].strip().lower()
    if ct and ct not in YAML_TYPES + JSON_TYPES and not ct.endswith("+json") and not ct.endswith("+yaml"):
        raise UnsupportedMediaType(ct)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecProblem.one([], f"the body is not UTF-8 text: {exc}", "body_encoding") from None
    try:
        if ct in JSON_TYPES or ct.endswith("+json"):
            obj = json.loads(text, parse_constant=_reject_constant)
        else:
            obj = yaml.load(text, Loader=_NoAliasLoader)
        _check_finite(obj, [])
    except SpecProblem:
        raise
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if ct in JSON_TYPES or ct.endswith("+json") else "YAML/JSON"
        raise SpecProblem.one([], f"the body is not valid {kind}: {exc}", "body_parse") from None
    except RecursionError:
        raise SpecProblem.one([], "the body is nested too deeply", "body_parse") from None
    return obj


def _check_finite(v: Any, loc: list[Any]) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        raise SpecProblem.one(loc, f"{v!r} is not accepted: numbers must be finite", "finite_number")
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise SpecProblem.one(loc, f"mapping keys must be strings, got {k!r}", "key_type")
            _check_finite(x, [*loc, k])
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _check_finite(x, [*loc, i])


def validate_spec(obj: Any) -> JobSpec:
    """``JobSpec.model_validate`` with its errors as a :class:`SpecProblem` (422, field paths)."""
    if not isinstance(obj, dict):
        raise SpecProblem.one([], "a job spec must be a mapping with `data` and `estimators`", "model_type")
    try:
        return JobSpec.model_validate(obj)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            msg = str(err.get("msg", "")).removeprefix("Value error, ")
            if err.get("type") == "extra_forbidden":
                msg = "unknown key"
            errors.append({"loc": ["body", *err.get("loc", ())], "msg": msg, "type": str(err.get("type", ""))})
        raise SpecProblem(errors) from None
    except RecursionError:
        raise SpecProblem.one([], "the job spec is nested too deeply", "value_error") from None
    except Exception as exc:  # noqa: BLE001 - a validator tripping over odd input is still the input's fault
        raise SpecProblem.one([], f"invalid job spec: {type(exc).__name__}: {exc}", "value_error") from None


def check_limits(job: JobSpec, limits: Limits) -> None:
    """The service's limits and file-name rules; raises :class:`SpecProblem`."""
    if len(job.estimators) > limits.max_estimators:
        raise SpecProblem.one(["estimators"], f"at most {limits.max_estimators} estimators per job on this service",
                              "too_long")
    for i, est in enumerate(job.estimators):
        if est.name is None or not RESULT_NAME.match(est.name) or len(est.name) > 100:
            raise SpecProblem.one(["estimators", i, "name"],
                                  f"{est.name!r} must match {RESULT_NAME.pattern} (at most 100 characters; it becomes a file name)")
    if job.inference.bootstrap and job.inference.n_boot > limits.max_n_boot:
        raise SpecProblem.one(["inference", "n_boot"], f"at most {limits.max_n_boot} bootstrap draws on this service",
                              "less_than_equal")
    if job.data.npartitions is not None and job.data.npartitions > limits.max_npartitions:
        raise SpecProblem.one(["data", "npartitions"], f"at most {limits.max_npartitions} partitions on this service",
                              "less_than_equal")
    if job.data.source == "simulate" and job.data.simulate is not None:
        s = job.data.simulate
        periods = s.periods if s.periods is not None else (24 if s.preset == "medical" else 10)
        if s.units * periods > limits.max_simulate_rows:
            field = "units" if s.periods is None or s.units >= periods else "periods"
            raise SpecProblem.one(["data", "simulate", field],
                                  f"units x periods = {s.units * periods} exceeds this service's limit of "
                                  f"{limits.max_simulate_rows} simulated rows", "less_than_equal")


_FIELD = re.compile(r"\bdata\.([a-z_]+)(?:\.\d+)?:")


def check_columns(job: JobSpec, source: str) -> None:
    """The data source (already confined, as ``source``) exists and has the columns the job names.

    Uses :func:`dte_dask.jobs.spec.check_data_source` where this version has it (reads only a
    header / parquet schema); its :class:`~dte_dask.exceptions.SpecError` becomes a 422 at the
    field it names (``data.outcome``...).
    """
    from dte_dask.exceptions import DteDaskError
    from dte_dask.jobs import spec as spec_module

    check = getattr(spec_module, "check_data_source", None)
    if check is None:
        return
    data = job.data.model_copy(deep=True)
    data.source = source
    try:
        check(data)
    except (DteDaskError, ValueError, TypeError, OSError) as exc:
        msg = str(exc).removeprefix("invalid job spec: ")
        m = _FIELD.search(msg)
        raise SpecProblem.one(["data", m.group(1)] if m else ["data"], msg) from None


def check_disclosure(job: DisclosureSpec, service: DisclosureSpec) -> DisclosureSpec:
    """The job's disclosure control with the service's defaults filled in; a setting looser than
    the service's is a 422 naming the field (``disclosure.min_cell_size``)."""
    from dte_dask.disclosure import effective, looser_fields

    bad = looser_fields(job, service)
    if bad:
        raise SpecProblem([{"loc": ["body", "disclosure", f], "msg": msg, "type": "value_error"} for f, msg in bad])
    return effective(job, service)
