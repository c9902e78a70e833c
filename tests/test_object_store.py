"""Panels in object storage, against a real S3-compatible server on loopback (moto's standalone
server, started here in a thread): ``dte-dask simulate --out s3://...`` writes the same objects as
a local write, ``load_panel("s3://...")`` reads them back without a shuffle into the same blocks,
``att_gt`` gives the same numbers bit for bit, a job with ``data.source: s3://...`` runs, and
refused credentials, missing buckets and prefixes and secrets in a job body give clear errors.

The server checks signatures (moto's IAM emulation is switched on after an IAM user and its access
key are created), so "wrong credentials" are really refused by the server.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import dte_dask
from dte_dask import load_panel
from dte_dask.cli import main
from dte_dask.exceptions import PanelError, SpecError
from dte_dask.jobs.spec import check_data_source, parse_job
from dte_dask.simulate import write_panel

moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[test]')")
pytest.importorskip("s3fs", reason="s3fs is not installed (pip install 'dte_dask[s3]')")

pytestmark = [pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.reset_index"),
              pytest.mark.filterwarnings("ignore:Port 8787 is already in use")]

BUCKET = "panels"
SIM = dict(n_units=9000, n_periods=4, npartitions=3, seed=1)  # three files of whole, sorted unit ranges
KW = dict(unit="unit", time="time", outcome="y", group="group", covariates=["age"], npartitions=3,
          rng_block_size=512)


@pytest.fixture(scope="module")
def s3() -> Any:
    """A moto S3 server on 127.0.0.1 with signature checks on; env holds a valid key and the endpoint."""
    import boto3
    import requests
    from moto import settings

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    before_auth = settings.INITIAL_NO_AUTH_ACTION_COUNT
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
            mp.delenv(var, raising=False)
        mp.setenv("AWS_CONFIG_FILE", os.devnull)  # nothing from the machine's ~/.aws
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_ACCESS_KEY_ID", "bootstrap")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "bootstrap")
        iam = boto3.client("iam", endpoint_url=endpoint)
        iam.create_user(UserName="ci")
        iam.put_user_policy(UserName="ci", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="ci")["AccessKey"]
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
        mp.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        mp.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        try:
            yield {"endpoint": endpoint}
        finally:
            settings.INITIAL_NO_AUTH_ACTION_COUNT = before_auth
            server.stop()


@pytest.fixture(scope="module")
def written(s3: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same simulation written to local disk (write_panel) and to S3 (the CLI)."""
    local = tmp_path_factory.mktemp("local") / "sim"
    write_panel(local, SIM["n_units"], SIM["n_periods"], npartitions=SIM["npartitions"], seed=SIM["seed"],
                scheduler="sync")
    url = f"s3://{BUCKET}/sim"
    res = CliRunner().invoke(main, ["simulate", "--units", str(SIM["n_units"]), "--periods", str(SIM["n_periods"]),
                                    "--npartitions", str(SIM["npartitions"]), "--seed", str(SIM["seed"]),
                                    "--out", url, "--storage-option", f"endpoint_url={s3['endpoint']}",
                                    "--no-progress"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert f"in 3 files to {url}" in res.output
    return {"local": local, "url": url}


def _fs() -> Any:
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


def _signature(panel: Any) -> dict[str, np.ndarray]:
    blocks = dask.compute(*panel.blocks)
    out = {f: np.concatenate([getattr(b, f) for b in blocks]) for f in ("ids", "rank", "g", "w", "y", "x")}
    out["sizes"] = np.array([b.n for b in blocks])
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f"), k


def _forbid_shuffles(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the loader shuffled data that was already partitioned by unit")
    for name in ("set_index", "shuffle", "sort_values"):
        monkeypatch.setattr(dd.DataFrame, name, boom)


# ----------------------------------------------------------------------------- writing
def test_cli_writes_the_same_objects_as_a_local_write(written: dict) -> None:
    fs = _fs()
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{BUCKET}/sim", detail=False))
    assert names == sorted(p.name for p in written["local"].iterdir())
    assert names == ["_dte_dask.json", "_truth.csv", "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    for name in names:  # byte for byte: data, truth and metadata (which holds no path)
        assert fs.cat(f"{BUCKET}/sim/{name}") == (written["local"] / name).read_bytes(), name


def test_overwrite_on_s3(s3: dict) -> None:
    url = f"s3://{BUCKET}/small"
    write_panel(url, 50, 3, scheduler="sync")
    with pytest.raises(SpecError, match="is not empty"):
        write_panel(url, 50, 3, scheduler="sync")
    info = write_panel(url, 60, 3, overwrite=True, scheduler="sync")
    assert info["n_units"] == 60 and info["out_dir"] == url
    assert json.loads(_fs().cat(f"{BUCKET}/small/_dte_dask.json"))["n_units"] == 60


# ----------------------------------------------------------------------------- reading
def test_load_from_s3_is_not_shuffled_and_equals_local(written: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = _signature(load_panel(written["local"], **KW))
    assert dd.read_parquet(written["url"]).npartitions == 3  # one partition per object
    _forbid_shuffles(monkeypatch)  # each object holds a sorted, disjoint unit range: detected on S3 too
    for src in (written["url"], written["url"] + "/", written["url"] + "/part-*.parquet",
                written["url"] + "/*.parquet"):
        _assert_same(ref, _signature(load_panel(src, **KW)))
    one = load_panel(written["url"] + "/part-00001.parquet", **KW)  # units 4097..8192
    assert _signature(one)["ids"].tolist() == list(range(4097, 8193))


def test_csv_glob_on_s3(written: dict, tmp_path: Path) -> None:
    pdf = pd.read_parquet(written["local"]).sort_values(["unit", "time"], ignore_index=True)
    fs = _fs()
    for i, rows in enumerate(np.array_split(np.arange(len(pdf)), 2)):
        pdf.iloc[rows].to_csv(tmp_path / f"part-{i}.csv", index=False)
        fs.put_file(str(tmp_path / f"part-{i}.csv"), f"{BUCKET}/csv/part-{i}.csv")
    ref = _signature(load_panel(str(tmp_path / "part-*.csv"), **KW))
    _assert_same(ref, _signature(load_panel(f"s3://{BUCKET}/csv/part-*.csv", **KW)))


def test_att_gt_on_s3_equals_local_bit_for_bit(written: dict) -> None:
    opts = dict(bootstrap=True, n_boot=99, seed=7)
    a = dte_dask.att_gt(load_panel(written["local"], **KW), **opts)
    b = dte_dask.att_gt(load_panel(written["url"], **KW, storage_options={"anon": False}), **opts)
    for field in ("att", "se_analytic", "se_boot", "draws_aug", "cov_aug", "n_treated", "n_control"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert a.crit == b.crit
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame(), check_exact=True)


def test_job_with_an_s3_source_runs(written: dict, s3: dict, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    from dte_dask.jobs.runner import run_job

    job = parse_job({
        "name": "s3", "output": str(tmp_path / "out"), "report": False,
        "data": {"source": written["url"] + "/", "unit": "unit", "time": "time", "outcome": "y", "group": "group",
                 "covariates": ["age"], "npartitions": 3, "storage_options": {"endpoint_url": s3["endpoint"]}},
        "estimators": [{"kind": "att_gt"}],
        "inference": {"bootstrap": True, "n_boot": 49, "seed": 3},
        "cluster": {"performance_report": False},
    })
    with LocalCluster(processes=False, n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0") as lc, \
            Client(lc) as client:
        run_job(job, client=client, progress=False, echo=lambda s: None)
    got = pd.read_parquet(tmp_path / "out" / "estimators" / "att_gt.parquet")
    ref = dte_dask.att_gt(load_panel(written["local"], **{**KW, "rng_block_size": None}),
                          bootstrap=True, n_boot=49, seed=3).to_frame().reset_index(drop=True)
    pd.testing.assert_frame_equal(got, ref, check_exact=True)
    meta = json.loads((tmp_path / "out" / "summary.json").read_text())["metadata"]
    assert meta["job"]["data"]["storage_options"] == {"endpoint_url": s3["endpoint"]}


def test_worker_processes_read_from_s3(written: dict) -> None:
    """Out of core on a real cluster: worker processes read the objects themselves (credentials from
    their environment), with the same blocks and bootstrap draws as from local disk."""
    from distributed import Client, LocalCluster

    ref = _signature(load_panel(written["local"], **KW))
    local = dte_dask.att_gt(load_panel(written["local"], **KW), bootstrap=True, n_boot=19, seed=1)
    with LocalCluster(processes=True, n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0") as lc, \
            Client(lc):
        panel = load_panel(written["url"], **KW)
        _assert_same(ref, _signature(panel))
        remote = dte_dask.att_gt(panel, bootstrap=True, n_boot=19, seed=1)
    np.testing.assert_array_equal(local.draws_aug, remote.draws_aug)
    np.testing.assert_array_equal(local.se_boot, remote.se_boot)


def test_job_check_names_missing_columns_on_s3(written: dict) -> None:
    job = parse_job({"data": {"source": written["url"], "unit": "unit", "time": "time", "outcome": "sbp",
                              "group": "group"}, "estimators": [{"kind": "att_gt"}]})
    with pytest.raises(SpecError, match=r"data\.outcome: column 'sbp' not found"):
        check_data_source(job.data)


# ----------------------------------------------------------------------------- errors
def test_wrong_credentials_are_refused_clearly(written: dict, s3: dict) -> None:
    wrong = {"key": "AKIAWRONGWRONGWRONG0", "secret": "not-the-secret"}
    for src in (written["url"], written["url"] + "/*.parquet"):
        with pytest.raises(PanelError) as info:
            load_panel(src, **KW, storage_options=wrong)
        msg = str(info.value)
        assert src in msg and "refused the credentials" in msg and s3["endpoint"] in msg
        assert "AWS_ACCESS_KEY_ID" in msg
        assert info.value.__cause__ is None and info.value.__suppress_context__  # no botocore traceback
    with pytest.raises(PanelError, match="refused the credentials"):
        write_panel(f"s3://{BUCKET}/nope", 50, 3, scheduler="sync", storage_options=wrong)


def test_missing_bucket_and_prefix(written: dict, s3: dict) -> None:
    ep = s3["endpoint"]
    for src in ("s3://no-such-bucket/sim/", "s3://no-such-bucket/sim/*.parquet"):
        with pytest.raises(PanelError, match=f"bucket 'no-such-bucket' does not exist at {ep}"):
            load_panel(src, **KW)
    with pytest.raises(PanelError, match=f"bucket 'no-such-bucket' does not exist at {ep}"):
        write_panel("s3://no-such-bucket/sim", 50, 3, scheduler="sync")
    for src in (f"s3://{BUCKET}/nothing-here/", f"s3://{BUCKET}/sim/*.pq", f"s3://{BUCKET}/sim/part-9.parquet"):
        with pytest.raises(PanelError, match="no such object or prefix"):
            load_panel(src, **KW)
    job = parse_job({"data": {"source": "s3://no-such-bucket/x/", "unit": "unit", "time": "time", "outcome": "y",
                              "group": "group"}, "estimators": [{"kind": "att_gt"}]})
    with pytest.raises(SpecError, match="data.source: .*bucket 'no-such-bucket' does not exist"):
        check_data_source(job.data)


@pytest.mark.parametrize("options, name", [
    ({"key": "AKIA", "secret": "x"}, "'key', 'secret'"),
    ({"endpoint_url": "http://127.0.0.1:9", "token": "x"}, "'token'"),
    ({"client_kwargs": {"aws_secret_access_key": "x"}}, "'client_kwargs.aws_secret_access_key'"),
    ({"password": "x"}, "'password'"),
    ({"client_kwargs": {"headers": [{"Authorization": "x"}]}}, "'client_kwargs.headers.0.Authorization'"),
])
def test_secrets_in_a_job_body_are_refused(options: dict, name: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_job({"data": {"source": "s3://b/p/", "unit": "u", "time": "t", "outcome": "y", "group": "g",
                            "storage_options": options}, "estimators": [{"kind": "att_gt"}]})
    msg = str(info.value)
    assert "data.storage_options" in msg and name in msg and "environment" in msg and "profile" in msg
    assert "AKIA" not in msg  # the value itself is never echoed


def test_non_secret_storage_options_are_accepted() -> None:
    opts = {"endpoint_url": "http://127.0.0.1:9000", "profile": "ci", "anon": False,
            "client_kwargs": {"region_name": "eu-west-1"}, "config_kwargs": {"signature_version": "s3v4"}}
    job = parse_job({"data": {"source": "s3://b/p/", "unit": "u", "time": "t", "outcome": "y", "group": "g",
                              "storage_options": opts}, "estimators": [{"kind": "att_gt"}]})
    assert job.data.storage_options == opts


def test_cli_refuses_secret_storage_options(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["simulate", "--units", "10", "--out", "s3://b/p",
                                    "--storage-option", "secret=abc"])
    assert res.exit_code == 2 and "'secret' looks like a credential" in res.output and "abc" not in res.output


def test_without_s3fs_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    registry = importlib.import_module("fsspec.registry")  # the module: fsspec.registry is its mapping
    monkeypatch.delitem(registry._registry, "s3", raising=False)
    monkeypatch.setitem(sys.modules, "s3fs", None)
    with pytest.raises(PanelError, match=r"pip install 'dte_dask\[s3\]'"):
        load_panel("s3://b/p/", **KW)
    with pytest.raises(PanelError, match=r"pip install 'dte_dask\[s3\]'"):
        write_panel("s3://b/p", 50, 3, scheduler="sync")


# ---------------------------------------------------------------------------------- the service
def test_service_confines_urls_to_its_bucket_prefixes(written: dict, s3: dict) -> None:
    pytest.importorskip("fastapi")
    from dte_dask.jobs.spec import JobSpec
    from dte_dask.service.limits import panel_shape
    from dte_dask.service.paths import confine_source, normalise_bucket_prefix
    from dte_dask.service.validate import SpecProblem

    opts = {"endpoint_url": s3["endpoint"]}
    buckets = (normalise_bucket_prefix(f"S3://{BUCKET}/sim"),)
    assert buckets == (f"s3://{BUCKET}/sim/",)
    # inside the prefix: a folder, a glob
    assert confine_source(written["url"], (), buckets, opts) == written["url"]
    assert confine_source(written["url"] + "/*.parquet", (), buckets, opts) == written["url"] + "/*.parquet"
    # everything else gets one answer, whether it exists or not, and the store is asked nothing
    answers = set()
    for bad in (f"s3://{BUCKET}/other", f"s3://{BUCKET}/sim/../other", f"s3://{BUCKET}/sim//x",
                f"s3://{BUCKET}/sim/%2e%2e/x", f"s3://{BUCKET}/sim/missing.parquet", f"s3://{BUCKET}-2/sim/",
                f"gs://{BUCKET}/sim/", "http://169.254.169.254/latest/", f"s3://{BUCKET}/si*"):
        with pytest.raises(SpecProblem) as exc:
            confine_source(bad, (), buckets, opts)
        answers.add((exc.value.status, exc.value.errors[0]["msg"]))
    assert len(answers) == 1, answers
    with pytest.raises(SpecProblem):  # no allowed buckets: URLs are refused like any outside path
        confine_source(written["url"], (Path("/tmp"),), (), opts)
    for bad_prefix in ("bucket", "s3://", "s3://b/../c", "s3://b/*/"):
        with pytest.raises(ValueError, match="bucket prefix"):
            normalise_bucket_prefix(bad_prefix)
    # the size estimate reads the parquet footers in the store
    job = JobSpec.model_validate({"data": {"source": written["url"], **{k: KW[k] for k in ("unit", "time", "outcome",
                                                                                            "group")},
                                           "storage_options": opts}, "estimators": [{"kind": "att_gt"}]})
    shape = panel_shape(job, written["url"])
    assert shape is not None and shape.units == SIM["n_units"] and shape.periods == SIM["n_periods"]


def test_service_runs_a_job_from_an_allowed_bucket(written: dict, s3: dict, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from distributed import Client, LocalCluster
    from fastapi.testclient import TestClient

    from dte_dask.service.app import create_app
    from dte_dask.service.settings import ServiceConfigError, ServiceSettings

    with pytest.raises(ServiceConfigError, match="credential"):
        ServiceSettings(token="t" * 32, db_path=tmp_path / "x.sqlite", data_buckets=(f"s3://{BUCKET}/",),
                        bucket_options={"secret": "x"})
    settings = ServiceSettings(token="t" * 32, db_path=tmp_path / "jobs.sqlite", data_buckets=(f"s3://{BUCKET}/sim/",),
                               bucket_options={"endpoint_url": s3["endpoint"]})
    cols = {k: KW[k] for k in ("unit", "time", "outcome", "group")}
    job = {"name": "s3", "data": {"source": written["url"], **cols}, "estimators": [{"kind": "att_gt"}],
           "inference": {"bootstrap": False}, "report": False, "cluster": {"performance_report": False}}
    auth = {"Authorization": "Bearer " + "t" * 32}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as c, \
            Client(c) as client, TestClient(create_app(settings, client=client)) as http:
        # a job cannot choose the endpoint (or anything else) the service reads buckets with
        r = http.post("/jobs", json={**job, "data": {**job["data"], "storage_options": {"endpoint_url": "http://x"}}},
                      headers=auth)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "data", "storage_options"], r.text
        r = http.post("/jobs", json={**job, "data": {**job["data"], "source": f"s3://{BUCKET}/elsewhere/"}},
                      headers=auth)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "data", "source"], r.text
        r = http.post("/jobs", json=job, headers=auth)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 120
        while (info := http.get(f"/jobs/{job_id}", headers=auth).json())["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, info
            time.sleep(0.2)
    assert info["state"] == "succeeded", info
    direct = dte_dask.att_gt(dte_dask.load_panel(written["url"], storage_options={"endpoint_url": s3["endpoint"]},
                                                 **cols), bootstrap=False)
    assert info["summary"]["estimators"]["att_gt"]["overall"]["att"] == pytest.approx(
        direct.aggregate("simple").overall_att, rel=1e-12)
