"""The job spec: which data, which estimators with which options, inference, cluster, output.

A job is a YAML (or JSON) mapping validated by pydantic models whose sections are closed:
unknown keys are errors naming their path (``estimators.0.options.contol_group``). Estimator
options are validated by the estimator's own options model (:mod:`dte_dask.estimators.options`,
the models the library functions use), so a typo or a bad value fails before any work, at its
path (``estimators.0.options.control_group``).

Example::

    name: mpdta
    data: {source: mpdta, unit: countyreal, time: year, outcome: lemp, group: first_treat}
    estimators:
      - {kind: att_gt, options: {control_group: never_treated}, aggregations: [simple, dynamic]}
    inference: {bootstrap: true, n_boot: 999, seed: 1}
    cluster: {profile: local}
    disclosure: {min_cell_size: 10, round_counts: 5}   # optional: see dte_dask.disclosure
    output: results/mpdta
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from dte_dask import registry
from dte_dask.disclosure import DisclosureSpec
from dte_dask.estimators.options import InferenceOptions
from dte_dask.exceptions import SpecError
from dte_dask.jobs.checks import CheckSpec
from dte_dask.registry import AGGREGATIONS  # noqa: F401  (re-exported: the aggregation names)

# options set from other sections of the spec, not per estimator
RESERVED_OPTIONS = {"data", "outcome", "unit", "time", "group", "treatment", "covariates", "weights", "cluster",
             "npartitions", "bootstrap", "n_boot", "seed", "alpha", "boot_weights", "uniform_bands"}
# which rows an estimator keeps: per estimator (its function's keyword), as in a direct call
PANEL_OPTIONS = {"allow_unbalanced_panel"}


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SimulateSpec(_Closed):
    units: int = Field(10_000, ge=1)
    periods: int | None = Field(None, ge=2)
    preset: Literal["medical"] | None = None
    seed: int = 0
    selection: bool | None = None
    cohorts: list[int] | None = None
    never_treated_share: float = 0.3
    unbalanced_share: float = 0.0


class DataSpec(_Closed):
    source: str = Field(..., description="'mpdta' (bundled), 'simulate', or a parquet/CSV path or glob, "
                                         "local or in object storage (s3://bucket/prefix/, s3://bucket/p/*.parquet)")
    simulate: SimulateSpec | None = None
    unit: str | None = None
    time: str | None = None
    outcome: str | None = None
    group: str | None = None
    treatment: str | None = None
    covariates: list[str] = Field(default_factory=list)
    weights: str | None = None
    cluster: str | None = None
    allow_unbalanced_panel: bool | None = Field(
        None, description="None (default): each estimator keeps the rows its function keeps by default (the "
                          "regressions every observed row, as pyfixest; att_gt balances the panel, as R did, unless "
                          "its options say allow_unbalanced_panel: true); true / false: every estimator keeps "
                          "every row / only the units observed in every period")
    npartitions: int | None = Field(None, ge=1)
    storage_options: dict[str, Any] | None = Field(
        None, description="options of an object-store source's filesystem (endpoint_url, profile, anon, "
                          "client_kwargs...); never credentials: those come from the environment or a profile")

    @field_validator("storage_options")
    @classmethod
    def _no_secrets(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        from dte_dask.storage import check_no_secrets

        check_no_secrets(value)
        return value

    @model_validator(mode="after")
    def _columns(self) -> DataSpec:
        if self.source == "simulate" and self.simulate is None:
            self.simulate = SimulateSpec()
        if self.source not in ("mpdta", "simulate"):
            missing = [c for c in ("unit", "time", "outcome") if getattr(self, c) is None]
            if self.group is None and self.treatment is None:
                missing.append("group")
            if missing:
                raise ValueError(f"data: name the column(s) {missing} for source {self.source!r}")
        return self


def __getattr__(name: str) -> Any:
    if name == "ESTIMATORS":  # the registered names, read when asked (estimators may register later)
        return tuple(registry.names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class EstimatorSpec(_Closed):
    kind: str = Field(..., description="a registered estimator (dte_dask.list_estimators())")
    name: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    aggregations: list[Literal["simple", "dynamic", "group", "calendar"]] = Field(default_factory=list)

    @field_validator("kind")
    @classmethod
    def _registered(cls, kind: str) -> str:
        if kind not in registry.names():
            raise ValueError(f"unknown estimator {kind!r}; registered: {registry.names()}")
        return kind

    @field_validator("options")
    @classmethod
    def _check_options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Validate the values against the kind's options model; its errors keep their field path
        (``estimators.<i>.options.<name>``). Unknown or reserved names are reported by ``_options``."""
        kind = info.data.get("kind")
        if kind not in registry.names() or _misplaced(kind, options):
            return options
        rows = {k: options[k] for k in PANEL_OPTIONS if k in options}
        for k, v in rows.items():
            if not isinstance(v, bool):
                raise ValueError(f"{k} must be true or false, got {v!r}")
        # a ValidationError raised here keeps its locations under estimators.<i>.options
        model = registry.get(kind).options
        rest = {k: v for k, v in options.items() if k not in PANEL_OPTIONS}
        return {**model.model_validate(rest).model_dump(exclude_unset=True), **rows}

    @model_validator(mode="after")
    def _options(self) -> EstimatorSpec:
        problem = _misplaced(self.kind, self.options)
        if problem:
            raise ValueError(problem)
        offered = registry.get(self.kind).aggregations
        bad = [a for a in self.aggregations if a not in offered]
        if bad:
            raise ValueError(f"aggregations {bad} are not offered by {self.kind} (it offers {list(offered) or 'none'})")
        if self.name is None:
            self.name = self.kind
        return self


def _misplaced(kind: str, options: dict[str, Any]) -> str | None:
    """Why some option names do not belong in ``options`` of ``kind`` (None if they all do)."""
    entry = registry.get(kind)
    model = entry.options
    rows = row_options(entry)
    unknown = sorted(set(options) - set(model.model_fields) - set(model.deprecated_names) - RESERVED_OPTIONS
                     - set(rows))
    if unknown:
        return f"unknown option(s) {unknown} for {kind}; valid: {sorted(model.model_fields) + rows}"
    reserved = sorted(set(options) & RESERVED_OPTIONS - set(model.model_fields))  # unless its own option
    if reserved:
        return f"option(s) {reserved} are set in the `data` / `inference` sections, not per estimator"
    return None


def row_options(entry: registry.EstimatorEntry) -> list[str]:
    """The options of :data:`PANEL_OPTIONS` that ``entry``'s function takes (none if it needs a
    balanced panel)."""
    import inspect

    params = inspect.signature(entry.fn).parameters
    return sorted(k for k in PANEL_OPTIONS if entry.unbalanced and k in params)


class InferenceSpec(InferenceOptions):
    """The job's ``inference`` section: :class:`~dte_dask.estimators.options.InferenceOptions`."""

    model_config = ConfigDict(extra="forbid", frozen=False)


class ClusterSpec(_Closed):
    profile: str = "local"
    overrides: dict[str, Any] = Field(default_factory=dict)
    performance_report: bool = True


class JobSpec(_Closed):
    name: str = "job"
    data: DataSpec
    estimators: list[EstimatorSpec] = Field(..., min_length=1)
    inference: InferenceSpec = Field(default_factory=InferenceSpec)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    output: str = "results"
    report: bool = True
    checks: list[CheckSpec] = Field(default_factory=list, description="diagnostics run on every estimator: "
                                    "pretrends, honest_did, pretest_power, or {name: options} (dte_dask.jobs.checks)")
    compare: bool = Field(False, description="line up the estimators' dynamic effects (table + correlation)")
    disclosure: DisclosureSpec = Field(default_factory=DisclosureSpec,
                                       description="small-cell suppression and count rounding of every output "
                                                   "(dte_dask.disclosure)")

    @model_validator(mode="after")
    def _unique_names(self) -> JobSpec:
        names = [e.name for e in self.estimators]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"estimator names must be unique; repeated: {dup} (set `name:`)")
        return self


def _format_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<job>"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{loc}: {msg}")
    return "invalid job spec:\n  " + "\n  ".join(lines)


def parse_job(obj: dict[str, Any] | str | os.PathLike[str]) -> JobSpec:
    """Validate a job from a mapping, a YAML/JSON text, or a file path."""
    if isinstance(obj, (str, os.PathLike)):
        text = str(obj)
        p = Path(text)
        if "\n" not in text and p.suffix in (".yaml", ".yml", ".json"):
            if not p.exists():
                raise SpecError(f"job file {text!r} not found")
            text = p.read_text()
        try:
            obj = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"job spec is not valid YAML/JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise SpecError("a job spec must be a mapping with `data` and `estimators`")
    try:
        return JobSpec.model_validate(obj)
    except ValidationError as exc:
        raise SpecError(_format_error(exc)) from None


def with_overrides(job: JobSpec, *, data: str | None = None, out: str | None = None, profile: str | None = None) -> JobSpec:
    """The same job on another copy of the data / output folder / cluster profile.

    The result is validated again (``--data simulate`` gets a default ``simulate`` section,
    ``--data PATH`` needs the columns named), with errors naming the field.
    """
    upd = job.model_dump(mode="json", exclude_unset=False)
    if data is not None:
        upd["data"]["source"] = data
        if data != "simulate" and job.data.source == "simulate":
            upd["data"]["simulate"] = None
    if out is not None:
        upd["output"] = out
    if profile is not None:
        upd["cluster"]["profile"] = profile
    return parse_job(upd)


# ------------------------------------------------------------------------------ data sources
_ROLES = ("unit", "time", "outcome", "group", "treatment", "weights", "cluster")


def _source_columns(data: DataSpec) -> tuple[list[str], str]:
    """Column names of the data source (read cheaply: a header / parquet schema), and a label."""
    if data.source == "mpdta":
        from dte_dask.datasets import load_mpdta

        return list(load_mpdta().columns), "the bundled mpdta panel"
    if data.source == "simulate":
        import dte_dask

        s = data.simulate or SimulateSpec()
        sim = dte_dask.simulate_panel(s.units, s.periods, preset=s.preset, seed=s.seed, selection=s.selection,
                                      cohorts=s.cohorts, never_treated_share=s.never_treated_share,
                                      unbalanced_share=s.unbalanced_share)  # lazy: nothing is computed
        return list(sim.data.columns), "the simulated panel"
    from dte_dask import storage

    if storage.is_url(data.source):
        from dte_dask.exceptions import PanelError

        try:
            src = storage.resolve(data.source, data.storage_options)
            return storage.columns(src), repr(src.files[0])
        except PanelError as exc:
            raise SpecError(f"data.source: {exc}") from None
    import glob

    path = os.path.expanduser(data.source)
    files = sorted(glob.glob(path)) if any(ch in path for ch in "*?[") else ([path] if os.path.exists(path) else [])
    if not files:
        raise SpecError(f"data.source: {data.source!r} is not 'mpdta', 'simulate', or an existing parquet/CSV "
                        "file, directory or glob")
    first = files[0]
    try:
        if first.endswith((".csv", ".csv.gz")):
            import pandas as pd

            return list(pd.read_csv(first, nrows=0).columns), repr(first)
        if os.path.isdir(first) or first.endswith((".parquet", ".pq")):
            import pyarrow.dataset as ds

            return list(ds.dataset(first, format="parquet", partitioning="hive").schema.names), repr(first)
    except Exception as exc:  # noqa: BLE001 - unreadable file: say which and why
        raise SpecError(f"data.source: cannot read {first!r}: {exc}") from None
    raise SpecError(f"data.source: unsupported file type {first!r} (expected .parquet, a parquet directory "
                    "or .csv)")


def check_data_source(data: DataSpec) -> None:
    """Check, before any cluster starts, that the data source exists and has the named columns.

    Raises
    ------
    SpecError
        Naming the field: ``data.source: 'x.parquet' is not ...`` or
        ``data.outcome: column 'lemp2' not found in 'panel.csv'; available: [...]``.
    """
    available, label = _source_columns(data)
    have = set(available)
    problems = [f"data.{role}: column {getattr(data, role)!r} not found" for role in _ROLES
                if getattr(data, role) is not None and getattr(data, role) not in have]
    problems += [f"data.covariates: column {c!r} not found" for c in data.covariates if c not in have]
    if problems:
        raise SpecError(f"invalid job spec: in {label} (available columns: {available}):\n  "
                        + "\n  ".join(problems))
