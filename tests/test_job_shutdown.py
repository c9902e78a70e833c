"""A job that starts its own cluster shuts it down while the driver writes the results.

The cluster of these tests is an in-process LocalCluster put in place of :func:`dte_dask.cluster.connect`;
its shutdown records whether the report had begun (it waits for that, up to 30 s: were the shutdown
done before the save and the report, as it used to be, the report could not begin while it waits),
and ``run_job`` must not return before the shutdown is over, nor leave a cluster behind when a stage
fails.
"""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import pytest

import dte_dask.cluster
import dte_dask.report
from dte_dask.jobs import runner
from dte_dask.jobs.runner import run_job
from dte_dask.jobs.spec import parse_job


def _job(out: Path) -> Any:
    return parse_job({"name": "shutdown", "data": {"source": "mpdta"}, "estimators": [{"kind": "att_gt", "name": "cs"}],
                      "inference": {"bootstrap": True, "n_boot": 99, "seed": 3}, "output": str(out),
                      "cluster": {"performance_report": False}})


@pytest.fixture
def cluster_events(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """``connect`` and ``write_report`` replaced by recording versions; the events in order."""
    from distributed import Client, LocalCluster

    events: list[Any] = []
    report_began = threading.Event()

    @contextlib.contextmanager
    def connect(profile: str, **overrides: Any):
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None)
        client = Client(cluster)
        try:
            yield client
        except BaseException:
            client.close()
            cluster.close()
            events.append("closed after an error")
            raise
        events.append(("shutdown began", threading.current_thread().name))
        began = report_began.wait(30)
        client.close()
        cluster.close()
        events.append(("closed", began))
        if overrides.get("fail_close"):
            raise RuntimeError("the scheduler did not shut down")

    real_report = dte_dask.report.write_report

    def write_report(*args: Any, **kwargs: Any) -> Any:
        report_began.set()
        events.append("report began")
        out = real_report(*args, **kwargs)
        events.append("report written")
        return out

    monkeypatch.setattr(dte_dask.cluster, "connect", connect)
    monkeypatch.setattr(dte_dask.report, "write_report", write_report)
    return events


def test_the_cluster_shuts_down_while_the_report_is_written(cluster_events: list[Any], tmp_path: Path) -> None:
    summary = run_job(_job(tmp_path / "out"), progress=False, echo=lambda line: None)
    assert cluster_events[0][0] == "shutdown began" and cluster_events[0][1] != threading.current_thread().name
    assert ("closed", True) in cluster_events  # the report began while the cluster was shutting down
    assert "report written" in cluster_events and (tmp_path / "out" / "report.html").exists()
    stages = {s["name"]: s for s in summary["metadata"]["stages"]}
    assert {"cluster_start", "load", "cs", "save", "report", "other"} <= set(stages)
    assert abs(sum(s["share"] for s in stages.values()) - 1) < 1e-9
    assert cluster_events[-1] in ("report written", ("closed", True))  # both over before run_job returned


def test_an_error_in_the_shutdown_is_raised_after_the_results_are_written(cluster_events: list[Any], tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    job = _job(tmp_path / "out")
    job = job.model_copy(update={"cluster": job.cluster.model_copy(update={"overrides": {"fail_close": True}})})
    with pytest.raises(RuntimeError, match="did not shut down"):
        run_job(job, progress=False, echo=lambda line: None)
    assert (tmp_path / "out" / "report.html").exists() and (tmp_path / "out" / "summary.json").exists()


def test_a_failed_stage_closes_the_cluster_before_the_error_leaves(cluster_events: list[Any], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("the estimator failed")

    monkeypatch.setattr(runner, "fit_estimator", broken)
    with pytest.raises(ValueError, match="the estimator failed"):
        run_job(_job(tmp_path / "out"), progress=False, echo=lambda line: None)
    assert cluster_events == ["closed after an error"]
