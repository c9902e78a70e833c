"""Disclosure control (issue 19 point 4): small cells suppressed and counts rounded in every output.

A simulated panel (303 units, 6 periods) gets distinctive unit ids (``PID-<12 hex digits>``), raw
outcomes with full float precision and one cohort of only 3 units (first treated in period 6).
One job runs ``att_gt`` (four aggregations), ``event_study``, ``sun_abraham`` and ``imputation_did``
(the two paths every regression estimator's counts come from), the pre-trend check, the
comparison, the report and Dask's performance report through :func:`dte_dask.jobs.runner.run_job` with
``disclosure: {min_cell_size: 10, round_counts: 5}``; the same panel goes through the service
(FastAPI's test client) whose default ``min_cell_size`` is 10. Then

* every file written (text; parquet decoded to text; base64 blobs inside the HTML decoded and
  searched for the raw float64 bytes) and every API response body is scanned for any unit id and
  any raw outcome value (as ``repr`` and ``%.12g`` write it): none may appear;
* the small cohort's cells, the aggregates built only from it and the regression estimates at
  event times only it reaches are suppressed, with the reason, in the tables, summary.json, the
  report and the API; counts are multiples of 5 and a count below 10 is never published;
* the counts themselves are checked against the raw frame (an independent count with pandas)
  and are identical for 1 and 3 partitions.
"""
from __future__ import annotations

import base64
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import dte_dask
from dte_dask.disclosure import DisclosureSpec, apply, looser_fields
from dte_dask.exceptions import SpecError
from dte_dask.jobs.spec import parse_job

pytestmark = [pytest.mark.filterwarnings("ignore::dte_dask.exceptions.DteDaskWarning")]

SMALL_COHORT = 6  # first treated in the last period, 3 units
N_SMALL = 3
N_UNITS = 303  # rounds to 305
COLS = {"unit": "unit", "time": "time", "outcome": "y", "group": "group"}
POLICY = {"min_cell_size": 10, "round_counts": 5}
ESTIMATORS = [{"kind": "att_gt", "aggregations": ["simple", "dynamic", "group", "calendar"]},
              {"kind": "event_study"}, {"kind": "sun_abraham"}, {"kind": "imputation_did"}]


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    sim = dte_dask.simulate_panel(N_UNITS, 6, seed=3)
    df = sim.data.compute() if hasattr(sim.data, "compute") else sim.data.copy()
    df = df[["unit", "time", "y", "group"]].copy()
    rng = np.random.default_rng(20261130)
    units = df["unit"].unique()
    ids = dict(zip(units, ("PID-" + rng.bytes(6).hex() for _ in units)))
    small = df.loc[df["group"] == 0, "unit"].unique()[:N_SMALL]
    df.loc[df["unit"].isin(small), "group"] = SMALL_COHORT
    df["unit"] = df["unit"].map(ids)
    df["y"] = df["y"] + rng.uniform(0, 1, len(df)) * 1e-3  # full-precision raw outcomes
    return df.reset_index(drop=True)


@pytest.fixture(scope="module")
def data_dir(raw: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("regulated")
    raw.to_parquet(d / "panel.parquet", index=False)
    return d


@pytest.fixture(scope="module")
def client() -> Any:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as lc, \
            Client(lc) as c:
        yield c


def _job(data_dir: Path, out: Path | str = "results", **over: Any) -> dict[str, Any]:
    job = {"name": "regulated", "data": {"source": str(data_dir / "panel.parquet"), **COLS, "npartitions": 2},
           "estimators": ESTIMATORS, "inference": {"bootstrap": False}, "checks": ["pretrends"], "compare": True,
           "disclosure": POLICY, "cluster": {"performance_report": True}, "report": True, "output": str(out)}
    job.update(over)
    return job


@pytest.fixture(scope="module")
def job_out(data_dir: Path, client: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from dte_dask.jobs.runner import run_job

    out = tmp_path_factory.mktemp("job-out")
    echoed: list[str] = []
    summary = run_job(parse_job(_job(data_dir, out)), client=client, progress=False, echo=echoed.append)
    return {"out": out, "summary": summary, "echo": "\n".join(echoed)}


# ----------------------------------------------------------------------------- the scan
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_HEX = re.compile(r"[0-9a-f]{12}")
_B64 = re.compile(rb"[A-Za-z0-9+/]{16,}={0,2}")


def _needles(raw: pd.DataFrame) -> dict[str, Any]:
    """What must not appear: the unit ids (and their distinctive hex part), each raw outcome as
    ``repr`` and ``%.12g`` write it, and its float64 bytes."""
    vals = raw["y"].to_numpy(float)
    ids = set(raw["unit"].unique())
    return {"ids": ids, "hex": {i.removeprefix("PID-") for i in ids},
            "numbers": {repr(float(v)) for v in vals} | {f"{v:.12g}" for v in vals},
            "bytes": np.unique(vals.astype("<f8").view("<u8"))}


def _binary_hits(blob: bytes, want: np.ndarray) -> bool:
    """Any raw outcome's float64 bytes, at any byte offset, in ``blob`` (``want`` sorted)."""
    for off in range(8):
        n = (len(blob) - off) // 8
        if n > 0:
            arr = np.frombuffer(blob, dtype="<u8", count=n, offset=off)
            pos = np.minimum(np.searchsorted(want, arr), want.size - 1)
            if (want[pos] == arr).any():
                return True
    return False


def _leaks(name: str, content: bytes, nd: dict[str, Any]) -> list[str]:
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        t = pq.read_table(io.BytesIO(content))
        text = t.to_pandas().to_csv(index=False) + str(t.schema) + json.dumps(
            {k.decode(): v.decode(errors="replace") for k, v in (t.schema.metadata or {}).items()})
    else:
        text = content.decode("utf-8", errors="replace")
    found = sorted(set(_HEX.findall(text)) & nd["hex"]) + sorted(set(_NUMBER.findall(text)) & nd["numbers"])
    found += [i for i in nd["ids"] if "PID-" in text and i in text][:1]
    if _binary_hits(content, nd["bytes"]):
        found.append("<raw float64 bytes>")
    if name.endswith(".html"):
        for m in _B64.finditer(content):  # bokeh's embedded arrays
            chunk = m.group(0)
            try:
                blob = base64.b64decode(chunk + b"=" * (-len(chunk) % 4))
            except ValueError:
                continue
            if len(blob) >= 8 and _binary_hits(blob, nd["bytes"]):
                found.append("<raw float64 bytes in a base64 blob>")
                break
    return [f"{name}: {f}" for f in found[:5]]


def test_no_unit_level_values_in_any_job_output(job_out: dict[str, Any], raw: pd.DataFrame) -> None:
    nd = _needles(raw)
    out: Path = job_out["out"]
    files = sorted(p for p in out.rglob("*") if p.is_file())
    kinds = {p.suffix for p in files}
    assert {".csv", ".parquet", ".json", ".html"} <= kinds, kinds  # PNGs: none are written by a job
    assert (out / "report.html").is_file() and (out / "dask-report.html").is_file()
    leaks = [x for p in files for x in _leaks(p.relative_to(out).as_posix(), p.read_bytes(), nd)]
    leaks += _leaks("<dte-dask run output>", job_out["echo"].encode(), nd)
    assert not leaks, leaks
    # the scan can fail: the raw panel itself is caught
    buf = io.BytesIO()
    raw.head(3).to_parquet(buf, index=False)
    assert _leaks("panel.parquet", buf.getvalue(), nd)
    assert _leaks("panel.csv", raw.head(3).to_csv(index=False).encode(), nd)
    assert _leaks("plot.html", base64.b64encode(raw["y"].to_numpy("<f8")[:4].tobytes()) + b" x.html", nd)


# ----------------------------------------------------------------------------- suppression
def _csv(out: Path, rel: str) -> pd.DataFrame:
    return pd.read_csv(out / rel)


def _assert_suppressed(df: pd.DataFrame, rows: pd.Series, what: str) -> None:
    assert rows.any(), what
    sup = df[rows]
    assert sup["suppressed"].all(), (what, sup)
    assert sup["suppression_reason"].str.contains("n_treated < min_cell_size=10").all(), (what, sup)
    assert sup[["estimate", "se", "ci_lower", "ci_upper"]].isna().all().all(), (what, sup)
    assert sup["n_treated"].isna().all(), (what, "a count below the threshold is not published")
    rest = df[~rows]
    assert not rest["suppressed"].any() and rest["estimate"].notna().all(), (what, rest)
    for c in ("n_treated", "n_control"):
        published = rest[c].dropna().to_numpy(int)
        assert published.size and (published % 5 == 0).all() and (published >= 10).all(), (what, c, published)


def test_small_cohort_is_suppressed_with_its_reason_in_every_table(job_out: dict[str, Any]) -> None:
    out = job_out["out"]
    cells = _csv(out, "estimators/att_gt.cells.csv")
    _assert_suppressed(cells, cells["group"] == SMALL_COHORT, "cells")
    assert len(cells) == 4 * 5, "suppressed rows stay in the table"
    table = _csv(out, "estimators/att_gt.csv")
    _assert_suppressed(table, table["group"] == SMALL_COHORT, "cells table")
    pq = pd.read_parquet(out / "estimators/att_gt.parquet")
    assert pq.loc[pq["group"] == SMALL_COHORT, "suppressed"].all() and pq.loc[pq["group"] == SMALL_COHORT,
                                                                              "estimate"].isna().all()
    # aggregates: published when their own counts pass; those built only from the small cohort are not
    grp = _csv(out, "estimators/att_gt.group.csv")
    _assert_suppressed(grp, grp["group"] == SMALL_COHORT, "group aggregation")
    # its earliest cell (t = 2, e = -4) is the only one at that event time
    dyn = _csv(out, "estimators/att_gt.dynamic.csv")
    _assert_suppressed(dyn, dyn["event_time"] == -(SMALL_COHORT - 2), "dynamic aggregation")
    es = _csv(out, "estimators/att_gt.event_study.csv")
    _assert_suppressed(es, es["event_time"] == -(SMALL_COHORT - 2), "event-study file")
    # regressions: only the small cohort reaches event time -5 (period 1) in a 6-period panel
    for name in ("event_study", "sun_abraham"):
        df = _csv(out, f"estimators/{name}.csv")
        _assert_suppressed(df, df["event_time"] == -(SMALL_COHORT - 1), name)
    for name in ("imputation_did",):
        df = _csv(out, f"estimators/{name}.csv")
        assert {"n_treated", "n_control", "suppressed", "suppression_reason"} <= set(df.columns), name
        assert (df["suppressed"] == (df["n_treated"].isna() | df["n_control"].isna())).all(), name
    # a table without unit counts is suppressed whole (fail closed), never dropped
    for rel in ("estimators/comparison.csv",):
        df = _csv(out, rel)
        assert len(df) and df["suppressed"].all() and df["suppression_reason"].str.contains("no unit counts").all()


def test_summary_report_and_checks_carry_the_suppression(job_out: dict[str, Any]) -> None:
    out = job_out["out"]
    s = json.loads((out / "summary.json").read_text())
    assert s["disclosure"]["min_cell_size"] == 10 and s["disclosure"]["round_counts"] == 5
    assert s["panel"]["cohorts"][str(SMALL_COHORT)] is None  # 3 units: not published
    assert all(c is None or c % 5 == 0 for c in s["panel"]["cohorts"].values())
    assert s["panel"]["units"] == s["metadata"]["panel_shape"]["units"] == 305  # 303, rounded
    assert not re.search(r"\b303\b", (out / "summary.json").read_text()), "the exact number of units is not published"
    assert "comparison_correlation" not in s["metadata"]
    att = s["estimators"]["att_gt"]
    assert att["overall"]["suppressed"] is False and att["overall"]["att"] is not None
    assert att["overall"]["n_treated"] % 5 == 0
    # the pre-test of the cells includes the small cohort's pre-period cells: suppressed as a whole
    assert att["pretrend"]["suppressed"] is True and att["pretrend"]["statistic"] is None
    assert "n_treated < min_cell_size=10" in att["pretrend"]["suppression_reason"]
    assert "suppressed" in att["summary"] and "PID-" not in att["summary"]
    check = s["checks"]["att_gt.pretrends"]
    assert check.get("suppressed") is True and check.get("passed") is None
    table = _csv(out, "checks/att_gt.pretrends.csv")
    assert table["suppressed"].all() and table["statistic"].isna().all()
    html = (out / "report.html").read_text()
    assert "Disclosure control" in html and "n_treated &lt; min_cell_size=10" in html
    assert "suppressed (disclosure control)" in html  # the plots' marks


def test_counts_match_an_independent_count_and_any_partitioning(raw: pd.DataFrame, client: Any) -> None:
    panels = {n: dte_dask.load_panel(raw, **COLS, npartitions=n) for n in (1, 3)}
    res = {n: dte_dask.att_gt(p, bootstrap=False) for n, p in panels.items()}
    reg = {n: dte_dask.event_study(p) for n, p in panels.items()}
    for a, b in ((res[1].to_frame(), res[3].to_frame()), (reg[1].to_frame(), reg[3].to_frame()),
                 (res[1].aggregate("dynamic").to_frame(), res[3].aggregate("dynamic").to_frame())):
        np.testing.assert_array_equal(a[["n_treated", "n_control"]].to_numpy(), b[["n_treated", "n_control"]].to_numpy())
    # pandas reference: units per cohort, never treated (balanced panel)
    size = raw.groupby("group")["unit"].nunique()
    cells = res[3].to_frame()
    np.testing.assert_array_equal(cells["n_treated"].to_numpy(), size.loc[cells["group"]].to_numpy())
    assert (cells["n_control"] == size.loc[0]).all()  # never-treated comparison group
    # event study: treated units observed at event time e = sum of cohorts with g + e inside the panel
    periods = sorted(raw["time"].unique())
    df = reg[3].to_frame()
    for e, n in zip(df["event_time"], df["n_treated"]):
        want = sum(int(size.loc[g]) for g in size.index if g != 0 and periods[0] <= g + e <= periods[-1])
        assert n == want, (e, n, want)
    # aggregates: the cohorts involved, each once (dynamic e = -5: the small cohort alone)
    dyn = res[3].aggregate("dynamic").to_frame().set_index("event_time")
    assert dyn.loc[-4, "n_treated"] == N_SMALL
    assert dyn.loc[0, "n_treated"] == size.drop(0).sum()


def test_python_api_on_a_result(raw: pd.DataFrame, client: Any) -> None:
    res = dte_dask.att_gt(dte_dask.load_panel(raw, **COLS, npartitions=2), bootstrap=False)
    plain = apply(res)  # no policy: the frame unchanged
    pd.testing.assert_frame_equal(plain, res.to_frame())
    d = apply(res, min_cell_size=N_SMALL)
    assert not d["suppressed"].any() and (d["n_treated"] == res.to_frame()["n_treated"]).all()
    d = apply(res, min_cell_size=10, round_counts="suppress")
    assert d["n_treated"].isna().all() and d["n_control"].isna().all()
    assert d.loc[d["group"] == SMALL_COHORT, "suppressed"].all()
    assert not d.loc[d["group"] != SMALL_COHORT, "suppressed"].any()
    fig = dte_dask.plotting.plot_attgt(apply(res, min_cell_size=10), backend="matplotlib")
    gids = {c.get_gid() for ax in fig.axes for c in ax.collections}
    assert "suppressed:pre" in gids and "suppressed:post" in gids


# ----------------------------------------------------------------------------- the spec and the service
@pytest.mark.parametrize(("disclosure", "field"), [({"min_cell_size": 0}, "disclosure.min_cell_size"),
                                                   ({"round_counts": "x"}, "disclosure.round_counts"),
                                                   ({"round_counts": 0}, "disclosure.round_counts"),
                                                   ({"min_cel_size": 5}, "disclosure.min_cel_size")])
def test_spec_errors_name_the_field(disclosure: dict, field: str, data_dir: Path) -> None:
    with pytest.raises(SpecError, match=re.escape(field)):
        parse_job(_job(data_dir, disclosure=disclosure))


def test_looser_than_the_service_is_refused() -> None:
    svc = DisclosureSpec(min_cell_size=10, round_counts=5)
    assert not looser_fields(DisclosureSpec(min_cell_size=20, round_counts=10), svc)
    assert not looser_fields(DisclosureSpec(round_counts="suppress", min_cell_size=10), svc)
    assert [f for f, _ in looser_fields(DisclosureSpec(min_cell_size=5, round_counts=3), svc)] == [
        "min_cell_size", "round_counts"]
    assert [f for f, _ in looser_fields(DisclosureSpec(min_cell_size=10, round_counts=7), svc)] == ["round_counts"]


def test_service_applies_its_threshold_and_leaks_nothing(data_dir: Path, raw: pd.DataFrame, client: Any,
                                                         tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from dte_dask.service.app import create_app
    from dte_dask.service.settings import ServiceSettings

    settings = ServiceSettings(token="t" * 32, db_path=tmp_path / "jobs.sqlite", data_roots=(data_dir,),
                               disclosure=DisclosureSpec(min_cell_size=10))
    auth = {"Authorization": "Bearer " + "t" * 32}
    job = {**_job(data_dir), "data": {"source": "panel.parquet", **COLS}, "disclosure": {},
           "estimators": [{"kind": "att_gt", "aggregations": ["group"]}, {"kind": "event_study"}],
           "checks": [], "compare": False, "cluster": {"performance_report": False}, "report": False}
    bodies: list[tuple[str, bytes]] = []
    with TestClient(create_app(settings, client=client)) as http:
        r = http.post("/jobs", json={**job, "disclosure": {"min_cell_size": 5}}, headers=auth)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "disclosure", "min_cell_size"], r.text
        assert "min_cell_size=10" in r.json()["detail"][0]["msg"]
        r = http.post("/jobs", json=job, headers=auth)
        assert r.status_code == 202, r.text
        bodies.append(("POST /jobs", r.content))
        job_id = r.json()["id"]
        deadline = time.monotonic() + 120
        while (r := http.get(f"/jobs/{job_id}", headers=auth)).json()["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, r.text
            time.sleep(0.2)
        info = r.json()
        assert info["state"] == "succeeded", info
        assert info["spec"]["disclosure"]["min_cell_size"] == 10  # the service's default, recorded
        bodies += [("GET /jobs/id", r.content), ("GET /jobs", http.get("/jobs", headers=auth).content)]
        listing = http.get(f"/jobs/{job_id}/results", headers=auth)
        bodies.append(("GET results", listing.content))
        files = {}
        for f in listing.json()["files"]:
            r = http.get(f["url"], headers=auth)
            assert r.status_code == 200, f
            files[f["name"]] = r.content
            bodies.append((f["name"], r.content))
        bodies.append(("GET /metrics", http.get("/metrics", headers=auth).content))
    nd = _needles(raw)
    leaks = [x for name, body in bodies for x in _leaks(name, body, nd)]
    assert not leaks, leaks
    cells = pd.read_csv(io.BytesIO(files["estimators/att_gt.cells.csv"]))
    small = cells["group"] == SMALL_COHORT
    assert cells.loc[small, "suppressed"].all() and cells.loc[small, "estimate"].isna().all()
    assert cells.loc[small, "suppression_reason"].str.contains("n_treated < min_cell_size=10").all()
    assert not cells.loc[~small, "suppressed"].any()
    assert info["summary"]["estimators"]["att_gt"]["overall"]["n_treated"] is not None  # published (10+ units)


def test_serve_rejects_a_bad_round_counts() -> None:
    from click.testing import CliRunner

    from dte_dask.cli import main

    r = CliRunner().invoke(main, ["serve", "--round-counts", "zero"], env={"DTE_DASK_TOKEN": "x" * 32})
    assert r.exit_code == 2 and "round-counts" in r.output, r.output
