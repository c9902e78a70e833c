"""HonestDiD and pre-test power as products: on every event-study estimator of the package, as
plots (bokeh HTML, matplotlib PNG), as job checks (spec validation, outputs, summary.json, the HTML
report) and in the service's job record. The numbers themselves are tested in test_honest_did.py."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import dte_dask
from dte_dask import plotting
from dte_dask.exceptions import SpecError

COLS = dict(outcome="y", unit="unit", time="time", group="group")
# every event-study estimator, with the options that give it pre-period estimates
ESTIMATORS = {
    "att_gt": dict(base_period="universal", bootstrap=False),  # its dynamic aggregation
    "triple_did": dict(partition="eligible", bootstrap=False),  # its dynamic aggregation
    "sun_abraham": {},
    "event_study": dict(bin_endpoints=False),
    "stacked_did": dict(window=(-2, 2)),
    "imputation_did": dict(pretrends=2),
    "two_stage_did": dict(pretrends=2),
    "etwfe": dict(control_group="never_treated"),  # its event-time aggregation
    "did_multiplegt": dict(effects=3, placebo=2),  # effects from event time 1, placebos before
    "continuous_did": dict(dose="dose", aggregation="eventstudy", bootstrap=False),  # ATT by event time
}


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    df = dte_dask.simulate_panel(200, 6, seed=3).data.compute(scheduler="sync")
    return df.assign(eligible=(df["unit"].rank(method="dense").astype(int) % 2),  # for triple_did
                     d=((df["group"] > 0) & (df["time"] >= df["group"])).astype(float),  # did_multiplegt
                     dose=np.where(df["group"] > 0, 1.0 + df["unit"].rank(method="dense") % 5, 0.0))  # continuous_did


def test_every_event_study_estimator_is_covered() -> None:
    from dte_dask import registry

    event_studies = {e.name for e in registry.list_estimators() if e.result in ("cells", "event_study")}
    assert event_studies == set(ESTIMATORS)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_honest_did_on_every_event_study_estimator(panel: pd.DataFrame, name: str) -> None:
    fn = getattr(dte_dask, name)
    cols = dict(COLS) if name != "did_multiplegt" else dict(outcome="y", unit="unit", time="time", treatment="d")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fn(panel, **cols, **ESTIMATORS[name])
    h = dte_dask.honest_did(res, M=[0.0, 1.0], grid_points=40)
    assert np.all(np.isfinite(h.lb)) and np.all(np.isfinite(h.ub)) and np.all(h.lb < h.ub)
    assert h.lb[1] <= h.lb[0] + h.grid_step.max() and h.ub[1] >= h.ub[0] - h.grid_step.max()
    # the original interval is the result's own pointwise CI at the first post-period (its critical
    # value: normal for att_gt, t with clusters - 1 df for the regressions)
    es = res.event_study().to_frame().set_index("event_time")
    e0 = h.event_times[h.num_pre_periods]
    assert e0 == (1 if name == "did_multiplegt" else 0)
    np.testing.assert_allclose(h.original, es.loc[e0, ["ci_lower", "ci_upper"]].to_numpy(float), rtol=1e-12)
    assert h.estimate == es.loc[e0, "estimate"]
    # and for an average of the post-periods, l'b +- c sqrt(l'Vl) with the same critical value
    n_post = h.num_post_periods
    avg = dte_dask.honest_did(res, l_vec=np.full(n_post, 1 / n_post), restriction="smoothness", M=[0.0])
    post = es.index.to_numpy() >= 0
    V = res.event_study().vcov()
    keep = ~((es["estimate"].to_numpy() == 0) & ~(es["se"].to_numpy() > 0))
    Vp = V[np.ix_(post & keep, post & keep)]
    c = (es.loc[e0, "ci_upper"] - es.loc[e0, "estimate"]) / es.loc[e0, "se"]
    half = c * np.sqrt(np.full(n_post, 1 / n_post) @ Vp @ np.full(n_post, 1 / n_post))
    np.testing.assert_allclose(avg.original, (avg.estimate - half, avg.estimate + half), rtol=1e-10)
    assert np.isfinite(avg.lb[0]) and np.isfinite(avg.ub[0])


def test_estimators_without_pre_periods_say_how_to_get_them(panel: pd.DataFrame) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = dte_dask.two_stage_did(panel, **COLS)
    with pytest.raises(SpecError, match="pretrends=k"):
        dte_dask.honest_did(res)


def test_original_interval_with_another_alpha_is_normal(panel: pd.DataFrame) -> None:
    res = dte_dask.event_study(panel, **COLS, bin_endpoints=False)
    h = dte_dask.honest_did(res, alpha=0.1, restriction="smoothness", M=[0.0])
    se = res.to_frame().set_index("event_time").loc[0, "se"]
    np.testing.assert_allclose(h.original, h.estimate + np.array([-1, 1]) * stats.norm.ppf(0.95) * se, rtol=1e-12)


# ---------------------------------------------------------------------------------------------- plots
@pytest.fixture(scope="module")
def sens(panel: pd.DataFrame):
    res = dte_dask.event_study(panel, **COLS, bin_endpoints=False)
    return res, dte_dask.honest_did(res, restriction="smoothness", M=[0.0, 0.05, 0.1, 0.2])


def test_sensitivity_plot_shows_the_intervals_and_the_original(sens, tmp_path: Path) -> None:
    _, h = sens
    fig = h.plot(backend="matplotlib")
    ax = fig.axes[0]
    by_gid = {c.get_gid(): c for c in ax.collections}
    robust = by_gid["robust:FLCI"].get_segments()
    np.testing.assert_allclose([s[:, 1] for s in robust], np.column_stack([h.lb, h.ub]), rtol=1e-12)
    np.testing.assert_allclose([s[0, 0] for s in robust], h.M)
    orig = by_gid["original"].get_segments()[0]
    np.testing.assert_allclose(orig[:, 1], h.original) and np.testing.assert_array_less(orig[0, 0], h.M.min())
    assert ax.get_xticklabels()[0].get_text() == "Original"
    if np.isfinite(h.breakdown):
        assert any(line.get_gid() == "breakdown" for line in ax.lines)
    bk = h.plot()
    names = {r.name for r in bk.renderers}
    assert {"robust:FLCI", "original"} <= names
    png = plotting.save_figure(fig, str(tmp_path / "s.png"))  # HTML: the job test
    assert Path(png).read_bytes()[:4] == b"\x89PNG"


def test_pretest_power_plot_marks_the_detectable_slopes(sens) -> None:
    res, _ = sens
    pp = dte_dask.pretest_power(res)
    curve = pp.curve()
    assert curve["power"].is_monotonic_increasing and curve["slope"].iloc[0] == 0
    for p, s in pp.slope_for_power.items():  # the curve goes through the detectable slopes
        assert np.interp(s, curve["slope"], curve["power"]) == pytest.approx(p, abs=0.01)
    fig = pp.plot(backend="matplotlib")
    ax = fig.axes[0]
    line = next(li for li in ax.lines if li.get_gid() == "power")
    np.testing.assert_allclose(line.get_ydata(), curve["power"])
    for p, s in pp.slope_for_power.items():
        mark = next(c for c in ax.collections if c.get_gid() == f"detect:{p:g}")
        np.testing.assert_allclose(mark.get_offsets()[0], [s, p])
        vline = next(li for li in ax.lines if li.get_gid() == f"slope:{p:g}")
        assert vline.get_xdata()[0] == pytest.approx(s)
    assert {"power", "detect:0.5", "detect:0.8"} <= {r.name for r in pp.plot().renderers}


# ---------------------------------------------------------------------------------------------- jobs
def test_job_spec_checks_are_validated_with_their_path() -> None:
    from dte_dask.jobs.spec import parse_job

    base = {"data": {"source": "mpdta"}, "estimators": [{"kind": "event_study"}]}
    job = parse_job({**base, "checks": ["pretrends", "honest_did",
                                        {"honest_did": {"restriction": "relative_magnitude", "M": [0, 0.5, 1],
                                                        "event_time": 0}}, {"pretest_power": None}]})
    assert [c.name for c in job.checks] == ["pretrends", "honest_did", "honest_did", "pretest_power"]
    assert job.checks[2].options == {"restriction": "relative_magnitude", "M": [0.0, 0.5, 1.0], "event_time": 0}
    dumped = job.model_dump(mode="json")["checks"]
    assert dumped[:2] == ["pretrends", "honest_did"] and parse_job({**base, "checks": dumped}).checks == job.checks
    bad = {"checks.0.honest_did.M": {"honest_did": {"M": [0, -1]}},
           "checks.0.honest_did.grid_points": {"honest_did": {"grid_points": 1}},
           "checks.0.honest_did.restriction": {"honest_did": {"restriction": "shape"}},
           "checks.0.honest_did.Mx: unknown key": {"honest_did": {"Mx": 1}},
           "checks.0.honest_did: method='FLCI'": {"honest_did": {"method": "FLCI"}},
           "checks.0: unknown check 'honestdid'": "honestdid",
           "checks.0: name one check": {"honest_did": {}, "pretrends": {}},
           "checks.0.pretest_power.powers": {"pretest_power": {"powers": [1.5]}}}
    for where, item in bad.items():
        with pytest.raises(SpecError, match=where.replace("(", r"\(").replace(".", r"\.")):
            parse_job({**base, "checks": [item]})
    schema = dte_dask.jobs.spec.JobSpec.model_json_schema()["$defs"]["CheckSpec"]
    assert schema["anyOf"][0] == {"type": "string", "enum": ["pretrends", "honest_did", "pretest_power"]}


@pytest.fixture(scope="module")
def job_run(tmp_path_factory: pytest.TempPathFactory):
    from distributed import Client, LocalCluster

    from dte_dask.jobs.runner import run_job
    from dte_dask.jobs.spec import parse_job

    out = tmp_path_factory.mktemp("honest-job")
    job = parse_job({"name": "honest", "data": {"source": "mpdta"}, "output": str(out),
                     "estimators": [{"kind": "att_gt", "options": {"base_period": "universal"}},
                                    {"kind": "two_stage_did"}],
                     "inference": {"bootstrap": False},
                     "checks": ["pretrends", {"honest_did": {"M": [0, 0.5, 1], "grid_points": 40}}, "pretest_power"],
                     "cluster": {"performance_report": False}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cl, \
                Client(cl) as c:
            summary = run_job(job, client=c, progress=False, echo=lambda s: None)
    return out, summary


def test_job_writes_the_checks_tables_plots_and_summary(job_run) -> None:
    out, summary = job_run
    checks = summary["checks"]
    assert {"att_gt.pretrends", "att_gt.honest_did", "att_gt.pretest_power"} <= set(checks)
    h = checks["att_gt.honest_did"]
    files = h["files"]
    for key, ext in (("table", ".csv"), ("plot_html", ".html"), ("plot_png", ".png")):
        assert files[key].endswith(ext) and (out / files[key]).is_file()
    assert (out / "checks" / "att_gt.honest_did.parquet").is_file()
    table = pd.read_parquet(out / "checks" / "att_gt.honest_did.parquet")
    mp = dte_dask.datasets.load_mpdta()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cs = dte_dask.att_gt(mp, outcome="lemp", unit="countyreal", time="year", group="first_treat",
                             base_period="universal", bootstrap=False)
    direct = dte_dask.honest_did(cs, M=[0, 0.5, 1], grid_points=40)
    want = direct.to_frame()
    pd.testing.assert_frame_equal(table[["M", "lb", "ub"]], want[["M", "lb", "ub"]])
    assert table["method"].tolist() == want["method"].tolist()
    assert h["kind"] == "honest_did" and h["method"] == "C-LF" and h["target"] == "event time 0"
    assert h["original"] == pytest.approx(list(direct.original), rel=1e-12)
    assert (h["breakdown"] is None) == np.isnan(direct.breakdown)
    pp = checks["att_gt.pretest_power"]
    assert set(pp["slope_for_power"]) == {"0.5", "0.8"} and (out / pp["files"]["curve"]).is_file()
    # two_stage_did without pretrends has no pre-periods: a note, not a failure
    notes = json.loads((out / "summary.json").read_text())["metadata"]["check_notes"]
    assert any(n.startswith("two_stage_did.honest_did: not run") and "pretrends=k" in n for n in notes)


def test_report_has_the_sensitivity_section(job_run) -> None:
    out, _ = job_run
    html = (out / "report.html").read_text()
    assert "att_gt.honest_did" in html and "Breakdown value" in html
    assert "Sensitivity to parallel-trends violations: att_gt.honest_did" in html
    assert "Pre-test power against linear violations" in html


def test_service_job_record_keeps_the_check_verdicts(job_run) -> None:
    from dte_dask.service.executor import _compact

    _, summary = job_run
    rec = _compact(summary)["checks"]
    assert rec["att_gt.honest_did"]["kind"] == "honest_did" and "breakdown" in rec["att_gt.honest_did"]
    assert rec["att_gt.pretrends"]["passed"] in (True, False)
