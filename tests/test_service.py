"""``dte-dask serve`` end to end: the real server (uvicorn, subprocess) on 127.0.0.1, over HTTP.

Submit the mpdta job and compare its results with ``att_gt`` run here; cancel a long job and see
its tasks leave the scheduler; every protected route refuses a missing or wrong token; malformed
specs get 422 naming the field; data paths stay inside the data roots; a restart keeps the
finished jobs, marks the running one interrupted and runs the queued one.
"""
from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

import pandas as pd

from .service_helpers import LONG_JOB, TOKEN, Server, metrics, small_job, submit, wait_for

REPO = Path(__file__).resolve().parents[1]
MPDTA_JOB = REPO / "examples" / "jobs" / "mpdta_local.yaml"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dte_dask.datasets import load_mpdta

    root = tmp_path_factory.mktemp("data-root")
    df = load_mpdta()
    df.to_csv(root / "mpdta.csv", index=False)
    df.assign(lemp="n/a").to_csv(root / "text_outcome.csv", index=False)
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.csv").write_text("a,b\n1,2\n")
    (root / "escape.csv").symlink_to(outside / "secret.csv")
    (root / "sub").mkdir()
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, data_root: Path):
    srv = Server(tmp_path_factory.mktemp("service"), max_concurrent=2,
                 args=("--data-root", str(data_root), "--max-n-boot", "50000", "--max-request-bytes", "65536",
                       "--metrics-port", "0"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def http(server: Server):
    with server.client() as c:
        yield c


# ----------------------------------------------------------------------------- results
def test_mpdta_job_matches_att_gt(http: httpx.Client) -> None:
    import dte_dask
    from dte_dask.datasets import load_mpdta

    r = http.post("/jobs", content=MPDTA_JOB.read_bytes(), headers={"Content-Type": "application/yaml"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.headers["location"] == f"/jobs/{job_id}"
    info = wait_for(http, job_id, timeout=120)
    assert info["state"] == "succeeded", info
    assert info["progress"]["fraction"] == 1.0 and info["progress"]["tasks_total"] > 0
    assert info["run_s"] > 0 and info["error"] is None

    listing = http.get(f"/jobs/{job_id}/results").json()
    names = {f["name"] for f in listing["files"]}
    assert {"summary.json", "estimators/cs_never.csv", "estimators/cs_never.dynamic.csv",
            "estimators/cs_notyet.csv", "report.html"} <= names

    df = load_mpdta()
    common = {"outcome": "lemp", "unit": "countyreal", "time": "year", "group": "first_treat", "est_method": "dr",
              "bootstrap": True, "n_boot": 999, "seed": 20240101}
    for name, control in (("cs_never", "never_treated"), ("cs_notyet", "not_yet_treated")):
        direct = dte_dask.att_gt(df, control_group=control, **common)
        got = pd.read_csv(io.BytesIO(http.get(f"/jobs/{job_id}/results/estimators/{name}.csv").content))
        want = direct.to_frame().reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, check_dtype=False, rtol=1e-10, atol=1e-12)
        got_dyn = pd.read_csv(io.BytesIO(http.get(f"/jobs/{job_id}/results/estimators/{name}.dynamic.csv").content))
        want_dyn = direct.aggregate("dynamic", na_rm=True).to_frame().reset_index(drop=True)
        pd.testing.assert_frame_equal(got_dyn, want_dyn, check_dtype=False, rtol=1e-10, atol=1e-12)
        simple = direct.aggregate("simple", na_rm=True)
        assert info["summary"]["estimators"][name]["overall"]["att"] == pytest.approx(simple.overall_att, rel=1e-12)
        assert info["summary"]["estimators"][name]["overall"]["se"] == pytest.approx(simple.overall_se, rel=1e-10)

    summary = http.get(f"/jobs/{job_id}/results/summary.json").json()
    assert summary["metadata"]["seeds"] == {"cs_never": 20240101, "cs_notyet": 20240101}
    r = http.get(f"/jobs/{job_id}/results/report.html")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    # results stay inside the job's folder
    for bad in ("../jobs.sqlite", "..%2F..%2Fstate%2Fjobs.sqlite", "%2Fetc%2Fpasswd", "nope.csv", "estimators"):
        assert http.get(f"/jobs/{job_id}/results/{bad}").status_code == 404, bad


def test_file_source_inside_data_root(http: httpx.Client) -> None:
    job = {"name": "csv", "data": {"source": "mpdta.csv", "unit": "countyreal", "time": "year", "outcome": "lemp",
                                   "group": "first_treat"},
           "estimators": [{"kind": "att_gt"}], "inference": {"bootstrap": False}, "report": False,
           "cluster": {"performance_report": False}}
    info = wait_for(http, submit(http, job))
    assert info["state"] == "succeeded", info
    assert info["summary"]["estimators"]["att_gt"]["overall"]["att"] == pytest.approx(-0.0400, abs=5e-4)
    # the run diagnoses itself: the record carries the class, core-hours and each stage's advice
    diag = info["summary"]["diagnosis"]
    assert [st["name"] for st in diag["stages"]] == ["load", "att_gt"] and diag["core_hours"] > 0
    assert all(st["class"] and st["advice"] for st in diag["stages"])
    metrics = http.get("/metrics").text
    assert f'dte_dask_jobs_diagnosed_total{{run_class="{diag["class"]}"}}' in metrics
    assert "dte_dask_job_core_hours_total" in metrics
    # a job that passes validation but fails while running reports why
    failed = wait_for(http, submit(http, {**job, "data": {**job["data"], "source": "text_outcome.csv"}}))
    assert failed["state"] == "failed" and "lemp" in failed["error"], failed
    assert failed["finished_at"] is not None and failed["summary"] is None


# ----------------------------------------------------------------------------- cancel
def test_cancel_long_job_releases_its_futures(http: httpx.Client) -> None:
    job_id = submit(http, LONG_JOB)
    running = wait_for(http, job_id, ("running",), timeout=60,
                       until=lambda i: i["progress"] is not None and i["progress"]["tasks_done"] > 0)
    assert 0 < running["progress"]["fraction"] <= 1  # of the graphs submitted so far
    assert running["dashboard"].startswith("http") and running["started_at"] is not None
    # the job submits one graph after another: between two of them the scheduler may briefly hold
    # nothing, so look until one of its graphs is on the scheduler (it runs for minutes)
    deadline = time.monotonic() + 30
    while metrics(http)[("dte_dask_cluster_tasks", ())] == 0:
        assert time.monotonic() < deadline, "the running job's tasks never show on the scheduler"
        assert http.get(f"/jobs/{job_id}").json()["state"] == "running"
        time.sleep(0.05)
    t0 = time.monotonic()
    r = http.delete(f"/jobs/{job_id}")
    assert r.status_code == 202, r.text
    assert r.json()["state"] in ("cancelling", "cancelled")
    info = wait_for(http, job_id, ("cancelled",), timeout=60)
    assert time.monotonic() - t0 < 30  # uncancelled it would run for minutes
    assert info["finished_at"] is not None and info["error"] is None
    # the scheduler lets go of everything the job had (nothing else runs on this server now)
    deadline = time.monotonic() + 30
    while metrics(http)[("dte_dask_cluster_tasks", ())] > 0:
        assert time.monotonic() < deadline, "the cancelled job's tasks stay on the scheduler"
        time.sleep(0.3)
    assert http.get(f"/jobs/{job_id}/results").status_code == 409  # a cancelled job has no results
    assert http.delete(f"/jobs/{job_id}").status_code == 204  # a finished job is deleted
    assert http.get(f"/jobs/{job_id}").status_code == 404
    m = metrics(http)
    assert m[("dte_dask_jobs_finished_total", (("state", "cancelled"),))] >= 1
    # the cluster still works after a cancel
    assert wait_for(http, submit(http, small_job(7)))["state"] == "succeeded"


# ----------------------------------------------------------------------------- auth
def test_every_protected_route_refuses_missing_or_wrong_token(server: Server) -> None:
    with server.client() as ok:
        doc = ok.get("/openapi.json").json()
        job_id = submit(ok, small_job(1))
        wait_for(ok, job_id)
        total = ok.get("/jobs").json()["total"]
    routes = [("GET", "/openapi.json")]
    for path, ops in doc["paths"].items():
        for method in ops:
            routes.append((method.upper(), path.replace("{job_id}", job_id).replace("{name}", "summary.json")))
    assert {p for _, p in routes} >= {"/jobs", f"/jobs/{job_id}", f"/jobs/{job_id}/results",
                                      f"/jobs/{job_id}/results/summary.json", "/metrics", "/health"}
    bodies = {"POST": json.dumps(small_job(2)).encode()}
    for token, status in ((None, 401), ("wrong-" + TOKEN, 403), (TOKEN[:-1], 403)):
        with server.client(token=token) as c:
            for method, path in routes:
                r = c.request(method, path, content=bodies.get(method), headers={"Content-Type": "application/json"})
                if path == "/health":
                    assert r.status_code == 200, (method, path, r.text)
                    assert set(r.json()) == {"status", "version"}
                    continue
                assert r.status_code == status, (token, method, path, r.status_code, r.text)
                if status == 401:
                    assert r.headers["www-authenticate"].startswith("Bearer")
                assert "summary" not in r.text and "dte_dask_jobs" not in r.text
            # auth comes before validation: a malformed body without a token is still 401/403
            r = c.post("/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
            assert r.status_code == status
            r = c.get("/jobs/not-a-job-id")
            assert r.status_code == status
    # other schemes and malformed headers are "missing"
    for header in ("Basic dXNlcjpwYXNz", f"Token {TOKEN}", "Bearer", TOKEN):
        r = httpx.get(server.url + "/jobs", headers={"Authorization": header}, timeout=10)
        assert r.status_code in (401, 403), header
    with server.client() as ok:  # the refused requests created and cancelled nothing
        assert ok.get("/jobs").json()["total"] == total
        assert ok.get(f"/jobs/{job_id}").json()["state"] == "succeeded"


def test_metrics_port_serves_only_metrics_and_health(server: Server) -> None:
    import re

    port = int(re.search(r"metrics also on port (\d+)", server.log()).group(1))
    base = f"http://127.0.0.1:{port}"
    assert port != int(server.url.rsplit(":", 1)[1])
    r = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 200 and "dte_dask_jobs{" in r.text
    assert httpx.get(base + "/metrics", timeout=10).status_code == 401
    assert httpx.get(base + "/health", timeout=10).status_code == 200
    for path in ("/jobs", "/openapi.json"):
        assert httpx.get(base + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).status_code == 404


# ----------------------------------------------------------------------------- validation
def _post(http: httpx.Client, body: str | bytes | dict, ctype: str = "application/json") -> httpx.Response:
    if isinstance(body, dict):
        body = json.dumps(body)
    return http.post("/jobs", content=body if isinstance(body, bytes) else body.encode(), headers={"Content-Type": ctype})


def _locs(r: httpx.Response) -> list[str]:
    assert r.status_code == 422, (r.status_code, r.text)
    return [".".join(map(str, e["loc"])) for e in r.json()["detail"]]


@pytest.mark.parametrize(("body", "field"), [
    ({"data": {"source": "mpdta"}}, "body.estimators"),
    ({"data": {"sorce": "mpdta"}, "estimators": [{"kind": "att_gt"}]}, "body.data.sorce"),
    ({"data": {"source": "mpdta"}, "estimators": [{"kind": "att_gt", "options": {"contol_group": "x"}}]},
     "body.estimators.0"),
    ({"data": {"source": "mpdta"}, "estimators": [{"kind": "did_magic"}]}, "body.estimators.0.kind"),
    ({"data": {"source": "mpdta"}, "estimators": [{"kind": "att_gt"}], "inference": {"n_boot": 1}},
     "body.inference.n_boot"),
    ({"data": {"source": "mpdta"}, "estimators": [{"kind": "att_gt"}], "inference": {"n_boot": 10**6}},
     "body.inference.n_boot"),
    ({"data": {"source": "mpdta"}, "estimators": [{"kind": "att_gt", "name": "../x"}]}, "body.estimators.0.name"),
    ({"data": {"source": "simulate", "simulate": {"units": 10**9}}, "estimators": [{"kind": "att_gt"}]},
     "body.data.simulate.units"),
    ({"data": {"source": "mpdta", "npartitions": 10**7}, "estimators": [{"kind": "att_gt"}]},
     "body.data.npartitions"),
    ({"data": {"source": "../../etc/passwd", "unit": "u", "time": "t", "outcome": "y", "group": "g"},
      "estimators": [{"kind": "att_gt"}]}, "body.data.source"),
    ({"data": {"source": "/etc/passwd", "unit": "u", "time": "t", "outcome": "y", "group": "g"},
      "estimators": [{"kind": "att_gt"}]}, "body.data.source"),
    ({"data": {"source": "escape.csv", "unit": "u", "time": "t", "outcome": "y", "group": "g"},
      "estimators": [{"kind": "att_gt"}]}, "body.data.source"),
    ({"data": {"source": "*.csv", "unit": "u", "time": "t", "outcome": "y", "group": "g"},
      "estimators": [{"kind": "att_gt"}]}, "body.data.source"),  # the glob matches escape.csv too
    ({"data": {"source": "sub/../mpdta.csv", "unit": "u", "time": "t", "outcome": "y", "group": "g"},
      "estimators": [{"kind": "att_gt"}]}, "body.data.source"),
    ({"data": {"source": "missing.csv", "unit": "u", "time": "t", "outcome": "y", "group": "g"},
      "estimators": [{"kind": "att_gt"}]}, "body.data.source"),
    ({"data": {"source": "s3://bucket/x.parquet", "unit": "u", "time": "t", "outcome": "y", "group": "g"},
      "estimators": [{"kind": "att_gt"}]}, "body.data.source"),
    ({"data": {"source": "mpdta.csv"}, "estimators": [{"kind": "att_gt"}]}, "body.data"),
    ({"data": {"source": "mpdta", "outcome": "lemp2"}, "estimators": [{"kind": "att_gt"}]}, "body.data.outcome"),
    ({"data": {"source": "mpdta.csv", "unit": "countyreal", "time": "year", "outcome": "lemp", "group": "first_treat",
               "covariates": ["lpop", "nope"]}, "estimators": [{"kind": "att_gt"}]}, "body.data.covariates"),
    ([1, 2], "body"),
])
def test_malformed_specs_get_422_naming_the_field(http: httpx.Client, body: object, field: str) -> None:
    r = http.post("/jobs", json=body)
    locs = _locs(r)
    assert field in locs, (field, locs, r.text)
    assert field.removeprefix("body.").split(".")[-1] in r.json()["message"] or field == "body"


def test_bodies_that_cannot_be_read(http: httpx.Client) -> None:
    before = http.get("/jobs").json()["total"]
    assert _locs(_post(http, "{not json")) == ["body"]
    assert _locs(_post(http, "data: [unclosed", "application/yaml")) == ["body"]
    assert _locs(_post(http, b"\xff\xfe", "application/json")) == ["body"]
    assert _locs(_post(http, '{"data": {"source": "simulate", "simulate": {"never_treated_share": NaN}}}')) == ["body"]
    assert "body.data.simulate.never_treated_share" in _locs(_post(
        http, "data: {source: simulate, simulate: {never_treated_share: .inf}}\nestimators: [{kind: att_gt}]\n",
        "application/yaml"))
    bomb = "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n"
    r = _post(http, bomb, "application/yaml")
    assert _locs(r) == ["body"] and "anchors" in r.text
    assert _locs(_post(http, "[" * 30_000 + "]" * 30_000)) == ["body"]  # too deep, yet under the size limit
    assert _post(http, json.dumps(small_job(3)), "application/xml").status_code == 415
    big = json.dumps({**small_job(4), "name": "x" * 70_000})
    r = _post(http, big)
    assert r.status_code == 413, r.text
    # chunked upload without Content-Length is counted too
    r = http.post("/jobs", content=iter([b"{" + b" " * 40_000, b" " * 40_000 + b"}"]),
                  headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert http.get("/jobs").json()["total"] == before  # nothing was queued
    # a valid job sent as YAML text with the plain-text type is accepted
    import yaml

    r = _post(http, yaml.safe_dump(small_job(5)), "text/plain")
    assert r.status_code == 202, r.text


def test_unknown_and_malformed_ids(http: httpx.Client) -> None:
    assert http.get("/jobs/" + "0" * 32).status_code == 404
    assert http.delete("/jobs/" + "0" * 32).status_code == 404
    assert http.get("/jobs/" + "0" * 32 + "/results").status_code == 404
    assert http.get("/jobs/not-an-id").status_code == 422
    assert http.get("/jobs", params={"state": "bogus"}).status_code == 422
    assert http.get("/jobs", params={"limit": 0}).status_code == 422
    assert http.get("/jobs", params={"limit": 1000}).status_code == 422  # at most 200 a page
    listing = http.get("/jobs", params={"state": "succeeded", "limit": 2}).json()
    assert listing["limit"] == 2 and len(listing["jobs"]) <= 2
    assert all(j["state"] == "succeeded" for j in listing["jobs"])


def test_openapi_document(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/results", "/jobs/{job_id}/results/{name}", "/metrics",
            "/health"} <= set(doc["paths"])
    assert set(doc["paths"]["/jobs/{job_id}"]) == {"get", "delete"}
    body = doc["paths"]["/jobs"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/JobSpec"}
    assert "application/yaml" in body
    assert "estimators" in doc["components"]["schemas"]["JobSpec"]["properties"]
    assert "bearer" in doc["components"]["securitySchemes"]
    assert "security" not in doc["paths"]["/health"]["get"]
    assert doc["paths"]["/jobs"]["get"]["security"] == [{"bearer": []}]


# ----------------------------------------------------------------------------- restart
def test_restart_keeps_finished_marks_running_interrupted_and_runs_queued(tmp_path: Path) -> None:
    srv = Server(tmp_path / "svc", max_concurrent=1)
    srv.start()
    try:
        with srv.client() as http:
            done = submit(http, small_job(10))
            assert wait_for(http, done)["state"] == "succeeded"
            files_before = http.get(f"/jobs/{done}/results").json()["files"]
            assert files_before
            long = submit(http, LONG_JOB)
            queued = submit(http, small_job(11))
            dropped = submit(http, small_job(12))
            wait_for(http, long, ("running",), timeout=60)
            info = http.get(f"/jobs/{queued}").json()
            assert info["state"] == "queued" and info["queue_position"] == 0
            assert http.get(f"/jobs/{dropped}").json()["queue_position"] == 1
            r = http.delete(f"/jobs/{dropped}")  # cancelling a queued job is immediate
            assert r.status_code == 202 and r.json()["state"] == "cancelled"
            m = metrics(http)
            assert m[("dte_dask_jobs", (("state", "running"),))] == 1
            assert m[("dte_dask_jobs", (("state", "queued"),))] == 1
            assert m[("dte_dask_queue_length", ())] == 1
        srv.kill()  # a crash: nothing gets to record anything

        srv.start()
        with srv.client() as http:
            jobs = {j["id"]: j for j in http.get("/jobs").json()["jobs"]}
            assert set(jobs) == {done, long, queued, dropped}
            assert jobs[done]["state"] == "succeeded"
            assert http.get(f"/jobs/{done}/results").json()["files"] == files_before
            assert http.get(f"/jobs/{done}/results/summary.json").status_code == 200
            assert jobs[long]["state"] == "interrupted"
            assert "stopped" in jobs[long]["error"] and jobs[long]["finished_at"] is not None
            assert jobs[dropped]["state"] == "cancelled"
            assert wait_for(http, queued)["state"] == "succeeded"  # the queue survived the crash
            m = metrics(http)
            assert m[("dte_dask_jobs", (("state", "interrupted"),))] == 1
            assert m[("dte_dask_jobs", (("state", "succeeded"),))] == 2
            assert http.delete(f"/jobs/{long}").status_code == 204  # finished (interrupted): deleted
            assert http.get(f"/jobs/{long}").status_code == 404
            # a graceful stop while a job runs marks it interrupted itself
            again = submit(http, LONG_JOB)
            wait_for(http, again, ("running",), timeout=60)
        assert srv.stop() in (0, -15)  # uvicorn re-raises SIGTERM after its graceful shutdown
        assert "Application shutdown complete" in srv.log() and "interrupted" in srv.log()
        srv.start()
        with srv.client() as http:
            info = http.get(f"/jobs/{again}").json()
            assert info["state"] == "interrupted", info
    finally:
        srv.kill()


def test_settings_refuse_to_start_without_token(tmp_path: Path) -> None:
    from dte_dask.service.settings import ServiceConfigError, ServiceSettings, read_token

    with pytest.raises(ServiceConfigError, match="DTE_DASK_TOKEN"):
        read_token(None, environ={})
    (tmp_path / "tok").write_text("  abc  \nrest\n")
    assert read_token(tmp_path / "tok") == "abc"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ServiceConfigError, match="empty"):
        read_token(tmp_path / "empty")
    with pytest.raises(ServiceConfigError):
        ServiceSettings(token="")
    s = ServiceSettings(token="t", db_path=tmp_path / "x" / "j.sqlite")
    assert s.results_root == (tmp_path / "x" / "results").absolute()
    env = {k: v for k, v in os.environ.items() if k != "DTE_DASK_TOKEN"}
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "dte_dask.service", "--port", "0", "--db", str(tmp_path / "d.sqlite")],
                       env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert r.returncode != 0 and "DTE_DASK_TOKEN" in r.stderr
