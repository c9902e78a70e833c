"""The service's OpenAPI document: the job spec's JSON schema, spelled with the service's own rules
(limits, result names, each registered estimator's options, data sources)."""
from __future__ import annotations

import contextlib
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from dte_dask.service.settings import ServiceSettings


def openapi_document(app: FastAPI, settings: ServiceSettings) -> dict[str, Any]:
    """The app's OpenAPI document, built once (the JobSpec schema and the service's rules)."""
    if app.openapi_schema:
        return app.openapi_schema
    from dte_dask.jobs.spec import JobSpec

    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    spec_schema = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    comps = doc.setdefault("components", {}).setdefault("schemas", {})
    comps.update(spec_schema.pop("$defs", {}))
    comps["JobSpec"] = spec_schema
    document_service_rules(comps, settings)
    app.openapi_schema = doc
    return doc


def document_service_rules(schemas: dict[str, Any], settings: ServiceSettings) -> None:
    """Spell the service's own checks (limits, names, option names, sources) in the JobSpec schema."""
    from dte_dask import registry
    from dte_dask.jobs.spec import RESERVED_OPTIONS, row_options
    from dte_dask.service.validate import BUILTIN_SOURCES, RESULT_NAME

    lim = settings.limits
    name = {"anyOf": [{"type": "string", "pattern": RESULT_NAME.pattern, "maxLength": 100}, {"type": "null"}],
            "default": None, "title": "Name", "description": "result name (a file name); default: the kind"}
    variants = []
    for entry in registry.list_estimators():
        kind, model = entry.name, entry.options
        params = [*model.model_fields, *model.deprecated_names]
        aggs: dict[str, Any] = {"type": "array", "items": {"type": "string", "enum": list(entry.aggregations)},
                                "title": "Aggregations"}
        if not entry.aggregations:
            aggs = {"type": "array", "items": {"type": "string"}, "maxItems": 0, "title": "Aggregations"}
        options = model.model_json_schema(ref_template="#/components/schemas/{model}")
        options.pop("$defs", None)
        rows = row_options(entry)  # which rows the estimator keeps: its function's keyword
        params += rows
        options.setdefault("properties", {}).update(
            {k: {"type": "boolean", "title": "Allow Unbalanced Panel",
                 "description": "keep every observed row (default: the function's own default)"} for k in rows})
        variants.append({
            "type": "object", "title": f"EstimatorSpec ({kind})", "additionalProperties": False, "required": ["kind"],
            "properties": {
                "kind": {"type": "string", "enum": [kind], "title": "Kind"},
                "name": name,
                "options": {"type": "object", "title": "Options", "additionalProperties": True,
                            "properties": options.get("properties", {}),
                            "propertyNames": {"enum": sorted(p for p in params if p not in RESERVED_OPTIONS)},
                            "description": f"options of {kind} ({entry.label}): {model.__name__}"},
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
