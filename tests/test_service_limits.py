"""Hardening of the job service, piece by piece (no HTTP server; seconds in all).

Data paths are refused lexically with one answer for every refused path; field sizes, windows
and the job-size estimate are checked before a job is queued; the runner stops at stage and
file boundaries; the executor enforces each job's wall-clock limit and memory budget and
removes a stopped job's partial outputs; retention purges old finished jobs with their files.
"""
from __future__ import annotations

import os
import time
import types
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from dte_dask.jobs.spec import JobSpec
from dte_dask.service.limits import check_size, check_sizes, estimate, panel_shape
from dte_dask.service.paths import confine_source
from dte_dask.service.settings import Limits
from dte_dask.service.validate import SpecProblem

COLS = {"unit": "countyreal", "time": "year", "outcome": "lemp", "group": "first_treat"}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dte_dask.datasets import load_mpdta

    base = tmp_path_factory.mktemp("paths")
    root = (base / "root").resolve()
    root.mkdir()
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("a,b\n1,2\n")
    (root / "escape.csv").symlink_to(outside / "secret.csv")
    (root / "linkdir").symlink_to(outside)
    df = load_mpdta()
    df.to_csv(root / "mpdta.csv", index=False)
    df.to_parquet(root / "mpdta.parquet", index=False, row_group_size=700)
    return root


def _refusal(source: str, roots: tuple[Path, ...]) -> tuple[int, str, tuple, str]:
    with pytest.raises(SpecProblem) as info:
        confine_source(source, roots)
    (err,) = info.value.errors
    return info.value.status, err["msg"], tuple(err["loc"]), err["type"]


# ----------------------------------------------------------------------------- paths (points 3, 4)
def test_every_refused_path_gets_the_same_answer(root: Path) -> None:
    outside = root.parent / "outside"
    refused = ["/", "/usr", "/proc", "/etc/passwd", "/no/such/file", os.fspath(outside / "secret.csv"),
               os.fspath(outside / "missing.csv"), "escape.csv", "*.csv", "linkdir/secret*", "linkdir/nope*",
               "linkdir/secret.csv", "missing.csv", "sub/../mpdta.csv", "~/x.csv", "s3://b/x.parquet",
               os.fspath(root) + "/../outside/secret.csv"]
    answers = {_refusal(src, (root,)) for src in map(str, refused)}
    assert len(answers) == 1, answers  # existing or not, outside or via a link: no oracle
    status, msg, loc, _ = answers.pop()
    assert status == 422 and loc == ("body", "data", "source") and "data roots" in msg
    assert confine_source("mpdta.csv", (root,)) == os.fspath(root / "mpdta.csv")
    assert confine_source(os.fspath(root / "mpdta.csv"), (root,)) == os.fspath(root / "mpdta.csv")
    assert confine_source("*.parquet", (root,)) == os.fspath(root / "*.parquet")


def test_paths_outside_the_roots_never_touch_the_filesystem(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import glob

    from dte_dask.service import paths

    def boom(*a: object, **k: object) -> None:
        raise AssertionError(f"filesystem touched for {a}")

    for mod, name in ((os, "walk"), (os, "stat"), (os, "lstat"), (os, "scandir"), (os, "listdir"),
                      (os.path, "realpath"), (os.path, "exists"), (os.path, "lexists"), (os.path, "isdir"),
                      (glob, "iglob"), (glob, "glob")):
        monkeypatch.setattr(mod, name, boom)
    for src in ("/", "/usr", "/proc/self/environ", "/usr/*/lib*", "/etc/passwd"):
        t0 = time.perf_counter()
        with pytest.raises(SpecProblem):
            paths.confine_source(src, (root,))
        assert time.perf_counter() - t0 < 0.05


# ----------------------------------------------------------------------------- sizes (point 6)
def test_field_sizes_are_bounded() -> None:
    lim = Limits()
    for body, loc in (({"name": "x" * 1_000_000}, ["body", "name"]),
                      ({"data": {"covariates": ["c"] * 5000}}, ["body", "data", "covariates"]),
                      ({"data": {"source": "y" * 10_000}}, ["body", "data", "source"]),
                      ({"estimators": [{"options": {f"k{i}": 1 for i in range(2000)}}]},
                       ["body", "estimators", 0, "options"])):
        with pytest.raises(SpecProblem) as info:
            check_sizes(body, lim)
        assert info.value.errors[0]["loc"] == loc, info.value.errors
    check_sizes({"name": "ok", "data": {"source": "mpdta", "covariates": ["a", "b"]}}, lim)


# ----------------------------------------------------------------------------- windows, estimate (points 1, 2)
def _job(data: dict, *estimators: dict, **inference: object) -> JobSpec:
    return JobSpec.model_validate({"data": data, "estimators": list(estimators), "inference": inference})


@pytest.mark.parametrize("source", ["mpdta", "simulate", "mpdta.csv", "mpdta.parquet"])
def test_windows_without_overlap_are_refused_and_huge_ones_clipped(root: Path, source: str) -> None:
    data = {"source": source} if source in ("mpdta", "simulate") else {"source": source, **COLS}
    path = confine_source(source, (root,))
    job = _job(data, {"kind": "att_gt"}, {"kind": "event_study", "options": {"window": [10**9, 2 * 10**9]}})
    with pytest.raises(SpecProblem) as info:
        check_size(job, Limits(), path)
    assert info.value.errors[0]["loc"] == ["body", "estimators", 1, "options", "window"]
    assert "no overlap" in info.value.errors[0]["msg"]
    huge = _job(data, {"kind": "event_study", "options": {"window": [-10**9, 10**9]}})
    t0 = time.perf_counter()
    warnings = check_size(huge, Limits(max_work=1e9), path)
    assert time.perf_counter() - t0 < 5
    lo, hi = huge.estimators[0].options["window"]
    assert -20 <= lo < 0 <= hi <= 20 and "clipped" in warnings[0]


def test_shapes_from_metadata(root: Path) -> None:
    for source in ("mpdta.csv", "mpdta.parquet"):
        shape = panel_shape(_job({"source": source, **COLS}, {"kind": "att_gt"}), os.fspath(root / source))
        assert shape is not None and shape.units == 500 and shape.periods == 5 and shape.events == (-4, 4)
    mp = panel_shape(_job({"source": "mpdta"}, {"kind": "att_gt"}), "mpdta")
    assert (mp.units, mp.periods, mp.events, mp.cohorts) == (500, 5, (-4, 3), 3)


def test_jobs_above_the_limits_are_refused_with_estimate_and_limit() -> None:
    big = _job({"source": "simulate", "simulate": {"units": 5_000_000, "periods": 10}},
               *[{"kind": "att_gt", "name": f"e{i}"} for i in range(10)], n_boot=100_000)
    with pytest.raises(SpecProblem) as info:
        check_size(big, Limits(max_work=1e13), "simulate")
    msg = info.value.errors[0]["msg"]
    assert "estimated work" in msg and "limit of 1e+13" in msg and "100000 bootstrap draws" in msg
    one_part = _job({"source": "simulate", "npartitions": 1, "simulate": {"units": 2_000_000, "periods": 10}},
                    {"kind": "att_gt"}, bootstrap=False)
    with pytest.raises(SpecProblem) as info:
        check_size(one_part, Limits(max_task_bytes=256 << 20), "simulate")
    assert info.value.errors[0]["loc"] == ["body", "data", "npartitions"]
    assert "256.0 MiB" in info.value.errors[0]["msg"]
    small = _job({"source": "mpdta"}, {"kind": "att_gt"})
    assert check_size(small, Limits(), "mpdta") == []
    shape = panel_shape(small, "mpdta")
    assert estimate(small, shape, {}).work == 500 * 12 * (5 + 999)


# ----------------------------------------------------------------------------- runner: stop between files
def test_runner_stops_between_result_files(tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    from dte_dask.jobs.runner import JobStopped, run_job

    out = tmp_path / "out"
    job = JobSpec.model_validate({
        "data": {"source": "mpdta"}, "output": os.fspath(out), "cluster": {"performance_report": False},
        "estimators": [{"kind": "att_gt", "aggregations": ["simple", "dynamic", "group"]}],
        "inference": {"bootstrap": False}})
    asked: list[bool] = []

    def should_stop() -> bool:  # stop once the first result file is on disk
        asked.append(True)
        return any((out / "estimators").glob("*.csv")) if (out / "estimators").is_dir() else False

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cl, \
            Client(cl) as client, pytest.raises(JobStopped, match="before writing att_gt.simple"):
        run_job(job, client=client, progress=False, echo=lambda m: None, should_stop=should_stop)
    written = sorted(p.name for p in (out / "estimators").iterdir())
    assert "att_gt.csv" in written and not any(n.startswith("att_gt.simple") for n in written), written
    assert not (out / "summary.json").exists() and not (out / "report.html").exists()
    assert len(asked) >= 5  # asked before loading, the estimator, each aggregation, the checks, each file


# ----------------------------------------------------------------------------- executor: limits, cancel
@pytest.fixture(scope="module")
def cluster_client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cl, \
            Client(cl) as client:
        yield client


def _executor(tmp_path: Path, client, run, **kw):  # type: ignore[no-untyped-def]
    from dte_dask.service.executor import JobExecutor
    from dte_dask.service.store import JobStore

    store = JobStore(tmp_path / "jobs.sqlite")
    ex = JobExecutor(store, client, max_concurrent=2, max_queued=10, prepare=lambda row: types.SimpleNamespace(**row), run=run,
                     results_root=tmp_path / "results", watch_interval_s=0.1, **kw)
    ex.start()
    return store, ex


def _add(store, tmp_path: Path, job_id: str) -> Path:  # type: ignore[no-untyped-def]
    d = tmp_path / "results" / job_id
    store.add(job_id, job_id, {}, os.fspath(d))
    return d


def _wait(store, job_id: str, timeout: float = 20) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = store.get(job_id)
        if row["state"] in ("succeeded", "failed", "cancelled", "interrupted"):
            return row
        time.sleep(0.05)
    raise AssertionError(store.get(job_id))


def _writer(results: Path, hold=None):  # type: ignore[no-untyped-def]
    """A job that writes a file every 50 ms until told to stop (and optionally holds data on the cluster)."""
    from dte_dask.jobs.runner import JobStopped

    def run(job, client, should_stop):  # type: ignore[no-untyped-def]
        d = Path(job.results_dir)
        d.mkdir(parents=True)
        kept = hold(client) if hold else None  # noqa: F841 - held on the workers while the job runs
        for i in range(400):
            if should_stop():
                raise JobStopped("stopped")
            (d / f"f{i}.csv").write_text("x\n")
            time.sleep(0.05)
        return {}
    return run


def test_executor_wall_clock_limit_and_cancel_remove_partial_outputs(tmp_path: Path, cluster_client) -> None:
    store, ex = _executor(tmp_path, cluster_client, _writer(tmp_path), job_timeout_s=1.0)
    try:
        timed = _add(store, tmp_path, "a" * 32)
        ex.submit("a" * 32)
        row = _wait(store, "a" * 32)
        assert row["state"] == "failed" and "wall-clock limit of 1 s" in row["error"]
        assert not timed.exists()  # partial outputs removed
        cancelled = _add(store, tmp_path, "b" * 32)
        ex.submit("b" * 32)
        deadline = time.monotonic() + 10
        while not (cancelled.is_dir() and any(cancelled.iterdir())):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        ex.cancel("b" * 32)
        assert _wait(store, "b" * 32)["state"] == "cancelled"
        assert not cancelled.exists()
        time.sleep(0.3)
        assert not cancelled.exists()  # nothing written after the cancel
    finally:
        ex.shutdown(5)
        store.close()


def test_executor_memory_budget(tmp_path: Path, cluster_client) -> None:
    import dask.array as da

    def hold(client):  # type: ignore[no-untyped-def]
        arr = client.persist(da.random.random((1000, 1000), chunks=(250, 1000)))  # 8 MB on the worker
        from distributed import wait

        wait(arr)
        return arr

    store, ex = _executor(tmp_path, cluster_client, _writer(tmp_path, hold), job_memory_bytes=1 << 20)
    try:
        d = _add(store, tmp_path, "c" * 32)
        ex.submit("c" * 32)
        row = _wait(store, "c" * 32)
        assert row["state"] == "failed" and "memory budget of 1048576 bytes" in row["error"], row
        assert not d.exists()
    finally:
        ex.shutdown(5)
        store.close()
    # the same job without a budget runs to the end
    store, ex = _executor(tmp_path / "free", cluster_client, _writer(tmp_path, None))
    try:
        _add(store, tmp_path / "free", "d" * 32)
        ex.submit("d" * 32)
        time.sleep(0.5)
        assert store.get("d" * 32)["state"] == "running"
        ex.cancel("d" * 32)
        assert _wait(store, "d" * 32)["state"] == "cancelled"
    finally:
        ex.shutdown(5)
        store.close()


# ----------------------------------------------------------------------------- retention
def test_retention_purges_old_finished_jobs_and_their_files(tmp_path: Path) -> None:
    from dte_dask.service.retention import Purger, purge
    from dte_dask.service.store import JobStore

    store = JobStore(tmp_path / "jobs.sqlite")
    results = tmp_path / "results"
    now = time.time()
    for job_id, state, age_days in (("1" * 32, "succeeded", 40), ("2" * 32, "failed", 31), ("3" * 32, "succeeded", 1),
                                    ("4" * 32, "running", 90), ("5" * 32, "queued", 90)):
        d = results / job_id
        d.mkdir(parents=True)
        (d / "summary.json").write_text("{}")
        store.add(job_id, job_id, {}, os.fspath(d))
        if state != "queued":
            store.transition(job_id, ["queued"], state, finished_at=now - age_days * 86400)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    store.add("6" * 32, "x", {}, os.fspath(outside))  # a results_dir outside the root is never removed
    store.transition("6" * 32, ["queued"], "failed", finished_at=now - 99 * 86400)
    assert purge(store, results, 30, now=now) == 3
    assert {store.get(i) is None for i in ("1" * 32, "2" * 32, "6" * 32)} == {True}
    assert all(store.get(i) is not None for i in ("3" * 32, "4" * 32, "5" * 32))
    assert sorted(p.name for p in results.iterdir()) == ["3" * 32, "4" * 32, "5" * 32]
    assert outside.is_dir()
    # the service's purger runs at startup (and then every interval)
    store.transition("3" * 32, ["succeeded"], "succeeded", finished_at=now - 45 * 86400)
    purger = Purger(store, results, 30, interval_s=3600)
    purger.start()
    purger.stop()
    assert store.get("3" * 32) is None and not (results / ("3" * 32)).exists()
    store.close()


def test_settings_refuse_nonpositive_limits(tmp_path: Path) -> None:
    from dte_dask.service.settings import ServiceConfigError, ServiceSettings

    for name in ("job_timeout_s", "job_memory_bytes", "retain_days"):
        with pytest.raises(ServiceConfigError, match=name):
            ServiceSettings(token="t", db_path=tmp_path / "j.sqlite", **{name: 0})
    s = ServiceSettings(token="t", db_path=tmp_path / "j.sqlite", job_timeout_s=None, retain_days=None)
    assert s.job_timeout_s is None and s.retain_days is None and s.max_request_bytes == 256 << 10

