"""Property-based fuzz of the job API from its own OpenAPI document (schemathesis + hypothesis).

Every operation gets bounded numbers of generated requests, valid (positive) and invalid
(negative), with the token; the server must never answer 5xx, and its responses must match the
document (status codes, schemas, content types). Jobs that pass validation really run, so the
server is started with tight limits (tiny simulated panels, few bootstrap draws).
"""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytest.importorskip("httpx")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .service_helpers import AUTH, Server

MAX_EXAMPLES = 25  # per operation and generation mode: ~300 requests in all


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fuzz-data")
    (root / "panel.csv").write_text("u,t,y,g\n1,1,0.5,0\n1,2,0.7,0\n")
    srv = Server(tmp_path_factory.mktemp("fuzz"), max_concurrent=1,
                 args=("--data-root", str(root), "--max-simulate-rows", "100000", "--max-n-boot", "999",
                       "--max-request-bytes", "65536", "--max-queued", "50"))
    srv.start()
    yield srv
    srv.stop()
    assert "Exception in ASGI application" not in srv.log(), srv.log()[-5000:]


@pytest.fixture(scope="module")
def api_schema(fuzz_server: Server):
    with fuzz_server.client() as http:
        doc = http.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(doc)
    schema.config.update(base_url=fuzz_server.url, headers=dict(AUTH), request_timeout=30)
    schema.config.generation.update(max_examples=MAX_EXAMPLES, modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                    deterministic=True, no_shrink=False)
    return schema


# Operations and generation modes are enumerated from the document with schemathesis' Python API
# and driven by plain hypothesis `@given` inside one pytest test per mode: schemathesis' pytest
# plugin (``schemathesis.pytest.from_fixture``) reads private pytest internals that pytest 9
# removed, so this file uses no plugin at all and keeps working across pytest versions.
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


@pytest.mark.parametrize("mode", MODES, ids=[m.value for m in MODES])
def test_api_never_answers_5xx(api_schema, fuzz_server: Server, mode: GenerationMode) -> None:  # type: ignore[no-untyped-def]
    from hypothesis import HealthCheck, Phase, given, settings

    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 8, [op.label for op in operations]  # every route of the document is fuzzed
    calls: dict[str, int] = {}
    unsatisfiable = []  # a route with nothing to break (no parameters, no body) has no negative case
    for op in operations:
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=mode))
        def run(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call()
            assert response.status_code < 500, (case.method, case.formatted_path, response.status_code,
                                                response.text[:500])
            case.validate_response(response, checks=CHECKS)
            calls[op.label] = calls.get(op.label, 0) + 1

        try:
            run()
        except Unsatisfiable:
            if mode is GenerationMode.POSITIVE:
                raise
            unsatisfiable.append(op.label)
    assert set(calls) | set(unsatisfiable) == {op.label for op in operations}
    # the routes that take input are fuzzed in both modes
    assert {"POST /jobs", "GET /jobs", "GET /jobs/{job_id}", "DELETE /jobs/{job_id}"} <= set(calls), sorted(calls)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_stateful_workflows_follow_the_links(api_schema) -> None:  # type: ignore[no-untyped-def]
    """Sequences along the document's links: submit -> get / cancel / list results -> get a result."""
    from hypothesis import HealthCheck, Phase, settings

    base = api_schema.as_state_machine()

    class Workflow(base):  # type: ignore[misc, valid-type]
        def validate_response(self, response, case, additional_checks=None, **kwargs):  # type: ignore[no-untyped-def]
            assert response.status_code < 500, (case.method, case.formatted_path, response.status_code)
            case.validate_response(response, checks=CHECKS, headers=dict(AUTH))

    # the server's answers depend on timing (a job may be queued, running or done), so a replayed
    # step can legitimately branch differently: generate only, never replay or shrink
    Workflow.run(settings=settings(max_examples=15, stateful_step_count=4, deadline=None, database=None,
                                   phases=[Phase.generate], suppress_health_check=list(HealthCheck)))


def test_still_healthy_after_fuzzing(fuzz_server: Server) -> None:
    with fuzz_server.client() as http:
        assert http.get("/health").status_code == 200
        assert http.get("/jobs").status_code == 200
        assert http.get("/metrics").status_code == 200


