"""Run diagnosis: each class on synthetic metrics, then on constructed runs of a real LocalCluster
(tiny tasks -> scheduler-bound; a memory limit below the data -> spilling; one overloaded worker
-> imbalanced; CPU-heavy even work -> compute-bound), and in a job's summary.json."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from dte_dask.diagnose.classify import StageMetrics, classify_stage, diagnose_run, format_diagnosis

pytestmark = [pytest.mark.filterwarnings("ignore:Port 8787 is already in use")]
MiB = 2**20


def _m(**kw) -> StageMetrics:  # type: ignore[no-untyped-def]
    base = dict(name="s", wall_s=10.0, workers=2, threads=2, cpu_s=18.0, n_tasks=40, task_s=19.0,
                median_task_s=0.4, busy_s_per_worker={"a": 9.5, "b": 9.5}, peak_worker_memory=100 * MiB,
                memory_limit=1000 * MiB)
    base.update(kw)
    return StageMetrics(**base)


@pytest.mark.parametrize(("kw", "kind", "advice"), [
    ({}, "compute-bound", "add cores"),
    ({"spilled_bytes": 300 * MiB}, "memory-bound", "memory_limit"),
    ({"peak_worker_memory": 900 * MiB}, "memory-bound", "memory_limit"),
    ({"n_tasks": 5000, "median_task_s": 0.002, "task_s": 6.0}, "scheduler-bound", "fewer, larger partitions"),
    ({"busy_s_per_worker": {"a": 16.0, "b": 3.0}}, "imbalanced", "partitions are of similar size"),
    ({"cpu_s": 3.0}, "io-bound", "faster storage"),
    ({"cpu_s": 3.0, "host_busy": 0.4, "host_iowait": 0.5}, "io-bound", "faster storage"),
    ({"cpu_s": 3.0, "host_busy": 0.98}, "cpu-contended", "dedicated cores"),
    ({"task_s": 2.0, "cpu_s": 2.0, "busy_s_per_worker": {"a": 1.0, "b": 1.0}}, "idle", "nothing to tune"),
])
def test_classes_on_synthetic_metrics(kw, kind, advice) -> None:  # type: ignore[no-untyped-def]
    f = classify_stage(_m(**kw))
    assert f.kind == kind, f
    assert advice in f.advice


def test_too_few_partitions_for_the_slots() -> None:
    f = classify_stage(_m(busy_s_per_worker={"a": 18.0, "b": 0.0}, partitions=1))
    assert f.kind == "imbalanced" and "1 partition(s) for 2 compute slots" in f.evidence
    assert "data.npartitions: 2" in f.advice


def test_memory_advice_states_the_numbers() -> None:
    f = classify_stage(_m(spilled_bytes=2 * 2**30, peak_worker_memory=950 * MiB))
    assert "spilled 2.0 GiB" in f.evidence and "950.0 MiB" in f.evidence and "1000.0 MiB limit" in f.evidence


def test_run_class_core_hours_and_cost() -> None:
    stages = [_m(name="load", wall_s=2.0), _m(name="att_gt", wall_s=30.0, spilled_bytes=1)]
    d = diagnose_run(stages, total_wall_s=40.0, price_per_core_hour=0.05)
    assert d["class"] == "memory-bound" and d["bottleneck_stage"] == "att_gt"
    assert d["core_hours"] == pytest.approx(40.0 * 2 / 3600)
    assert [s["share"] for s in d["stages"]] == pytest.approx([2.0 / 40, 30.0 / 40])
    assert d["cost"] == pytest.approx(40.0 * 2 / 3600 * 0.05)
    text = format_diagnosis(d)
    assert "core-hours" in text and "att_gt: workers spilled" in text
    with pytest.raises(ValueError, match="price_per_core_hour"):
        diagnose_run(stages, price_per_core_hour=-1.0)


# ---------------------------------------------------------------------------------- real runs
def _noop(i: int) -> int:
    return i


def _burn(seconds: float) -> float:
    import time as _t

    t0 = _t.process_time()
    x = 0.0
    while _t.process_time() - t0 < seconds:
        x += sum(i * i for i in range(2000))
    return x


def _block(i: int):  # type: ignore[no-untyped-def]
    import numpy as _np

    return _np.full(4_000_000, float(i))  # 32 MB


@pytest.fixture()
def cluster_client():  # type: ignore[no-untyped-def]
    from distributed import Client, LocalCluster

    def make(**kw):  # type: ignore[no-untyped-def]
        kw = {"n_workers": 2, "threads_per_worker": 1, "dashboard_address": None, "processes": True, **kw}
        cluster = LocalCluster(**kw)
        client = Client(cluster)
        made.append((client, cluster))
        return client

    made: list = []
    yield make
    for client, cluster in made:
        client.close()
        cluster.close()


def test_tiny_tasks_are_scheduler_bound(cluster_client) -> None:  # type: ignore[no-untyped-def]
    from dte_dask.diagnose import RunMonitor

    client = cluster_client()
    with RunMonitor(client) as mon:
        with mon.stage("tiny"):
            client.gather(client.map(_noop, range(2000), pure=False))
    (s,) = mon.stages
    assert s.n_tasks == 2000 and s.workers == 2 and s.threads == 2
    f = classify_stage(s)
    assert f.kind == "scheduler-bound", (f, s)


def test_memory_limit_below_the_data_spills(cluster_client) -> None:  # type: ignore[no-untyped-def]
    from dte_dask.diagnose import RunMonitor

    client = cluster_client(n_workers=1, memory_limit="300MB")
    with RunMonitor(client, interval=0.1) as mon:
        with mon.stage("hold"):
            futures = client.map(_block, range(12), pure=False)  # 384 MB held > 300 MB limit
            client.gather(futures[-1:])
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                spilled = sum(c["spilled_bytes"] for c in client.run(
                    __import__("dte_dask.diagnose.monitor", fromlist=["worker_counters"]).worker_counters).values())
                if spilled > 0:
                    break
                time.sleep(0.2)
        del futures
    (s,) = mon.stages
    assert s.spilled_bytes > 32 * MiB, s
    assert classify_stage(s).kind == "memory-bound"


def test_one_overloaded_worker_is_imbalanced(cluster_client) -> None:  # type: ignore[no-untyped-def]
    from dte_dask.diagnose import RunMonitor

    client = cluster_client()
    a, b = sorted(client.scheduler_info()["workers"])
    with RunMonitor(client) as mon:
        with mon.stage("skewed"):
            futures = [client.submit(_burn, 0.3, workers=[a], pure=False) for _ in range(8)]
            futures.append(client.submit(_burn, 0.3, workers=[b], pure=False))
            client.gather(futures)
    (s,) = mon.stages
    assert s.busy_s_per_worker[a] > 2 * s.busy_s_per_worker[b], s
    f = classify_stage(s)
    assert f.kind == "imbalanced" and a in f.evidence, (f, s)


def test_job_summary_has_the_diagnosis(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from distributed import Client, LocalCluster

    from dte_dask.jobs.runner import run_job
    from dte_dask.jobs.spec import parse_job

    job = parse_job({"name": "diag", "data": {"source": "mpdta", "unit": "countyreal", "time": "year",
                                              "outcome": "lemp", "group": "first_treat"},
                     "estimators": [{"kind": "att_gt"}], "inference": {"bootstrap": False},
                     "output": str(tmp_path / "out"), "report": False,
                     "cluster": {"performance_report": False}})
    lines: list[str] = []
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as c, Client(c) as cl:
        summary = run_job(job, client=cl, progress=False, echo=lines.append, price_per_core_hour=0.1)
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    diag = saved["diagnosis"]
    assert [s["name"] for s in diag["stages"]] == ["load", "att_gt"]
    assert diag["threads"] == 2 and diag["core_hours"] > 0 and diag["cost"] == pytest.approx(diag["core_hours"] * 0.1)
    assert all(s["finding_kind"] in {"compute-bound", "memory-bound", "scheduler-bound", "imbalanced", "io-bound",
                                     "cpu-contended", "idle"} for s in diag["stages"])
    assert all(0 <= s["host_busy"] <= 1 for s in diag["stages"])
    assert summary["diagnosis"]["class"] == diag["class"]
    assert any("core-hours" in ln for ln in lines)
    assert np.isfinite(diag["wall_s"])
    from dte_dask.report import write_report

    write_report(tmp_path / "out", tmp_path / "report.html", title="diag")
    text = (tmp_path / "report.html").read_text()
    assert "Run diagnosis" in text and "core-hours" in text and diag["stages"][1]["finding_kind"] in text


def test_cli_run_prints_the_diagnosis_and_cost(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from dte_dask.cli import main

    job = tmp_path / "job.yaml"
    job.write_text(
        "name: diag\n"
        "data: {source: mpdta, unit: countyreal, time: year, outcome: lemp, group: first_treat}\n"
        "estimators: [{kind: att_gt}]\n"
        "inference: {bootstrap: false}\n"
        f"output: {tmp_path / 'out'}\n"
        "report: false\n"
        "cluster: {profile: local, overrides: {n_workers: 1, threads_per_worker: 1, processes: false, "
        "dashboard_address: null}, performance_report: false}\n")
    res = CliRunner().invoke(main, ["run", str(job), "--no-progress", "--price-per-core-hour", "0.5"])
    assert res.exit_code == 0, res.output
    assert "core-hours" in res.output and "cost" in res.output
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["diagnosis"]["price_per_core_hour"] == 0.5
