"""The estimator registry and the result protocol: one declaration per estimator, one to_frame() schema.

A toy estimator is declared and registered in this file only, then run as a library function, through
a job spec (``run_job``) and through the service (``create_app``): no other file knows about it.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest

import dte_dask
from dte_dask import registry
from dte_dask.estimators.options import NonNegInt, Options, parse_options
from dte_dask.exceptions import SpecError
from dte_dask.registry import EstimatorEntry
from dte_dask.results import SCHEMA, RegressionResult, Result

ROOT = Path(__file__).resolve().parents[1]
MPDTA = dict(outcome="lemp", unit="countyreal", time="year", group="first_treat")


# ----------------------------------------------------------------------------- the toy estimator
class ToyOptions(Options):
    """A symmetric event window of +-horizon periods, nothing binned."""

    horizon: NonNegInt = 2


def toy_did(data: Any, *, outcome: str | None = None, unit: str | None = None, time: str | None = None,
            group: str | None = None, horizon: int = 2, alpha: float = 0.05) -> RegressionResult:
    """The TWFE event study on event times -horizon..horizon only (dummies outside dropped)."""
    opt = parse_options(ToyOptions, horizon=horizon)
    h = max(opt.horizon, 1)
    res = dte_dask.event_study(data, outcome=outcome, unit=unit, time=time, group=group, window=(-h, h),
                               bin_endpoints=False, alpha=alpha)
    return dataclasses.replace(res, estimator="toy_did")


TOY = EstimatorEntry(name="toy_did", function=toy_did, options=ToyOptions, label="Toy DiD",
                     title="Toy DiD (an event study on a symmetric window)", weights=False, clusters=False,
                     bootstrap=False, compare=lambda panel, window: toy_did(panel, horizon=2))


@pytest.fixture
def toy():
    registry.register(TOY)
    try:
        yield TOY
    finally:
        registry.unregister("toy_did")


# ----------------------------------------------------------------------------- the registry
def test_builtin_estimators_are_registered_once_with_their_capabilities() -> None:
    names = [e.name for e in dte_dask.list_estimators()]
    assert names == ["att_gt", "event_study", "stacked_did", "sun_abraham", "triple_did", "did_multiplegt",
                     "imputation_did", "two_stage_did",
                     "etwfe", "bacon_decomposition", "continuous_did"]
    att = registry.get("att_gt")
    assert att.result == "cells" and att.aggregations == ("simple", "dynamic", "group", "calendar")
    assert att.covariates and not registry.get("stacked_did").covariates
    assert all(registry.get(n).fn is getattr(dte_dask, n) for n in names)
    # each built-in declares itself in its own module (one module per estimator), listed in _BUILTIN_MODULES
    assert [registry.get(n).fn.__module__ for n in names] == list(registry._BUILTIN_MODULES)
    assert registry.get("etwfe").aggregations == ("simple", "dynamic", "group", "calendar")
    assert not registry.get("bacon_decomposition").unbalanced and registry.get("bacon_decomposition").result == "decomposition"
    assert {n for n in names if registry.get(n).bootstrap} == {"att_gt", "event_study", "stacked_did", "sun_abraham",
                                                                "triple_did", "continuous_did"}
    with pytest.raises(SpecError, match="unknown estimator 'cs'"):
        registry.get("cs")  # one name per estimator: att_gt
    with pytest.raises(SpecError, match="already registered"):
        registry.register(dataclasses.replace(att, label="other"))


def test_docs_table_is_generated_from_the_registry() -> None:
    """docs/estimators.md is `python -m dte_dask.registry` (regenerate it when an estimator changes)."""
    assert (ROOT / "docs" / "estimators.md").read_text() == registry.estimators_markdown()


def test_toy_estimator_as_a_library_function(toy) -> None:
    df = dte_dask.datasets.load_mpdta()
    res = dte_dask.toy_did(df, **MPDTA, horizon=2)
    assert isinstance(res, Result) and res.label == "Toy DiD"
    assert res.to_frame()["event_time"].tolist() == [-2, 0, 1, 2]
    assert res.summary().startswith("Toy DiD (an event study")
    assert "toy_did" in registry.estimators_markdown()
    from dte_dask.jobs.spec import parse_job

    with pytest.raises(SpecError, match="horizon"):
        parse_job({"data": {"source": "mpdta"}, "estimators": [{"kind": "toy_did", "options": {"horizon": -1}}]})
    with pytest.raises(SpecError, match="aggregations"):
        parse_job({"data": {"source": "mpdta"}, "estimators": [{"kind": "toy_did", "aggregations": ["dynamic"]}]})


def test_toy_estimator_through_a_job_spec(toy, tmp_path: Path) -> None:
    from dte_dask.jobs.runner import run_job
    from dte_dask.jobs.spec import parse_job

    job = parse_job({"name": "toy", "data": {"source": "mpdta"}, "output": str(tmp_path / "out"),
                     "estimators": [{"kind": "toy_did", "options": {"horizon": 2}}, {"kind": "event_study"}],
                     "inference": {"bootstrap": False}, "checks": ["pretrends"], "compare": True, "report": False,
                     "cluster": {"performance_report": False}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run_job(job, progress=False, echo=lambda *_: None)
    assert summary["estimators"]["toy_did"]["kind"] == "toy_did"
    got = pd.read_csv(tmp_path / "out" / "estimators" / "toy_did.csv")
    want = toy_did(dte_dask.datasets.load_mpdta(), **MPDTA, horizon=2).to_frame()
    assert list(got.columns) == list(want.columns)
    np.testing.assert_allclose(got["estimate"], want["estimate"], rtol=1e-12)
    assert (tmp_path / "out" / "checks" / "toy_did.pretrends.csv").exists()
    assert (tmp_path / "out" / "estimators" / "comparison.csv").exists()


def test_toy_estimator_through_the_service(toy, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from distributed import Client, LocalCluster
    from fastapi.testclient import TestClient

    from dte_dask.service.app import create_app
    from dte_dask.service.settings import ServiceSettings

    settings = ServiceSettings(token="t" * 32, db_path=tmp_path / "jobs.sqlite", results_dir=tmp_path / "results")
    auth = {"Authorization": "Bearer " + "t" * 32}
    job = {"name": "toy", "data": {"source": "mpdta"}, "estimators": [{"kind": "toy_did", "options": {"horizon": 1}}],
           "inference": {"bootstrap": False}, "report": False, "cluster": {"performance_report": False}}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as c, \
            Client(c) as client, TestClient(create_app(settings, client=client)) as http:
        doc = http.get("/openapi.json", headers=auth).json()
        kinds = [v["properties"]["kind"]["enum"][0] for v in doc["components"]["schemas"]["EstimatorSpec"]["oneOf"]]
        assert "toy_did" in kinds
        bad = http.post("/jobs", json={**job, "estimators": [{"kind": "toy_did", "options": {"horizon": "x"}}]},
                        headers=auth)
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "estimators", 0, "options",
                                                                            "horizon"], bad.text
        r = http.post("/jobs", json=job, headers=auth)
        assert r.status_code == 202, r.text
        job_id, deadline = r.json()["id"], time.monotonic() + 120
        while (info := http.get(f"/jobs/{job_id}", headers=auth).json())["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, info
            time.sleep(0.2)
        assert info["state"] == "succeeded", info
        csv = http.get(f"/jobs/{job_id}/results/estimators/toy_did.csv", headers=auth)
        assert csv.status_code == 200 and csv.text.startswith("event_time,estimate,se,ci_lower,ci_upper")


# ----------------------------------------------------------------------------- the protocol
@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    df = dte_dask.datasets.load_mpdta()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cs = dte_dask.att_gt(df, **MPDTA, n_boot=99, seed=1)
        return {"cells": cs, "dynamic": cs.aggregate("dynamic"), "group": cs.aggregate("group"),
                "event_study": dte_dask.event_study(df, **MPDTA, window=(-3, 3), bootstrap=True, n_boot=99, seed=1),
                "sun_abraham": dte_dask.sun_abraham(df, **MPDTA)}


@pytest.mark.parametrize("name", ["cells", "dynamic", "group", "event_study", "sun_abraham"])
def test_every_result_follows_the_schema(results, name, tmp_path: Path) -> None:
    res = results[name]
    df = res.to_frame()
    assert list(df.columns[df.columns.isin(SCHEMA)]) == list(SCHEMA)
    assert not {"att", "coef"} & set(df.columns)
    np.testing.assert_array_equal(df["estimate"].to_numpy(), res.estimates)
    V = res.vcov()
    assert V.shape == (len(df), len(df)) and np.allclose(V, V.T)
    ok = np.isfinite(df["se"]) & (df["se"] > 0)
    z = 1.959963984540054
    if name in ("cells", "dynamic", "group"):  # pointwise normal interval
        np.testing.assert_allclose((df["ci_upper"] - df["estimate"])[ok], z * df["se"][ok], rtol=1e-12)
        # the bootstrap's sup-t band is the uniform one, wider than the pointwise interval
        assert ((df["band_upper"] - df["band_lower"]) > (df["ci_upper"] - df["ci_lower"]))[ok].all()
        np.testing.assert_allclose(np.sqrt(np.diag(V))[ok], df["se_analytic"][ok], rtol=1e-10)
    else:
        np.testing.assert_allclose(np.sqrt(np.diag(V)), df["se"], rtol=1e-12)
    assert res.summary() == str(res) == repr(res) and res._repr_html_().startswith("<pre>")
    path = res.to_parquet(tmp_path / f"{name}.parquet")
    assert len(pd.read_parquet(path)) == len(df)


def test_results_without_the_bootstrap_have_no_uniform_band(results) -> None:
    es = results["sun_abraham"].to_frame()
    assert es["band_lower"].isna().all() and es["band_upper"].isna().all()
    cs = dte_dask.att_gt(dte_dask.datasets.load_mpdta(), **MPDTA, bootstrap=False).to_frame()
    assert cs["band_lower"].isna().all()


def test_pretrend_test_on_the_dynamic_aggregation_uses_its_covariance(results) -> None:
    dyn = results["dynamic"]
    t = dyn.pretrend_test()
    pre = dyn.keys < 0
    from dte_dask.inference.bands import wald_test

    w, q, p = wald_test(dyn.att[pre], dyn.vcov()[np.ix_(pre, pre)])
    assert (t["statistic"], t["df"], t["p_value"]) == (w, q, p)


def test_layers_downstream_never_test_class_names_or_guess_columns() -> None:
    for rel in ("dte_dask/plotting.py", "dte_dask/report.py", "dte_dask/checks/pretrends.py",
                "dte_dask/estimators/compare.py", "dte_dask/jobs/runner.py", "dte_dask/service/routes.py"):
        text = (ROOT / rel).read_text()
        for banned in ("type(obj).__name__ ==", "import AttgtResult", "import AggregateResult", "isinstance(res, Agg",
                       "import RegressionResult", '"coef"', "cband_", "uniform_lower", "_is_attgt", "_is_aggregate",
                       '"cs"', "getattr(dte_dask, "):
            assert banned not in text, (rel, banned)


class _Minimal(Result):
    result_kind: ClassVar[str] = "event_study"
    estimator = "nobody"
    alpha = 0.05


def test_unregistered_result_label_falls_back_to_its_name() -> None:
    assert _Minimal().label == "nobody"
