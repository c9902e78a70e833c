"""Hostile jobs are refused up front: the real server, on loopback, under an address-space cap.

``dte-dask serve`` runs in a subprocess with ``RLIMIT_AS`` = ``CAP`` (a job that allocated its
way through a huge window or panel would be killed, and the service with it). Each hostile
request gets a 4xx within ``FAST_S`` seconds, and ``/health`` still answers afterwards. A job
cancelled while it writes its results leaves no files, and its results routes answer 409; a
finished job can be deleted with its files.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from .service_helpers import Server, small_job, submit, wait_for

CAP = 6 << 30  # the server's address space (it peaks near 2.5 GiB running the mpdta job)
FAST_S = 5.0
COLS = {"unit": "countyreal", "time": "year", "outcome": "lemp", "group": "first_treat"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dte_dask.datasets import load_mpdta

    root = tmp_path_factory.mktemp("hostile-root")
    load_mpdta().to_parquet(root / "mpdta.parquet", index=False)
    outside = tmp_path_factory.mktemp("hostile-outside")
    (outside / "secret.csv").write_text("a,b\n1,2\n")
    (root / "linkdir").symlink_to(outside)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, data_root: Path):
    srv = Server(tmp_path_factory.mktemp("hostile-service"), max_concurrent=1, memory_cap=CAP,
                 args=("--data-root", str(data_root), "--max-work", "1e12", "--max-task-memory", "512MiB",
                       "--max-request-bytes", "262144", "--retain-days", "30"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def http(server: Server):
    with server.client(timeout=FAST_S * 4) as c:
        yield c


def _job(data: dict[str, Any] | None = None, *estimators: dict[str, Any], **over: Any) -> dict[str, Any]:
    job = {"name": "hostile", "data": data or {"source": "mpdta"},
           "estimators": list(estimators) or [{"kind": "att_gt"}], "inference": {"bootstrap": False},
           "report": False, "cluster": {"performance_report": False}}
    job.update(over)
    return job


def _fast(http: httpx.Client, method: str, url: str, **kw: Any) -> httpx.Response:
    t0 = time.monotonic()
    r = http.request(method, url, **kw)
    assert time.monotonic() - t0 < FAST_S, (url, time.monotonic() - t0)
    return r


def _refused(http: httpx.Client, job: dict[str, Any], status: int = 422) -> dict[str, Any]:
    r = _fast(http, "POST", "/jobs", json=job)
    assert r.status_code == status, r.text
    return r.json()


def _locs(body: dict[str, Any]) -> list[str]:
    return [".".join(map(str, e["loc"])) for e in body["detail"]]


def test_hostile_requests_get_fast_4xx_and_the_service_survives(server: Server, http: httpx.Client) -> None:
    before = http.get("/jobs").json()["total"]
    limits = Path(f"/proc/{server.proc.pid}/limits")
    if limits.exists():  # the cap is real
        line = next(x for x in limits.read_text().splitlines() if x.startswith("Max address space"))
        assert str(CAP) in line, line
    # point 3/4: paths outside the roots, existing or not, via links or globs: one fast answer
    answers = set()
    for src in ("/", "/usr", "/proc", "/etc/passwd", "/no/such/file.csv", "linkdir/secret.csv", "linkdir/*",
                "linkdir/nope*", "../x.csv", "missing.parquet"):
        body = _refused(http, _job({"source": src, **COLS}))
        assert _locs(body) == ["body.data.source"], body
        answers.add(body["detail"][0]["msg"])
    assert len(answers) == 1, answers
    # point 1: a window with no overlap with the panel's event times
    for data in ({"source": "mpdta"}, {"source": "mpdta.parquet", **COLS},
                 {"source": "simulate", "simulate": {"units": 500, "periods": 6}}):
        body = _refused(http, _job(data, {"kind": "att_gt"},
                                   {"kind": "event_study", "options": {"window": [10**9, 2 * 10**9]}}))
        assert _locs(body) == ["body.estimators.1.options.window"] and "no overlap" in body["message"], body
    # point 2: too much work, too large a task
    body = _refused(http, _job({"source": "simulate", "simulate": {"units": 5_000_000, "periods": 10}},
                               *[{"kind": "att_gt", "name": f"e{i}"} for i in range(8)],
                               inference={"bootstrap": True, "n_boot": 50_000}))
    assert "estimated work" in body["message"] and "limit of 1e+12" in body["message"], body
    body = _refused(http, _job({"source": "simulate", "npartitions": 1, "simulate": {"units": 3_000_000, "periods": 10}}))
    assert _locs(body) == ["body.data.npartitions"] and "512.0 MiB" in body["message"], body
    # point 6: field sizes and the body
    assert _locs(_refused(http, _job(name="n" * 100_000))) == ["body.name"]
    assert _locs(_refused(http, _job({"source": "mpdta", "covariates": ["lpop"] * 5000}))) == ["body.data.covariates"]
    _refused(http, _job(name="n" * 1_000_000), status=413)
    assert _fast(http, "GET", "/jobs", params={"limit": 1000}).status_code == 422
    assert http.get("/jobs").json()["total"] == before  # nothing was queued
    from dte_dask.service.metrics import parse_text

    rejected = parse_text(http.get("/metrics").text)
    assert rejected[("dte_dask_jobs_rejected_total", (("reason", "too_large"),))] == 2
    # a huge window that overlaps is clipped before the job is queued: it runs, and small
    r = _fast(http, "POST", "/jobs", json=_job(None, {"kind": "event_study",
                                                      "options": {"window": [-10**9, 10**9]}}))
    assert r.status_code == 202, r.text
    assert r.json()["spec"]["estimators"][0]["options"]["window"] == [-4, 3]
    assert any("clipped" in w for w in r.json()["warnings"])
    assert wait_for(http, r.json()["id"], timeout=120)["state"] == "succeeded"
    assert _fast(http, "GET", "/health").status_code == 200
    assert server.proc is not None and server.proc.poll() is None
    assert "Traceback" not in server.log()


def test_listing_is_summaries_with_pages(http: httpx.Client) -> None:
    ids = [submit(http, small_job(i, name="x" * 200)) for i in range(3)]
    page = _fast(http, "GET", "/jobs", params={"limit": 2}).json()
    assert page["limit"] == 2 and len(page["jobs"]) == 2 and page["next_offset"] == 2
    assert page["total"] >= 3 and "spec" not in page["jobs"][0] and "summary" not in page["jobs"][0]
    assert page["jobs"][0]["id"] == ids[-1]  # newest first
    rest = http.get("/jobs", params={"limit": 200, "offset": page["next_offset"]}).json()
    assert rest["next_offset"] is None and len(rest["jobs"]) == page["total"] - 2
    for job_id in ids:
        wait_for(http, job_id)


def test_cancel_while_writing_leaves_no_results(server: Server, http: httpx.Client) -> None:
    job = _job(None, *[{"kind": "att_gt", "name": f"cs{i}", "aggregations": ["simple", "dynamic", "group", "calendar"]}
                       for i in range(6)], report=True, name="writer")
    results_root = server.db.parent / "results"
    for _attempt in range(3):
        job_id = submit(http, job)
        deadline = time.monotonic() + 120
        while not list((results_root / job_id).rglob("*.csv")):  # it is writing its results now
            assert time.monotonic() < deadline
            time.sleep(0.02)
        r = http.delete(f"/jobs/{job_id}")
        if r.status_code == 202:
            break
        assert r.status_code == 204  # it finished first (and is deleted now): try again
    else:
        pytest.skip("the job kept finishing before the cancel arrived")
    info = wait_for(http, job_id, ("cancelled",), timeout=60)
    assert info["error"] is None
    assert not (results_root / job_id).exists()  # partial outputs removed
    time.sleep(1.0)
    assert not (results_root / job_id).exists()  # and nothing written after
    assert http.get(f"/jobs/{job_id}/results").status_code == 409
    assert http.get(f"/jobs/{job_id}/results/summary.json").status_code == 409
    # a finished job is deleted with its files
    assert http.delete(f"/jobs/{job_id}").status_code == 204
    assert http.get(f"/jobs/{job_id}").status_code == 404
    done = submit(http, small_job(99))
    assert wait_for(http, done)["state"] == "succeeded" and (results_root / done).is_dir()
    assert http.delete(f"/jobs/{done}").status_code == 204
    assert http.get(f"/jobs/{done}").status_code == 404 and not (results_root / done).exists()
    assert http.get("/health").status_code == 200


def test_tls(tmp_path: Path) -> None:
    import ssl

    from dte_dask.cluster.security import generate_certificates

    try:
        certs = generate_certificates(tmp_path / "tls")
    except Exception as exc:  # noqa: BLE001 - neither cryptography nor openssl here
        pytest.skip(f"cannot create a test certificate: {exc}")
    ctx = ssl.create_default_context(cafile=str(certs.ca_file))
    srv = Server(tmp_path / "svc", verify=ctx,
                 args=("--ssl-certfile", str(certs.cert), "--ssl-keyfile", str(certs.key)))
    srv.start()
    try:
        assert srv.url.startswith("https://127.0.0.1:")
        with srv.client() as http:
            assert http.get("/jobs").status_code == 200
        plain = srv.url.replace("https://", "http://")
        with pytest.raises(httpx.HTTPError):
            httpx.get(plain + "/health", timeout=5)  # no plain HTTP on the TLS port
    finally:
        srv.stop()
