"""The ``checks`` of a job: which diagnostics run on every estimator, with their options.

Each item of the job's ``checks`` list is a check's name, or a one-key mapping from the name to
its options (validated here; an error names its path, ``checks.0.honest_did.M.1``)::

    checks:
      - pretrends                                   # Wald test + band over the pre-periods
      - honest_did                                  # HonestDiD defaults (relative magnitudes, C-LF)
      - {honest_did: {restriction: smoothness, M: [0, 0.01, 0.02], event_time: 0}}
      - {pretest_power: {powers: [0.5, 0.8]}}

``pretrends`` runs on every result that has ``pretrend_test()``; ``honest_did`` and
``pretest_power`` on every estimator whose registry entry produces event-time estimates
(``result`` "cells" or "event_study"). A check that cannot run on one estimator (no pre-period
estimates, a singular covariance) is recorded as a note of the job, not an error.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)

from dte_dask import registry
from dte_dask.exceptions import DteDaskError

_METHODS = {"relative_magnitude": ("C-LF", "Conditional"), "combined": ("C-LF", "Conditional"),
            "smoothness": ("FLCI", "Conditional", "C-F", "C-LF")}


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PretrendsOptions(_Closed):
    """``pretrends``: no options (the level is the result's ``alpha``)."""


class HonestDiDOptions(_Closed):
    """``honest_did``: the keywords of :func:`dte_dask.honest_did` (see docs/sensitivity.md)."""

    event_time: int | None = None
    l_vec: list[float] | None = Field(None, min_length=1)
    restriction: Literal["relative_magnitude", "smoothness", "combined"] = "relative_magnitude"
    M: list[float] | float | None = Field(None, description="bounds (at most 200)")
    method: Literal["FLCI", "Conditional", "C-F", "C-LF"] | None = None
    alpha: float | None = Field(None, gt=0, lt=1)
    bias_direction: Literal["positive", "negative"] | None = None
    monotonicity_direction: Literal["increasing", "decreasing"] | None = None
    grid_points: int = Field(1000, ge=3, le=20_000)
    grid_lb: float | None = None
    grid_ub: float | None = None
    lf_sims: int = Field(1000, ge=10, le=100_000)
    seed: int = 0

    @field_validator("M")
    @classmethod
    def _bounds(cls, M: list[float] | float | None) -> list[float] | float | None:
        Ms = M if isinstance(M, list) else [] if M is None else [M]
        if any(not (0 <= m < float("inf")) for m in Ms) or (isinstance(M, list) and not 0 < len(Ms) <= 200):
            raise ValueError(f"M must be 1 to 200 finite non-negative bounds, got {M!r}")
        return M

    @model_validator(mode="after")
    def _consistent(self) -> HonestDiDOptions:
        if self.method is not None and self.method not in _METHODS[self.restriction]:
            raise ValueError(f"method={self.method!r} is not available for restriction={self.restriction!r}; "
                             f"choose one of {list(_METHODS[self.restriction])}")
        if self.bias_direction is not None and self.monotonicity_direction is not None:
            raise ValueError("bias_direction and monotonicity_direction cannot both be set")
        if self.grid_lb is not None and self.grid_ub is not None and not self.grid_lb < self.grid_ub:
            raise ValueError(f"grid_lb={self.grid_lb} must be below grid_ub={self.grid_ub}")
        return self


class PretestPowerOptions(_Closed):
    """``pretest_power``: the keywords of :func:`dte_dask.pretest_power`."""

    slope: list[float] | float | None = None
    powers: list[float] = Field(default_factory=lambda: [0.5, 0.8], min_length=1)
    alpha: float = Field(0.05, gt=0, lt=1)
    l_vec: list[float] | None = Field(None, min_length=1)

    @field_validator("powers")
    @classmethod
    def _powers(cls, powers: list[float]) -> list[float]:
        if any(not 0 < p < 1 for p in powers):
            raise ValueError(f"powers must lie in (0, 1), got {powers}")
        return powers


CHECKS: dict[str, type[_Closed]] = {"pretrends": PretrendsOptions, "honest_did": HonestDiDOptions,
                                    "pretest_power": PretestPowerOptions}


def _name_or_mapping(schema: dict[str, Any]) -> None:
    """JSON schema of an item: a check's name, or the one-key mapping."""
    mapping = {k: schema.pop(k) for k in list(schema) if k not in ("title", "description")}
    schema["anyOf"] = [{"type": "string", "enum": list(CHECKS)}, {**mapping, "minProperties": 1, "maxProperties": 1}]


class CheckSpec(_Closed):
    """One item of ``checks``: a name, or ``{name: options}`` (exactly one name)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_name_or_mapping)

    pretrends: PretrendsOptions | None = None
    honest_did: HonestDiDOptions | None = None
    pretest_power: PretestPowerOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _named(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in CHECKS:
                raise ValueError(f"unknown check {value!r}; available: {list(CHECKS)}")
            return {value: {}}
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _one(self) -> CheckSpec:
        if len(self.model_fields_set) != 1:
            raise ValueError(f"name one check per item (one of {list(CHECKS)}), or {{name: options}}")
        return self

    @property
    def name(self) -> str:
        return next(iter(self.model_fields_set))

    @property
    def options(self) -> dict[str, Any]:
        """The options given (the check's function applies its defaults to the rest)."""
        return getattr(self, self.name).model_dump(exclude_unset=True)

    @model_serializer(mode="plain")
    def _compact(self) -> Any:
        opts = self.options
        return {self.name: opts} if opts else self.name


# ------------------------------------------------------------------------------ running them
def _event_study(kind: str) -> bool:
    return registry.get(kind).result in ("cells", "event_study")


def _runner(name: str) -> tuple[Callable[..., Any], Callable[[str, Any], bool]]:
    """The check's function and which estimator results it runs on (by registry entry / protocol)."""
    if name == "pretrends":
        from dte_dask.checks import pretrend_check

        return pretrend_check, lambda kind, res: hasattr(res, "pretrend_test")
    if name == "honest_did":
        from dte_dask.sensitivity import honest_did

        return honest_did, lambda kind, res: _event_study(kind)
    from dte_dask.sensitivity import pretest_power

    return pretest_power, lambda kind, res: _event_study(kind)


def run_checks(checks: list[CheckSpec], estimates: dict[str, tuple[str, Any]], results: dict[str, Any],
               echo: Callable[[str], None] = print) -> list[str]:
    """Run every check on every estimator it applies to: ``results["<estimator>.<check>"]``.

    ``estimates`` maps the job's estimator names to ``(registry kind, result)``. Returns the notes
    of the checks that could not run (e.g. an estimator without pre-period estimates).
    """
    notes: list[str] = []
    for spec in checks:
        fn, applies = _runner(spec.name)
        for name, (kind, res) in estimates.items():
            if not applies(kind, res):
                continue
            key = f"{name}.{spec.name}"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # recorded on the check's result (its notes)
                    results[key] = fn(res, **spec.options)
            except DteDaskError as exc:
                notes.append(f"{key}: not run: {exc}")
                echo(notes[-1])
    return notes
