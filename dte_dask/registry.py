"""The estimator registry: every estimator declared once.

An estimator is one module that defines its function (and, usually, an options model derived from
:class:`dte_dask.estimators.options.Options`) and registers itself::

    register(EstimatorEntry(name="my_did", function=my_did, options=MyDidOptions,
                            label="My DiD", title="My DiD (what it fits)", covariates=True))

The job spec (:mod:`dte_dask.jobs.spec`), the job runner, the service's validation and OpenAPI
document, the CLI help, the estimator comparison and ``docs/estimators.md`` all read this table;
none of them names an estimator. Built-in estimators register when their module is imported; the
registry imports them on first use, so ``import dte_dask`` stays cheap.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from dte_dask.exceptions import SpecError

__all__ = ["EstimatorEntry", "register", "register_estimator", "unregister", "get", "list_estimators", "names", "estimator_label", "estimator_title",
           "estimators_markdown", "AGGREGATIONS"]

AGGREGATIONS = ("simple", "dynamic", "group", "calendar")
_BUILTIN_MODULES = ("dte_dask.estimators.cs", "dte_dask.estimators.event_study", "dte_dask.estimators.stacked",
                    "dte_dask.estimators.sun_abraham", "dte_dask.estimators.triple_did",
                    "dte_dask.estimators.did_multiplegt", "dte_dask.estimators.imputation",
                    "dte_dask.estimators.two_stage", "dte_dask.estimators.etwfe", "dte_dask.estimators.bacon",
                    "dte_dask.estimators.continuous_did")


@dataclass(frozen=True)
class EstimatorEntry:
    """What the rest of the package knows about one estimator.

    Attributes
    ----------
    name : the one name of the estimator (API function, job spec ``kind``, service, CLI, docs)
    function : the estimator, ``function(data, *, <column roles>, <options>, <inference>) -> Result``;
        a callable or ``"module:function"`` (imported on first use)
    options : the options model (types, vocabularies, bounds) of its estimator-specific keywords
    result : the kind of result: ``"cells"`` (ATT(g,t)), ``"event_study"`` (event-time estimates) or
        ``"decomposition"`` (pieces of one coefficient, no estimates by event time)
    label, title : short and long display names
    covariates, weights, clusters, unbalanced, bootstrap : capabilities (accepts covariates, sampling
        weights, a cluster column, keeps an unbalanced panel, runs the multiplier bootstrap: a job's
        ``inference`` settings reach only estimators with ``bootstrap=True``)
    aggregations : the aggregations its results offer (``result.aggregate(kind)``)
    compare : ``compare(panel, window) -> Result`` (or ``"module:function"``): how
        :func:`dte_dask.compare_estimators` runs it; None leaves it out of the comparison
    cost : how the service sizes a job: ``"cells"`` (one estimate per (g, t)), ``"events"`` (one
        coefficient per event time of the window) or ``"stacks"`` (events x cohorts)
    clip_window : the service may clip a ``window`` option to the panel's event times (same estimates)
    """

    name: str
    function: Callable[..., Any] | str
    options: type[Any]  # a dte_dask.estimators.options.Options model (not imported: estimators import this)
    result: Literal["cells", "event_study", "decomposition"] = "event_study"
    label: str = ""
    title: str = ""
    covariates: bool = False
    weights: bool = True
    clusters: bool = True
    unbalanced: bool = True
    bootstrap: bool = True
    aggregations: tuple[str, ...] = ()
    compare: Callable[..., Any] | str | None = None
    cost: Literal["cells", "events", "stacks"] = "events"
    clip_window: bool = False
    doc: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise SpecError(f"estimator name {self.name!r} must be a Python identifier")
        unknown = set(self.aggregations) - set(AGGREGATIONS)
        if unknown:
            raise SpecError(f"aggregations {sorted(unknown)} are not among {list(AGGREGATIONS)}")

    @property
    def fn(self) -> Callable[..., Any]:
        """The estimator function (imported on first use)."""
        return _resolve(self.function)

    @property
    def compare_fn(self) -> Callable[..., Any] | None:
        return None if self.compare is None else _resolve(self.compare)


def _resolve(target: Callable[..., Any] | str) -> Callable[..., Any]:
    if callable(target):
        return target
    mod, fn = target.split(":")
    return getattr(importlib.import_module(mod), fn)


_REGISTRY: dict[str, EstimatorEntry] = {}
_loaded = False


def register(entry: EstimatorEntry, *, replace: bool = False) -> EstimatorEntry:
    """Add ``entry`` to the registry (an estimator module calls this once, at import)."""
    old = _REGISTRY.get(entry.name)
    if old is not None and not replace and old != entry:
        raise SpecError(f"an estimator named {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


register_estimator = register


def unregister(name: str) -> None:
    """Remove an estimator (tests that register a toy estimator clean up with this)."""
    _REGISTRY.pop(name, None)


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in _BUILTIN_MODULES:
            importlib.import_module(mod)


def get(name: str) -> EstimatorEntry:
    """The entry of estimator ``name``; :class:`SpecError` listing the registered names if none."""
    _load()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise SpecError(f"unknown estimator {name!r}; registered: {names()}") from None


def registered(name: str) -> EstimatorEntry | None:
    """The entry of ``name`` if it is registered now (imports nothing)."""
    return _REGISTRY.get(name)


def names() -> list[str]:
    """Registered estimator names: built-in ones first (in a fixed order), then in registration order."""
    _load()
    order = {m: i for i, m in enumerate(_BUILTIN_MODULES)}

    def key(item: tuple[int, str]) -> tuple[int, int]:
        i, name = item
        fn = _REGISTRY[name].function
        mod = fn.split(":")[0] if isinstance(fn, str) else getattr(fn, "__module__", "")
        return order.get(mod, len(order)), i

    return [n for _, n in sorted(enumerate(_REGISTRY), key=key)]


def list_estimators() -> list[EstimatorEntry]:
    """Every registered estimator: built-in ones first (in a fixed order), then in registration order."""
    _load()
    return [_REGISTRY[n] for n in names()]


def estimator_label(name: str) -> str:
    """Display name of an estimator (its name if it is not registered)."""
    _load()
    e = _REGISTRY.get(name)
    return (e.label or e.name) if e is not None else str(name)


def estimator_title(name: str) -> str:
    """Long display name of an estimator (for summaries)."""
    _load()
    e = _REGISTRY.get(name)
    return (e.title or e.label or e.name) if e is not None else str(name)


def _option_doc(model: type[Any]) -> str:
    describe_field = importlib.import_module("dte_dask.estimators.options").describe_field
    return "<br>".join(describe_field(model, f) for f in model.model_fields) or "(none)"


def estimators_markdown() -> str:
    """The table of ``docs/estimators.md`` (a test keeps the file in sync with the registry)."""
    yes = {True: "yes", False: "no"}
    lines = ["# Estimators", "", "Generated from the registry (`dte_dask.list_estimators()`); "
             "regenerate with `python -m dte_dask.registry > docs/estimators.md`.", "",
             "| name | result | covariates | weights | clusters | unbalanced panels | bootstrap | aggregations "
             "| in comparison | options |", "|---|---|---|---|---|---|---|---|---|---|"]
    for e in list_estimators():
        lines.append(f"| `{e.name}` ({e.label}) | {e.result} | {yes[e.covariates]} | {yes[e.weights]} | "
                     f"{yes[e.clusters]} | {yes[e.unbalanced]} | {yes[e.bootstrap]} | "
                     f"{', '.join(e.aggregations) or '-'} | {yes[e.compare is not None]} | {_option_doc(e.options)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - run as a script, read the package's registry
    from dte_dask.registry import estimators_markdown as _table

    print(_table(), end="")
