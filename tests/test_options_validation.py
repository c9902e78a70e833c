"""Estimator options have one source of truth (dte_dask.estimators.options).

The library refuses a bad option with a SpecError naming the argument (and, for a vocabulary,
the allowed values) before loading anything; the service refuses the same value with 422 at the
option's exact location. Bootstrap requests beyond the configured cost limits are refused up front.
"""
from __future__ import annotations

import types
from typing import get_args

import dask
import numpy as np
import pytest

import dte_dask
from dte_dask.estimators import options as opts
from dte_dask.exceptions import SpecError
from dte_dask.inference import bootstrap as boot
from dte_dask.jobs.spec import InferenceSpec, parse_job

COLS = dict(outcome="lemp", unit="countyreal", time="year", group="first_treat")


@pytest.fixture(scope="module")
def mpdta():
    return dte_dask.datasets.load_mpdta()


# ----------------------------------------------------------------------------- the models
def test_one_table_of_estimators_and_their_models() -> None:
    from dte_dask import registry
    from dte_dask.jobs import spec

    assert spec.ESTIMATORS == tuple(registry.names())
    assert issubclass(InferenceSpec, opts.InferenceOptions)
    for entry in registry.list_estimators():
        kind, fn = entry.name, entry.fn
        assert fn is getattr(dte_dask, kind)
        params = __import__("inspect").signature(fn).parameters
        for name, field in entry.options.model_fields.items():  # every option is an argument, same default
            assert name in params, (kind, name)
            assert params[name].default == field.default, (kind, name)
    assert get_args(opts.BootWeights) == get_args(boot.BootWeights)


# ----------------------------------------------------------------------------- library
@pytest.mark.parametrize("fn,bad,match", [
    ("att_gt", dict(control_group="bogus"), r"control_group='bogus' is not one of \['never_treated', 'not_yet_treated'\]"),
    ("att_gt", dict(est_method=3), r"est_method=3 is not one of \['dr', 'ipw', 'reg'\]"),
    ("att_gt", dict(anticipation=-3), r"anticipation must be a non-negative integer, got -3"),
    ("att_gt", dict(anticipation=1.5), r"anticipation must be a non-negative integer"),
    ("att_gt", dict(seed=-1), r"seed must be a non-negative integer, got -1"),
    ("att_gt", dict(seed=True), r"seed must be a non-negative integer, got True"),
    ("att_gt", dict(seed="1"), r"seed must be a non-negative integer"),
    ("att_gt", dict(n_boot=1.5), r"n_boot must be an integer >= 2"),
    ("att_gt", dict(bootstrap="yes"), r"bootstrap must be True or False"),
    ("event_study", dict(window="abc"), r"window must be a pair"),
    ("event_study", dict(window=[5, -5]), r"window=\(5, -5\): K must be smaller than L"),
    ("event_study", dict(seed=-1, bootstrap=True), r"seed must be a non-negative integer"),
    ("stacked_did", dict(window="abc"), r"window must be a pair"),
    ("stacked_did", dict(control_group="bogus"), r"control_group='bogus' is not one of \['not_yet_treated'"),
    ("stacked_did", dict(seed=-1, bootstrap=True), r"seed must be a non-negative integer"),
    ("sun_abraham", dict(window=[5, -5]), r"K must be smaller than L"),
    ("sun_abraham", dict(control_group="bogus"), r"control_group='bogus' is not one of \['never_treated', 'last_treated'\]"),
    ("sun_abraham", dict(seed=-1, bootstrap=True), r"seed must be a non-negative integer"),
])
def test_library_refuses_bad_options_before_loading(fn, bad, match) -> None:
    # a data argument that would fail on load: the option must be refused first
    with pytest.raises(SpecError, match=match):
        getattr(dte_dask, fn)("no-such-file.parquet", **COLS, **bad)


def test_numpy_integers_accepted(mpdta) -> None:
    a = dte_dask.att_gt(mpdta, **COLS, n_boot=np.int64(50), seed=np.int32(3), anticipation=np.int64(0))
    b = dte_dask.att_gt(mpdta, **COLS, n_boot=50, seed=3)
    assert a.seed == 3 and np.array_equal(a.draws_aug, b.draws_aug)


def test_control_is_a_deprecated_spelling(mpdta) -> None:
    with pytest.warns(DeprecationWarning, match="use control_group"):
        old = dte_dask.sun_abraham(mpdta, **COLS, control="never_treated")
    new = dte_dask.sun_abraham(mpdta, **COLS, control_group="never_treated")
    assert np.array_equal(old.coef, new.coef) and new.options["control_group"] == "never_treated"
    with pytest.warns(DeprecationWarning), pytest.raises(SpecError, match=r"control='x' is not one of"):
        dte_dask.stacked_did(mpdta, **COLS, control="x")


def test_job_spec_uses_the_models() -> None:
    base = {"data": {"source": "mpdta"}, "estimators": [{"kind": "stacked_did", "options": {"control": "strict"}}]}
    with pytest.warns(DeprecationWarning):
        job = parse_job(base)
    assert job.estimators[0].options == {"control_group": "strict"}
    job = parse_job({"data": {"source": "mpdta"}, "estimators": [{"kind": "event_study", "options": {"window": [-2, 2]}}],
                     "inference": {"seed": np.int64(4)}})
    assert job.estimators[0].options == {"window": (-2, 2)} and job.inference.seed == 4


# ----------------------------------------------------------------------------- service
@pytest.fixture(scope="module")
def api(tmp_path_factory):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from dte_dask.service.app import create_app
    from dte_dask.service.settings import ServiceSettings

    tmp = tmp_path_factory.mktemp("svc")
    settings = ServiceSettings(token="t" * 32, db_path=tmp / "jobs.sqlite", results_dir=tmp / "results")
    stub = types.SimpleNamespace(status="running", scheduler_info=lambda: {})  # no job ever runs here
    with TestClient(create_app(settings, client=stub)) as client:
        yield client


@pytest.mark.parametrize("kind,options,field", [
    ("att_gt", {"control_group": "bogus"}, "control_group"),
    ("att_gt", {"est_method": 3}, "est_method"),
    ("att_gt", {"anticipation": -3}, "anticipation"),
    ("event_study", {"window": "abc"}, "window"),
    ("event_study", {"window": [5, -5]}, "window"),
    ("stacked_did", {"control_group": "bogus"}, "control_group"),
    ("sun_abraham", {"window": [5, -5]}, "window"),
])
def test_service_422_at_the_option(api, kind, options, field) -> None:
    job = {"data": {"source": "mpdta"}, "estimators": [{"kind": kind, "options": options}], "report": False}
    r = api.post("/jobs", json=job, headers={"Authorization": "Bearer " + "t" * 32})
    assert r.status_code == 422, r.text
    locs = [e["loc"] for e in r.json()["detail"]]
    assert locs == [["body", "estimators", 0, "options", field]], locs


@pytest.mark.parametrize("inference,field", [({"seed": -1}, "seed"), ({"n_boot": 1}, "n_boot"),
                                             ({"seed": True}, "seed")])
def test_service_422_at_the_inference_option(api, inference, field) -> None:
    job = {"data": {"source": "mpdta"}, "estimators": [{"kind": "att_gt"}], "inference": inference}
    r = api.post("/jobs", json=job, headers={"Authorization": "Bearer " + "t" * 32})
    assert r.status_code == 422, r.text
    assert [e["loc"] for e in r.json()["detail"]] == [["body", "inference", field]]


# ----------------------------------------------------------------------------- bootstrap cost
@pytest.mark.parametrize("fn", ["att_gt", "event_study", "stacked_did", "sun_abraham"])
@pytest.mark.parametrize("n_boot", [10**7, 10**9])
def test_costly_bootstrap_refused_up_front(fn, n_boot) -> None:
    with pytest.raises(SpecError, match=r"(?s)n_boot=\d+ is too costly: at least about .* multipliers .* GiB of draws.*"
                                        r"dte_dask\.bootstrap\.max-multipliers.*dask\.config\.set"):
        getattr(dte_dask, fn)("no-such-file.parquet", **COLS, bootstrap=True, n_boot=n_boot)


def test_bootstrap_limits_follow_the_panel_and_config(mpdta) -> None:
    # 500 units x 15 columns: the memory limit binds once lowered, and the message says so
    with dask.config.set({"dte_dask.bootstrap.max-draws-bytes": 10_000}):
        with pytest.raises(SpecError, match=r"max-draws-bytes"):
            dte_dask.att_gt(mpdta, **COLS, n_boot=999, seed=1)
    with dask.config.set({"dte_dask.bootstrap.max-multipliers": 10**12}):
        boot.check_bootstrap_cost(10**7, n_entities=500, width=15, kind="rademacher")

