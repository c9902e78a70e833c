"""``dte-dask run JOB.yaml``: the shipped mpdta job end to end, its results folder, the numbers
against ``dte_dask.att_gt`` called directly, spec errors that name the field, and the
``--data/--out/--profile`` overrides.

The job runs on a one-worker LocalCluster (``cluster.overrides`` in a temp copy of
``examples/jobs/mpdta_local.yaml``) with a short bootstrap, through click's CliRunner.
"""
from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

import dte_dask
from dte_dask.cli import main
from dte_dask.exceptions import SpecError
from dte_dask.jobs.spec import check_data_source, parse_job, with_overrides

pytestmark = [pytest.mark.filterwarnings("ignore:Port 8787 is already in use")]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "jobs" / "mpdta_local.yaml"
N_BOOT = 199
SMALL_CLUSTER = {"n_workers": 1, "threads_per_worker": 1, "dashboard_address": "127.0.0.1:0"}
MPDTA_COLS = dict(outcome="lemp", unit="countyreal", time="year", group="first_treat")


def _example(out: Path, **cluster_overrides: Any) -> dict[str, Any]:
    """The shipped example, small: short bootstrap, one worker, output in ``out``."""
    job = yaml.safe_load(EXAMPLE.read_text())
    job["inference"]["n_boot"] = N_BOOT
    job["cluster"]["overrides"] = {**SMALL_CLUSTER, **cluster_overrides}
    job["output"] = os.fspath(out)
    return job


def _write(path: Path, job: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _csv(path: Path) -> pd.DataFrame:
    """A results CSV with every number parsed by Python's ``float`` (correctly rounded, so the
    17 significant digits pandas writes come back bit for bit; pandas' own fast parser may not)."""
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    return raw.apply(lambda col: col.map(lambda v: float(v) if v != "" else np.nan))


@pytest.fixture(scope="module")
def example_spec() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The example job run once through ``dte-dask run`` (progress bar on, as a user runs it)."""
    d = tmp_path_factory.mktemp("job")
    job_file = _write(d / "job.yaml", _example(d / "results"))
    res = _invoke("run", os.fspath(job_file))
    assert res.exit_code == 0, res.output
    return d / "results", res.output


@pytest.fixture(scope="module")
def direct(example_spec: dict[str, Any]) -> dict[str, Any]:
    """``dte_dask.att_gt`` called directly with the example's options and seed (no cluster)."""
    df = dte_dask.datasets.load_mpdta()
    seed = example_spec["inference"]["seed"]
    out = {}
    for est in example_spec["estimators"]:
        out[est["name"]] = dte_dask.att_gt(df, **MPDTA_COLS, **est["options"], bootstrap=True, n_boot=N_BOOT,
                                           seed=seed)
    return out


# --------------------------------------------------------------------------------------------
# the results folder
# --------------------------------------------------------------------------------------------
def test_run_prints_dashboard_progress_and_writes_every_file(run_dir: tuple[Path, str], example_spec) -> None:
    out, output = run_dir
    assert "dashboard: http://127.0.0.1:" in output
    assert "ETA" in output and "done" in output  # the progress bar's last frame
    assert f"results: {out}" in output
    names = [e["name"] for e in example_spec["estimators"]]
    for name in names:
        for ext in ("csv", "parquet"):
            assert (out / "estimators" / f"{name}.{ext}").stat().st_size > 0
    assert {"cs_never.dynamic.csv", "cs_never.group.csv", "cs_never.calendar.csv",
            "cs_never.event_study.csv"} <= {p.name for p in (out / "estimators").iterdir()}
    for html in ("dask-report.html", "report.html"):
        text = (out / html).read_text(errors="replace")
        assert "<html" in text.lower() and len(text) > 10_000, html


def test_summary_records_versions_seed_shape_timings(run_dir: tuple[Path, str], example_spec) -> None:
    out, _ = run_dir
    summary = json.loads((out / "summary.json").read_text())
    meta = summary["metadata"]
    for pkg in ("python", "dte_dask", "dask", "distributed", "numpy", "pandas"):
        assert meta["versions"][pkg], pkg
    assert meta["versions"]["dte_dask"] == version("dte_dask")
    seed = example_spec["inference"]["seed"]
    assert meta["seeds"] == {e["name"]: seed for e in example_spec["estimators"]}
    assert meta["panel_shape"] == {"units": 500, "periods": 5, "rows": 2500, "partitions": 1}
    assert summary["panel"]["units"] == 500 and summary["panel"]["cohorts"]["never treated"] == 309
    t = meta["job_timings"]
    for key in ("cluster_start", "load", "cs_never", "cs_notyet", "total"):
        assert t[key] > 0, key
    assert t["total"] >= t["cluster_start"] + t["load"] + t["cs_never"] + t["cs_notyet"]
    assert meta["profile"] == "local"
    assert meta["cluster"]["workers"] == 1 and meta["cluster"]["threads"] == 1
    assert meta["cluster"]["dashboard"].startswith("http://127.0.0.1:")
    assert meta["job"]["inference"]["n_boot"] == N_BOOT
    # each estimator, plus one entry per aggregation the spec lists for it
    assert set(summary["estimators"]) == {"cs_never", "cs_notyet"} | {
        f"{e['name']}.{a}" for e in example_spec["estimators"] for a in e.get("aggregations", [])}


def test_numbers_equal_att_gt_called_directly(run_dir: tuple[Path, str], direct: dict[str, Any]) -> None:
    out, _ = run_dir
    for name, res in direct.items():
        ref = res.to_frame().reset_index(drop=True)
        for got in (_csv(out / "estimators" / f"{name}.csv"), pd.read_parquet(out / "estimators" / f"{name}.parquet")):
            assert list(got.columns) == list(ref.columns)
            for col in ref.columns:  # exactly: same seed, bit-identical reductions
                np.testing.assert_array_equal(got[col].to_numpy(), ref[col].to_numpy(), err_msg=f"{name}.{col}")
    dyn = direct["cs_never"].aggregate("dynamic", na_rm=True).to_frame().reset_index(drop=True)
    got = _csv(out / "estimators" / "cs_never.dynamic.csv")
    for col in ("event_time", "estimate", "se", "ci_lower", "ci_upper", "band_lower", "band_upper"):
        np.testing.assert_array_equal(got[col].to_numpy(), dyn[col].to_numpy(), err_msg=col)


# --------------------------------------------------------------------------------------------
# overrides
# --------------------------------------------------------------------------------------------
def test_data_out_profile_overrides(run_dir: tuple[Path, str], tmp_path: Path) -> None:
    """``--data`` (mpdta as parquet), ``--out`` and ``--profile`` (a profile file) win over the
    job; the numbers are those of the bundled data."""
    ref_out, _ = run_dir
    data = tmp_path / "mpdta.parquet"
    dte_dask.datasets.load_mpdta().to_parquet(data)
    profile = tmp_path / "one-worker.yaml"
    profile.write_text(yaml.safe_dump({"version": 1, "kind": "local", "description": "test profile",
                                       "cluster": {"n_workers": 2, "memory_limit": "1GB",
                                                   "host": "127.0.0.1"}}))
    job_out = tmp_path / "never-written"
    job = _example(job_out)
    job["estimators"] = job["estimators"][:1]
    job_file = _write(tmp_path / "job.yaml", job)
    out = tmp_path / "elsewhere"
    res = _invoke("run", os.fspath(job_file), "--data", os.fspath(data), "--out", os.fspath(out),
                  "--profile", os.fspath(profile), "--no-progress")
    assert res.exit_code == 0, res.output
    assert not job_out.exists()
    summary = json.loads((out / "summary.json").read_text())
    meta = summary["metadata"]
    assert meta["job"]["data"]["source"] == os.fspath(data)
    assert meta["job"]["output"] == os.fspath(out)
    assert meta["profile"] == os.fspath(profile)
    # the job's overrides (n_workers: 1) win over the profile; memory_limit comes from the profile
    assert meta["cluster"]["workers"] == 1 and meta["cluster"]["memory_limit"] == 10**9
    pd.testing.assert_frame_equal(pd.read_parquet(out / "estimators" / "cs_never.parquet"),
                                  pd.read_parquet(ref_out / "estimators" / "cs_never.parquet"), check_exact=True)


def test_with_overrides_validates_again(example_spec: dict[str, Any]) -> None:
    job = parse_job({"data": {"source": "mpdta"}, "estimators": [{"kind": "att_gt"}]})
    sim = with_overrides(job, data="simulate")
    assert sim.data.source == "simulate" and sim.data.simulate is not None  # defaults filled in
    with pytest.raises(SpecError, match=r"data: name the column\(s\)"):
        with_overrides(job, data="panel.parquet")  # mpdta's columns are implicit; a file needs them
    named = with_overrides(parse_job(example_spec), data="panel.parquet", out="o", profile="slurm")
    assert (named.data.source, named.output, named.cluster.profile) == ("panel.parquet", "o", "slurm")


# --------------------------------------------------------------------------------------------
# spec errors name the field
# --------------------------------------------------------------------------------------------
def _base() -> dict[str, Any]:
    return {"name": "t", "data": {"source": "mpdta"}, "estimators": [{"kind": "att_gt"}]}


@pytest.mark.parametrize(("patch", "field"), [
    (lambda j: j.update(outptu="x"), "outptu: unknown key"),
    (lambda j: j["data"].update(sourc="mpdta"), "data.sourc: unknown key"),
    (lambda j: j["estimators"][0].update(options={"contol_group": "never_treated"}), "contol_group"),
    (lambda j: j["estimators"][0].update(kind="att_gtt"), "estimators.0.kind"),
    (lambda j: j["estimators"][0].update(options={"seed": 3}), "set in the `data` / `inference` sections"),
    (lambda j: j.update(inference={"n_boot": 1}), "inference.n_boot"),
    (lambda j: j.update(cluster={"profil": "local"}), "cluster.profil: unknown key"),
    (lambda j: j.update(data={"source": "panel.csv", "unit": "id"}), "['time', 'outcome', 'group']"),
])
def test_spec_errors_name_the_field(patch, field: str) -> None:
    job = _base()
    patch(job)
    with pytest.raises(SpecError) as err:
        parse_job(job)
    assert field in str(err.value)
    if "contol_group" in field:
        assert "estimators.0" in str(err.value) and "control_group" in str(err.value)  # lists the valid ones


def test_bad_data_source_fails_before_any_cluster(tmp_path: Path) -> None:
    job = _base()
    job.update(data={"source": os.fspath(tmp_path / "nowhere.parquet"), **MPDTA_COLS}, output=os.fspath(tmp_path / "o"))
    with pytest.raises(SpecError, match=r"data\.source: .*nowhere\.parquet.* is not 'mpdta', 'simulate'"):
        check_data_source(parse_job(job).data)
    res = _invoke("run", os.fspath(_write(tmp_path / "job.yaml", job)), "--no-progress")
    assert res.exit_code == 1 and "data.source" in res.output
    assert "dashboard" not in res.output and not (tmp_path / "o").exists()  # no cluster, no folder


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_missing_columns_name_the_role(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"mpdta.{fmt}"
    df = dte_dask.datasets.load_mpdta()
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path)
    job = _base()
    job["data"] = {"source": os.fspath(path), **MPDTA_COLS, "outcome": "lemp2", "covariates": ["lpop", "age"]}
    job["output"] = os.fspath(tmp_path / "o")
    with pytest.raises(SpecError) as err:
        check_data_source(parse_job(job).data)
    msg = str(err.value)
    assert "data.outcome: column 'lemp2' not found" in msg
    assert "data.covariates: column 'age' not found" in msg and "column 'lpop' not found" not in msg
    assert "countyreal" in msg  # lists the available columns
    res = _invoke("run", os.fspath(_write(tmp_path / "job.yaml", job)), "--no-progress")
    assert res.exit_code == 1 and "data.outcome" in res.output and not (tmp_path / "o").exists()


def test_simulated_and_mpdta_columns_are_checked() -> None:
    check_data_source(parse_job({"data": {"source": "simulate", "simulate": {"units": 100, "preset": "medical"},
                                          "covariates": ["age", "bmi", "female"]},
                                 "estimators": [{"kind": "att_gt"}]}).data)
    with pytest.raises(SpecError, match=r"data\.covariates: column 'lpop' not found"):
        check_data_source(parse_job({"data": {"source": "simulate", "covariates": ["lpop"]},
                                     "estimators": [{"kind": "att_gt"}]}).data)
    with pytest.raises(SpecError, match=r"(?s)in the bundled mpdta.*data\.outcome: column 'sbp' not found"):
        check_data_source(parse_job({"data": {"source": "mpdta", "outcome": "sbp"},
                                     "estimators": [{"kind": "att_gt"}]}).data)


def test_cli_prints_our_warnings_as_one_line(monkeypatch) -> None:
    """A trimmed stacked-DiD event (a DteDaskWarning) reaches the terminal as ``warning: ...``, not as
    the file, line and source of the code that raised it; other warnings keep Python's format."""
    import warnings

    from dte_dask.cli import format_warning
    from dte_dask.exceptions import DteDaskWarning

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    assert _invoke("report", "--help").exit_code == 0  # the group's callback installs the format
    assert warnings.formatwarning is format_warning
    msg = "stacked_did: trimmed adoption events 4 (its window is not inside the panel's periods 1..24)"
    assert warnings.formatwarning(DteDaskWarning(msg), DteDaskWarning, "/x/runner.py", 91, "return fn()") == \
        f"warning: {msg}\n"
    plain = warnings.formatwarning(UserWarning("other"), UserWarning, "/x/mod.py", 7, "f()")
    assert plain.startswith("/x/mod.py:7: UserWarning: other")
