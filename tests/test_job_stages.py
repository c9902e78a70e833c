"""A job's stages and their share of the wall time (``summary.json``'s ``metadata.stages`` and the
table ``dte-dask run`` prints): the shares sum to 1, every estimator of the job is a stage, the
estimators' multiplier bootstrap is a stage of its own, and the bootstrap's wall time is the union
of its tasks' compute intervals and of the draw spans the tasks report as worker events (checked
on constructed records with known union).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from dte_dask.diagnose.monitor import busy_seconds
from dte_dask.jobs.stages import StageClock, format_stages


def _rec(key: str, *spans: tuple[float, float]) -> dict[str, Any]:
    return {"key": key, "startstops": [{"action": "compute", "start": a, "stop": b} for a, b in spans]}


def test_busy_seconds_is_the_union_of_intervals() -> None:
    tasks = [_rec("mboot-abc-0", (0.0, 2.0)), _rec("mboot-abc-1", (1.0, 3.0)),  # overlap: [0, 3]
             _rec("mboot-merge-7", (5.0, 6.0)), _rec("mboot-abc-2", (5.5, 5.8)),  # nested: [5, 6]
             _rec("es-scores-9", (0.0, 10.0)),  # not a bootstrap task
             {"key": "mboot-x", "startstops": [{"action": "transfer", "start": 10.0, "stop": 20.0}]}]
    assert busy_seconds(tasks) == pytest.approx(4.0)
    assert busy_seconds([]) == 0.0
    # draw spans reported by the tasks that form influence functions: [2.5, 4] joins [0, 3] -> [0, 4]
    assert busy_seconds(tasks, spans=[(2.5, 4.0), (7.0, 7.5)]) == pytest.approx(5.5)


def test_clock_shares_sum_to_one_and_split_the_bootstrap() -> None:
    clock = StageClock()
    with clock.stage("load"):
        time.sleep(0.02)
    with clock.stage("es", "estimator"):
        time.sleep(0.04)
    clock.bootstrap["es"] = 0.01
    rows = clock.table()
    assert [r["name"] for r in rows] == ["load", "es", "es.bootstrap", "other"]
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    by = {r["name"]: r for r in rows}
    assert by["es.bootstrap"]["seconds"] == 0.01 and by["es.bootstrap"]["estimator"] == "es"
    assert by["es"]["seconds"] + 0.01 >= 0.04 and by["load"]["seconds"] >= 0.02
    text = format_stages(rows)
    assert "es.bootstrap" in text and "100.0%" in text


@pytest.fixture(scope="module")
def job_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[str], Path]:
    from distributed import Client, LocalCluster

    from dte_dask.jobs.runner import run_job
    from dte_dask.jobs.spec import parse_job

    out = tmp_path_factory.mktemp("stages") / "out"
    job = parse_job({"name": "stages", "data": {"source": "mpdta", "unit": "countyreal", "time": "year",
                                                "outcome": "lemp", "group": "first_treat"},
                     "estimators": [{"kind": "att_gt", "name": "cs"}, {"kind": "event_study", "name": "es"}],
                     "inference": {"bootstrap": True, "n_boot": 99, "seed": 3},
                     "output": str(out), "report": False, "cluster": {"performance_report": False}})
    lines: list[str] = []
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as c, Client(c) as cl:
        summary = run_job(job, client=cl, progress=False, echo=lines.append)
    return summary, lines, out


def test_summary_stages(job_run: tuple[dict[str, Any], list[str], Path]) -> None:
    summary, lines, out = job_run
    saved = json.loads((out / "summary.json").read_text())
    stages = saved["metadata"]["stages"]
    assert stages == summary["metadata"]["stages"]
    names = [s["name"] for s in stages]
    assert names[:2] == ["load", "cs"] and {"es", "checks", "save", "other"} <= set(names)
    assert sum(s["share"] for s in stages) == pytest.approx(1.0, abs=1e-9)
    assert all(s["seconds"] >= 0 and 0 <= s["share"] <= 1 for s in stages)
    # both draw their multipliers inside the tasks that form Psi / the scores, which report the
    # spans: a bootstrap stage beside each estimator
    boot = {s["name"]: s for s in stages if s["kind"] == "bootstrap"}
    assert set(boot) == {"es.bootstrap", "cs.bootstrap"}
    diag = {s["name"]: s for s in saved["diagnosis"]["stages"]}
    for name in ("es", "cs"):
        assert boot[f"{name}.bootstrap"]["seconds"] > 0 and boot[f"{name}.bootstrap"]["estimator"] == name
        assert boot[f"{name}.bootstrap"]["seconds"] == pytest.approx(diag[name]["bootstrap_s"])
    # the stages' seconds add up to the job's wall time, which covers the timed load and estimators
    total = sum(s["seconds"] for s in stages)
    timings = saved["metadata"]["job_timings"]
    assert total >= timings["load"] + timings["cs"] + timings["es"]
    table = next(ln for ln in lines if ln.startswith("job stage"))
    assert "es.bootstrap" in table and "share" in table and "total" in table


def test_a_stage_whose_client_closes_fails_at_once() -> None:
    """A cancelled service job closes its connection while a stage runs: the stage's error leaves
    at once, unmeasured (the task stream is not asked for through the closed connection, which
    used to wait for its 60 s timeout), and the stages before it keep their figures."""
    import dask
    from distributed import Client, LocalCluster

    from dte_dask.diagnose.monitor import RunMonitor

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        client = Client(cluster)
        with RunMonitor(client, interval=0.05) as mon:
            with mon.stage("load"):
                dask.compute(dask.delayed(sum)([1, 2]))
            t0 = time.perf_counter()
            with pytest.raises(RuntimeError, match="cancelled"), mon.stage("att_gt"):
                client.close()
                raise RuntimeError("cancelled")
            assert time.perf_counter() - t0 < 10
        assert [s.name for s in mon.stages] == ["load"]


def test_a_task_tells_its_bootstrap_spans_in_one_event(mpdta) -> None:
    """Tasks that draw RNG block by RNG block (the regressions' scores, CS with covariates) tell
    the scheduler their spans in one event per task, not one per block (each event wakes the
    worker's event loop), and the job's stage table reads every span."""
    from distributed import Client, LocalCluster

    import dte_dask
    from dte_dask.diagnose.monitor import RunMonitor, busy_seconds
    from dte_dask.inference.bootstrap import EVENT

    panel = dte_dask.load_panel(mpdta, unit="countyreal", time="year", outcome="lemp", group="first_treat",
                                covariates=["lpop"], npartitions=2, rng_block_size=64)
    blocks = -(-mpdta["countyreal"].nunique() // 64)
    fits = {"es": lambda: dte_dask.event_study(panel, bootstrap=True, n_boot=49, seed=1),
            "cs": lambda: dte_dask.att_gt(panel, covariates=["lpop"], bootstrap=True, n_boot=49, seed=1)}
    for name, fit in fits.items():
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as c, \
                Client(c) as cl:
            with RunMonitor(cl, interval=0.05) as mon:
                with mon.stage(name):
                    fit()
            events = [m for _, m in cl.get_events(EVENT)]
            assert len(events) == panel.npartitions, name
            spans = [s for m in events for s in m["spans"]]
            assert len(spans) == blocks, name
            assert all(a <= b for a, b in spans)
            assert mon.stages[0].bootstrap_s >= busy_seconds((), spans=spans) > 0  # and the merges' tasks
