"""``dte-dask submit``: the batch script (no Slurm needed), the shipped medical example, and a
real submission to the single-node Slurm of ``.ci/services.sh start`` (marked ``slurm``,
skipped with the reason when it is not running).

The real submission runs the mpdta job with the ``local`` profile inside a 1-CPU allocation,
waits for it (``squeue``/``scontrol``) and checks that its results equal ``dte_dask.att_gt``
called directly.
"""
from __future__ import annotations

import os
import shutil
import time
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
from dte_dask.jobs.spec import parse_job
from dte_dask.jobs.submit import (
    FINISHED_OK,
    SlurmOptions,
    SubmitError,
    batch_script,
    submit_job,
    wait_for_job,
)

pytestmark = [pytest.mark.filterwarnings("ignore:Port 8787 is already in use")]

ROOT = Path(__file__).resolve().parents[1]
MPDTA_EXAMPLE = ROOT / "examples" / "jobs" / "mpdta_local.yaml"
MEDICAL_EXAMPLE = ROOT / "examples" / "jobs" / "medical_slurm_numa.yaml"
N_BOOT = 99
MPDTA_COLS = dict(outcome="lemp", unit="countyreal", time="year", group="first_treat")


def _mpdta_job(out: Path) -> dict[str, Any]:
    job = yaml.safe_load(MPDTA_EXAMPLE.read_text())
    job["estimators"] = job["estimators"][:1]
    job["inference"]["n_boot"] = N_BOOT
    job["cluster"]["overrides"] = {"n_workers": 1, "threads_per_worker": 1, "dashboard_address": "127.0.0.1:0"}
    job["output"] = os.fspath(out)
    return job


def _available(job: dict[str, Any]) -> dict[str, Any]:
    """The job without estimators this version of dte_dask does not have (yet)."""
    job = dict(job)
    job["estimators"] = [e for e in job["estimators"] if hasattr(dte_dask, e["kind"])]
    return job


# --------------------------------------------------------------------------------------------
# the batch script (no Slurm needed)
# --------------------------------------------------------------------------------------------
def test_script_has_directives_and_runs_the_job(tmp_path: Path) -> None:
    job = parse_job(_mpdta_job(tmp_path / "res"))
    opts = SlurmOptions(partition="debug", time="01:30:00", cpus=8, mem="32G", account="proj1",
                        directives=("--qos=high", "#SBATCH --exclusive", "-N 1"),
                        setup=("module load python/3.11", "source venv/bin/activate"), python="/opt/py/bin/python")
    text = batch_script(job, profile="slurm", options=opts, workdir=tmp_path, source="jobs/mpdta.yaml")
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for d in ("--job-name=dte-mpdta", f"--output={tmp_path / 'res' / 'slurm-%j.out'}", f"--chdir={tmp_path}",
              "--partition=debug", "--time=01:30:00", "--cpus-per-task=8", "--mem=32G", "--account=proj1",
              "--qos=high", "--exclusive", "-N 1"):
        assert f"#SBATCH {d}" in lines, d
    # every directive comes before the first command (sbatch stops reading them there)
    first_cmd = next(i for i, ln in enumerate(lines[1:], 1) if ln and not ln.startswith("#"))
    assert max(i for i, ln in enumerate(lines) if ln.startswith("#SBATCH")) < first_cmd
    assert lines.index("module load python/3.11") < lines.index("source venv/bin/activate")
    run = next(ln for ln in lines if " run " in ln and ln.startswith("/opt/py/bin/python"))
    assert "from dte_dask.cli import main" in run
    assert f"run {tmp_path / 'res' / 'mpdta.job.yaml'} --profile slurm --out {tmp_path / 'res'} --no-progress" in run
    assert "set -euo pipefail" in lines


def test_dry_run_prints_the_script_and_writes_nothing(tmp_path: Path) -> None:
    job = _mpdta_job(tmp_path / "res")
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    # the job's LocalCluster overrides do not fit a Slurm profile: refused before anything is written
    res = CliRunner().invoke(main, ["submit", os.fspath(job_file), "--profile", "slurm", "--dry-run"])
    assert res.exit_code == 1 and "unknown key(s): cluster.dashboard_address" in res.output
    del job["cluster"]["overrides"]
    job_file.write_text(yaml.safe_dump(job))
    res = CliRunner().invoke(main, ["submit", os.fspath(job_file), "--profile", "slurm", "-p", "short",
                                    "-t", "10", "-c", "2", "--mem", "4G", "-S", "--qos=test", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("#!/bin/bash\n")
    for d in ("--partition=short", "--time=10", "--cpus-per-task=2", "--mem=4G", "--qos=test"):
        assert f"#SBATCH {d}\n" in res.output
    assert "--profile slurm" in res.output and "submitted" not in res.output
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"time": "ten minutes"}, "time"),
    ({"mem": "4 GB"}, "mem"),
    ({"cpus": 0}, "cpus"),
    ({"partition": "a b"}, "partition"),
    ({"directives": ("qos=high",)}, "sbatch directive"),
    ({"directives": ("--qos=x\nrm -rf ~",)}, "sbatch directive"),
    ({"setup": ("a\nb",)}, "setup"),
])
def test_bad_options_are_refused(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError, match=field):
        SlurmOptions(**kwargs)


def test_cli_refuses_bad_profile_and_missing_sbatch(tmp_path: Path) -> None:
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(_mpdta_job(tmp_path / "res")))
    res = CliRunner().invoke(main, ["submit", os.fspath(job_file), "--profile", "no-such-profile"])
    assert res.exit_code == 1 and "no cluster profile named 'no-such-profile'" in res.output
    with pytest.raises(SubmitError, match="not on PATH"):
        submit_job(parse_job(_mpdta_job(tmp_path / "res")), sbatch="no-such-sbatch-here")
    assert not (tmp_path / "res").exists()


# --------------------------------------------------------------------------------------------
# the shipped medical example
# --------------------------------------------------------------------------------------------
def test_medical_example_validates() -> None:
    raw = yaml.safe_load(MEDICAL_EXAMPLE.read_text())
    job = parse_job(_available(raw))
    assert job.data.source == "simulate" and job.data.simulate is not None
    assert job.data.simulate.units == 2_800_000 and job.data.simulate.preset == "medical"
    assert job.data.covariates == ["age", "bmi", "female"]
    assert job.cluster.profile == "slurm-numa"
    cs = [e for e in job.estimators if e.kind == "att_gt"]
    assert len(cs) == 1 and cs[0].options["est_method"] == "dr"
    kinds = {e["kind"] for e in raw["estimators"]}
    assert {"att_gt", "event_study", "stacked_did"} <= kinds
    for kind in ("event_study", "stacked_did"):
        if hasattr(dte_dask, kind):
            assert kind in {e.kind for e in job.estimators}
    from dte_dask.cluster.profiles import resolve_profile

    prof = resolve_profile(job.cluster.profile, **job.cluster.overrides)
    assert prof.kind == "slurm" and prof.spec.cluster.jobs == 4 and prof.spec.cluster.numactl == "always"


def test_medical_example_runs_small(tmp_path: Path) -> None:
    """The example's estimators and options run (on 20k units, a local worker, short bootstrap)."""
    from dte_dask.jobs.runner import run_job

    raw = _available(yaml.safe_load(MEDICAL_EXAMPLE.read_text()))
    raw["data"]["simulate"]["units"] = 20_000
    raw["inference"]["n_boot"] = 49
    raw["cluster"] = {"profile": "local", "performance_report": False,
                      "overrides": {"n_workers": 1, "threads_per_worker": 1, "dashboard_address": "127.0.0.1:0"}}
    raw["output"] = os.fspath(tmp_path / "res")
    raw["report"] = False
    summary = run_job(parse_job(raw), progress=False, echo=lambda s: None)
    assert set(summary["estimators"]) == {e["name"] for e in raw["estimators"]} | {
        f"{e['name']}.{a}" for e in raw["estimators"] for a in e.get("aggregations", [])}
    cs = summary["estimators"]["cs_dr"]["overall"]
    assert -6 < cs["att"] < -2  # the simulated effect plateau is -4 mmHg
    assert summary["metadata"]["panel_shape"]["units"] == 20_000


def test_medical_example_dry_run(tmp_path: Path) -> None:
    job_file = tmp_path / "medical.yaml"
    job_file.write_text(yaml.safe_dump(_available(yaml.safe_load(MEDICAL_EXAMPLE.read_text()))))
    res = CliRunner().invoke(main, ["submit", os.fspath(job_file), "--profile", "slurm-numa", "-t", "02:00:00",
                                    "--mem", "16G", "--out", os.fspath(tmp_path / "res"), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "--profile slurm-numa" in res.output and "#SBATCH --time=02:00:00" in res.output


# --------------------------------------------------------------------------------------------
# a real submission (single-node Slurm of .ci/services.sh)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm_service():
    try:
        from tests.test_real_clusters import _slurm_env
    except ImportError:  # tests/ is not a package: pytest puts this directory on sys.path
        from test_real_clusters import _slurm_env
    env, reason = _slurm_env()
    if reason:
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield


@pytest.mark.slurm
def test_submit_runs_on_slurm_and_matches_direct_run(slurm_service, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "res"
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(_mpdta_job(out)))
    t0 = time.time()
    res = CliRunner().invoke(main, ["submit", os.fspath(job_file), "--profile", "local", "-c", "1",
                                    "--mem", "2G", "-t", "00:10:00", "--parsable"])
    assert res.exit_code == 0, res.output
    job_id = res.stdout.strip()  # --parsable: only the id on stdout (notes go to stderr)
    assert job_id.isdigit(), res.output
    state = wait_for_job(job_id, timeout=240, poll=1.0)
    log = out / f"slurm-{job_id}.out"
    log_text = log.read_text() if log.exists() else "<no log>"
    assert state in (FINISHED_OK, "UNKNOWN"), f"job {job_id} ended {state}:\n{log_text}"
    assert (out / "summary.json").exists() and (out / "summary.json").stat().st_mtime >= t0, log_text
    assert "dashboard: http://127.0.0.1:" in log_text and f"job {job_id} finished" in log_text
    assert (out / "mpdta.sbatch").exists() and (out / "mpdta.job.yaml").exists()
    assert (out / "dask-report.html").exists() and (out / "report.html").exists()

    ref = dte_dask.att_gt(dte_dask.datasets.load_mpdta(), **MPDTA_COLS, control_group="never_treated",
                          est_method="dr", bootstrap=True, n_boot=N_BOOT,
                          seed=yaml.safe_load(MPDTA_EXAMPLE.read_text())["inference"]["seed"]).to_frame()
    got = pd.read_parquet(out / "estimators" / "cs_never.parquet")
    for col in ref.columns:
        np.testing.assert_array_equal(got[col].to_numpy(), ref[col].reset_index(drop=True).to_numpy(), err_msg=col)


@pytest.mark.slurm
def test_sbatch_error_is_reported(slurm_service, tmp_path: Path) -> None:
    if shutil.which("sbatch") is None:
        pytest.skip("sbatch not on PATH")
    job = parse_job(_mpdta_job(tmp_path / "res"))
    with pytest.raises(SubmitError, match="sbatch refused"):
        submit_job(job, profile="local", options=SlurmOptions(partition="no-such-partition"))
