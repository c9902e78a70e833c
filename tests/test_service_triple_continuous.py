"""triple_did and continuous_did through the service (FastAPI TestClient on an in-process cluster):
the jobs run, their results are listed and served, and the report has each estimator's section
(the dose-response curve with its bands and the ATT^o / ACRT^o table; the DDD event study and
ATT(g,t) by cohort)."""
from __future__ import annotations

import io
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
md = pytest.importorskip("moderndid")

import dte_dask

TOKEN = "t" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DOSE = {"unit": "id", "time": "time_period", "outcome": "Y", "group": "G"}
DDD = {"unit": "id", "time": "time", "outcome": "y", "group": "group"}


def quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """Both jobs submitted to one service, run to the end; yields (client, {name: job id}, data)."""
    from distributed import Client, LocalCluster
    from fastapi.testclient import TestClient
    from moderndid.core.data import gen_ddd_mult_periods

    from dte_dask.service.app import create_app
    from dte_dask.service.settings import ServiceSettings

    root = tmp_path_factory.mktemp("data")
    dose = md.gen_cont_did_data(n=200, seed=4).to_pandas()
    dose.to_csv(root / "dose.csv", index=False)
    ddd = gen_ddd_mult_periods(n=300, dgp_type=1, random_state=3)["data"].to_pandas()
    ddd.to_parquet(root / "ddd.parquet")
    common = {"cluster": {"performance_report": False}}
    jobs = {
        "dose": {"name": "dose", **common, "inference": {"n_boot": 99, "seed": 3},
                 "data": {"source": str(root / "dose.csv"), **DOSE, "covariates": ["D"]},
                 "estimators": [{"kind": "continuous_did", "name": "curve", "options": {"dose": "D"}},
                                {"kind": "continuous_did", "name": "es",
                                 "options": {"dose": "D", "aggregation": "eventstudy"}}]},
        "ddd": {"name": "ddd", **common, "inference": {"bootstrap": False},
                "data": {"source": str(root / "ddd.parquet"), **DDD, "covariates": ["partition", "cov1"]},
                "estimators": [{"kind": "triple_did", "options": {"partition": "partition"},
                                "aggregations": ["dynamic"]}]},
    }
    settings = ServiceSettings(token=TOKEN, db_path=root / "state" / "jobs.sqlite", data_roots=(root,))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as c, \
            Client(c) as client, TestClient(create_app(settings, client=client)) as http:
        ids = {}
        for name, job in jobs.items():
            r = http.post("/jobs", json=job, headers=AUTH)
            assert r.status_code == 202, r.text
            ids[name] = r.json()["id"]
        deadline = time.monotonic() + 120
        for job_id in ids.values():
            while (info := http.get(f"/jobs/{job_id}", headers=AUTH).json())["state"] in ("queued", "running"):
                assert time.monotonic() < deadline, info
                time.sleep(0.2)
            assert info["state"] == "succeeded", info
        yield http, ids, {"dose": dose, "ddd": ddd}


def _csv(http, job_id: str, rel: str) -> pd.DataFrame:
    r = http.get(f"/jobs/{job_id}/results/{rel}", headers=AUTH)
    assert r.status_code == 200, (rel, r.text)
    return pd.read_csv(io.BytesIO(r.content))


def test_continuous_did_job_results_and_report(served) -> None:
    http, ids, data = served
    job_id = ids["dose"]
    names = {f["name"] for f in http.get(f"/jobs/{job_id}/results", headers=AUTH).json()["files"]}
    assert {"summary.json", "report.html", "estimators/curve.csv", "estimators/curve.overall.csv",
            "estimators/es.csv", "estimators/es.event_study.csv", "estimators/es.overall.csv"} <= names
    direct = quiet(dte_dask.continuous_did, data["dose"], dose="D", n_boot=99, seed=3, **DOSE)
    got = _csv(http, job_id, "estimators/curve.csv")
    np.testing.assert_allclose(got["dose"], direct.to_frame()["dose"], rtol=1e-12)
    np.testing.assert_allclose(got["estimate"], direct.estimates, rtol=1e-10, atol=1e-12)
    assert np.isfinite(got["band_lower"]).all() and (got["band_lower"] <= got["ci_lower"] + 1e-12).all()
    overall = _csv(http, job_id, "estimators/curve.overall.csv")
    assert list(overall["parameter"]) == ["ATT^o", "ACRT^o"]
    np.testing.assert_allclose(overall["estimate"], [direct.overall["att"], direct.overall["acrt"]], rtol=1e-10)
    summary = http.get(f"/jobs/{job_id}/results/summary.json", headers=AUTH).json()["estimators"]
    assert summary["curve"]["result_kind"] == "dose_response" and "notes" not in summary["curve"]
    assert summary["curve"]["overall"]["att"] == pytest.approx(direct.overall["att"], rel=1e-10)
    assert summary["es"]["pretrend"]["df"] == 2  # event times -2, -1 before adoption
    page = http.get(f"/jobs/{job_id}/results/report.html", headers=AUTH).text
    assert "ATT(d) by dose with pointwise intervals and uniform bands: curve" in page
    assert "curve: overall parameters" in page and "ACRT^o" in page and "Event study: es" in page


def test_triple_did_job_results_and_report(served) -> None:
    http, ids, data = served
    job_id = ids["ddd"]
    names = {f["name"] for f in http.get(f"/jobs/{job_id}/results", headers=AUTH).json()["files"]}
    assert {"estimators/triple_did.csv", "estimators/triple_did.cells.csv", "estimators/triple_did.event_study.csv",
            "estimators/triple_did.group.csv", "estimators/triple_did.dynamic.csv", "report.html"} <= names
    # independent reference: moderndid's ddd (a port of R triplediff) on the same data
    ref = quiet(md.ddd, data["ddd"], yname="y", tname="time", idname="id", gname="group", pname="partition",
                xformla="~cov1", control_group="nevertreated", base_period="universal", est_method="dr", boot=False)
    got = _csv(http, job_id, "estimators/triple_did.csv")
    cell = {(int(g), int(t)): e for g, t, e in zip(got["group"], got["time"], got["estimate"])}
    np.testing.assert_allclose([cell[(int(g), int(t))] for g, t in zip(ref.groups, ref.times)], ref.att,
                               rtol=0, atol=1e-8)
    page = http.get(f"/jobs/{job_id}/results/report.html", headers=AUTH).text
    assert "Event study: triple_did" in page and "Cohorts compared on event time: triple_did" in page
    assert "triple_did.dynamic" in page and "Overall ATT (simple)" in page
