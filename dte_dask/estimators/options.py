"""Estimator options, declared once: vocabularies, types and bounds as pydantic models.

The same models serve the library and the job spec:

* each estimator validates its arguments at call start with :func:`parse_options`, which turns a
  pydantic error into a :class:`~dte_dask.exceptions.SpecError` naming the argument and, for a
  vocabulary, the allowed values;
* :class:`dte_dask.jobs.spec.EstimatorSpec` validates ``options`` against the registered model
  (``dte_dask.registry.get(kind).options``)
  and :class:`dte_dask.jobs.spec.InferenceSpec` *is* :class:`InferenceOptions`, so the service
  answers 422 at ``["body", "estimators", i, "options", "<field>"]``.

Each estimator registers its model with its entry in :mod:`dte_dask.registry`. Options that are data columns or
inference settings live in the ``data`` / ``inference`` sections of a job, not in these models.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from dte_dask.core.cells import BasePeriod, ControlGroup
from dte_dask.exceptions import SpecError

EstMethod = Literal["dr", "ipw", "reg"]
BootWeights = Literal["rademacher", "mammen"]  # inference.bootstrap.multipliers draws these (sync-tested)
StackControl = Literal["not_yet_treated", "never_treated", "strict"]
StackWeighting = Literal["aggregate"]
SaControl = Literal["never_treated", "last_treated"]


# ----------------------------------------------------------------------------- value types
def _int(name_hint: str, minimum: int | None) -> Callable[[Any], Any]:
    """A before-validator: Python or numpy integers (not bools, floats or strings) >= minimum."""

    def check(v: Any) -> Any:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"must be {name_hint}, got {v!r} of type {type(v).__name__}")
        if minimum is not None and v < minimum:
            raise ValueError(f"must be {name_hint}, got {v!r}")
        return int(v)

    return check


def _bool(v: Any) -> Any:
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"must be True or False, got {v!r}")
    return bool(v)


def _prob(v: Any) -> Any:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"must be a number in (0, 1), got {v!r}")
    if not 0 < float(v) < 1:
        raise ValueError(f"must be in (0, 1), got {v!r}")
    return float(v)


def _window(v: Any) -> Any:
    """A pair (K, L) of integer event times with K < L (messages as the estimators always gave)."""
    if v is None:
        return None
    if not isinstance(v, (tuple, list)) or len(v) != 2:
        raise ValueError(f"window must be a pair (K, L) of event times with K < L, got {v!r}")
    for x in v:
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
            raise ValueError(f"window must be a pair of integers (K, L), got {v!r}")
    if not v[0] < v[1]:
        raise ValueError(f"window=({v[0]}, {v[1]}): K must be smaller than L")
    return (int(v[0]), int(v[1]))


Int = Annotated[int, BeforeValidator(_int("an integer", None))]
NonNegInt = Annotated[int, BeforeValidator(_int("a non-negative integer", 0))]
NBoot = Annotated[int, BeforeValidator(_int("an integer >= 2", 2))]
Bool = Annotated[bool, BeforeValidator(_bool)]
Prob = Annotated[float, BeforeValidator(_prob)]
Window = Annotated[tuple[int, int], BeforeValidator(_window)]


class Options(BaseModel):
    """Base of the option models: closed (unknown keys are errors), immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    deprecated_names: ClassVar[tuple[str, ...]] = ()  # old spellings still accepted


class _RenamedControl(Options):
    """Accepts the old spelling ``control`` for ``control_group`` (DeprecationWarning)."""

    deprecated_names: ClassVar[tuple[str, ...]] = ("control",)

    @model_validator(mode="before")
    @classmethod
    def _old_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "control" in data:
            if "control_group" in data:
                raise ValueError("give control_group only (control is its deprecated spelling)")
            warnings.warn("`control` is deprecated; use `control_group`", DeprecationWarning, stacklevel=2)
            data = {("control_group" if k == "control" else k): v for k, v in data.items()}
        return data


# ----------------------------------------------------------------------------- the models
class InferenceOptions(Options):
    """Inference shared by every estimator (a job's ``inference`` section)."""

    bootstrap: Bool = True
    n_boot: NBoot = Field(999, description="bootstrap draws (cost limits: dte_dask.bootstrap.* in dte_dask.yaml)")
    seed: NonNegInt | None = Field(None, description="root of the SeedSequence of the multipliers; drawn if None")
    alpha: Prob = 0.05
    boot_weights: BootWeights = "rademacher"
    uniform_bands: Bool = True


class AttGtOptions(Options):
    """:func:`dte_dask.att_gt` (R ``did::att_gt``)."""

    control_group: ControlGroup = "never_treated"
    anticipation: NonNegInt = 0
    base_period: BasePeriod = "varying"
    est_method: EstMethod = "dr"


class TripleDidOptions(Options):
    """:func:`dte_dask.triple_did` (R ``triplediff::ddd``)."""

    partition: str | None = Field(None, description="eligibility column (1 eligible, 0 not): the third difference")
    control_group: ControlGroup = "never_treated"
    base_period: BasePeriod = "universal"
    est_method: EstMethod = "dr"


class EventStudyOptions(Options):
    """:func:`dte_dask.event_study`."""

    window: Window | None = None
    ref: Int = -1
    bin_endpoints: Bool = True


class StackedDidOptions(_RenamedControl):
    """:func:`dte_dask.stacked_did`."""

    window: Window = (-3, 3)
    control_group: StackControl = "not_yet_treated"
    weighting: StackWeighting = "aggregate"


class SunAbrahamOptions(_RenamedControl):
    """:func:`dte_dask.sun_abraham`."""

    window: Window | None = None
    control_group: SaControl = "never_treated"


class ImputationOptions(Options):
    """:func:`dte_dask.imputation_did` (Borusyak, Jaravel & Spiess 2024)."""

    horizons: tuple[Int, ...] | None = None
    pretrends: NonNegInt = 0
    aux_partition: Literal["cohort_horizon", "cohort", "horizon"] = "cohort_horizon"
    leave_out: Bool = False


class TwoStageOptions(Options):
    """:func:`dte_dask.two_stage_did` (Gardner 2021)."""

    horizons: tuple[Int, ...] | None = None
    pretrends: NonNegInt = 0


class EtwfeOptions(Options):
    """:func:`dte_dask.etwfe` (Wooldridge 2021)."""

    control_group: Literal["not_yet_treated", "never_treated"] = "not_yet_treated"
    convention: Literal["jwdid", "r_etwfe"] = Field(
        "jwdid", description="covariates and cell weights as Stata jwdid / diff-diff WooldridgeDiD ('jwdid': x "
                             "demeaned by cohort x period, cell-count weights) or as R etwfe(ivar = unit) + emfx "
                             "('r_etwfe': x demeaned by cohort, raw x with cohort and period slopes, unweighted "
                             "row counts)")


class BaconOptions(Options):
    """:func:`dte_dask.bacon_decomposition` (no options beyond the data columns)."""


# ----------------------------------------------------------------------------- docs
def describe_field(model: type[Options], name: str) -> str:
    """``name: type = default`` of one option (the allowed values of a vocabulary), for the docs."""
    from typing import get_args, get_origin

    f = model.model_fields[name]
    allowed = _literal_args(model, name)
    if allowed:
        return f"`{name}` (one of {', '.join(repr(a) for a in allowed)}; default {f.default!r})"
    words = {int: "integer", bool: "True/False", float: "number", tuple: "pair of integers", type(None): "None"}
    parts, stack = [], [f.annotation]
    while stack:
        a = stack.pop(0)
        base = get_origin(a) or a
        if base in words:
            parts.append(words[base])
        else:
            stack += list(get_args(a))
    return f"`{name}` ({' or '.join(dict.fromkeys(parts)) or 'value'}; default {f.default!r})"


def control_group_kw(control_group: Any, control: Any, fn: str) -> dict[str, Any]:
    """``{"control_group": ...}`` from a function's ``control_group`` and its deprecated ``control``.

    ``control`` (the old spelling) wins when given, with a DeprecationWarning pointing at the caller.
    """
    if control is None:
        return {"control_group": control_group}
    warnings.warn(f"{fn}(control=...) is deprecated; use control_group=...", DeprecationWarning, stacklevel=3)
    return {"control_group": control}


M = TypeVar("M", bound=Options)


def parse_options(model: type[M], /, *, spelled: dict[str, str] | None = None, **values: Any) -> M:
    """``model(**values)``, a validation error raised as :class:`SpecError` naming the argument.

    A vocabulary error lists the allowed values (``control_group='bogus' is not one of
    ['never_treated', 'not_yet_treated']``). ``spelled`` maps a field to the name the caller used
    (``{"control_group": "control"}`` for the deprecated spelling), for the messages.
    """
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise SpecError("; ".join(_message(model, err, values, spelled or {}) for err in exc.errors())) from None


def _message(model: type[Options], err: Any, given: dict[str, Any], spelled: dict[str, str]) -> str:
    loc = [str(p) for p in err.get("loc", ())]
    field = loc[0] if loc else "options"
    name = spelled.get(field, field)
    value = given.get(field, err.get("input"))
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    if err.get("type") == "literal_error":
        allowed = _literal_args(model, field) if field in model.model_fields else []
        return f"{name}={value!r} is not one of {allowed}"
    if err.get("type") == "extra_forbidden":
        return f"unknown argument {name!r}; valid: {sorted(model.model_fields)}"
    if msg.startswith(name):
        return msg
    return f"{name} {msg}" if msg.startswith("must ") else f"{name}={value!r}: {msg}"


def _literal_args(model: type[Options], field: str) -> list[Any]:
    from typing import get_args, get_origin

    ann = model.model_fields[field].annotation
    out: list[Any] = []
    stack = [ann]
    while stack:
        a = stack.pop(0)
        if get_origin(a) is Literal:
            out += list(get_args(a))
        else:
            stack += [x for x in get_args(a) if x is not type(None)]
    return out
