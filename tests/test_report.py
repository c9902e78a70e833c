"""Results directory and HTML report: layout, round trip, CLI, and a headless-Chromium load test."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import warnings

import dask
import numpy as np
import pandas as pd
import pytest

import dte_dask
from dte_dask import checks, plotting
from dte_dask.exceptions import SpecError
from dte_dask.report import FORMAT, build_report, load_summary, save_results, write_report

COLS = dict(outcome="lemp", unit="countyreal", time="year", group="first_treat")


class StackedLike:
    """Stands in for a stacked-DiD result of the protocol: to_frame(), by_cohort(), pretrend_test(), summary()."""

    name = "stacked"
    estimator = "stacked"
    label = "stacked"
    result_kind = "event_study"
    alpha = 0.05

    def event_study(self) -> "StackedLike":
        return self

    def __init__(self, es: pd.DataFrame) -> None:
        self.es = es

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"event_time": self.es["event_time"], "estimate": self.es["estimate"] * 0.9,
                             "se": self.es["se"], "ci_lower": self.es["ci_lower"], "ci_upper": self.es["ci_upper"]})

    def by_cohort(self) -> pd.DataFrame:
        return pd.concat([self.to_frame().assign(cohort=g) for g in (2006, 2007)], ignore_index=True)

    def pretrend_test(self) -> dict:
        return {"statistic": 1.5, "df": 3, "p_value": 0.68}

    def summary(self) -> str:
        return "Stacked DiD <with corrective weights> & friends"


@pytest.fixture(scope="module")
def results():
    with dask.config.set(scheduler="sync"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = dte_dask.datasets.load_mpdta()
        cs = dte_dask.att_gt(df, **COLS, n_boot=199, seed=1)
        nyt = dte_dask.att_gt(df, **COLS, control_group="not_yet_treated", n_boot=199, seed=2)
        es = plotting.event_study_frame(cs)
        return {
            "cs": cs,
            "cs_nyt_dynamic": nyt.aggregate("dynamic"),
            "stacked": StackedLike(es),
            "synthetic": es.assign(estimate=es["estimate"] + 0.01),
            "pretrends": checks.pretrend_check(cs),
            "placebo": checks.placebo_check(df, **COLS),
            "randomization": checks.randomization_check(df, **COLS, n_perm=49, seed=3),
            "balance": checks.balance_check(df, **COLS, covariates=["lpop"]),
        }


@pytest.fixture(scope="module")
def results_dir(results, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    save_results(results, out, metadata={"job": "mpdta-test", "cluster_profile": "local"})
    return out


N_FIGURES = 3 + 1 + 1 + 2 + 1 + 4  # cs (es, attgt, cohorts), nyt es, stacked (es, by_cohort), synthetic, compare, 4 checks


# ----------------------------------------------------------------------------- layout
def test_results_dir_layout_and_summary(results, results_dir):
    s = json.loads((results_dir / "summary.json").read_text())
    assert s["format"] == FORMAT == load_summary(results_dir)["format"]
    assert list(s["estimators"]) == ["cs", "cs_nyt_dynamic", "stacked", "synthetic"]
    assert list(s["checks"]) == ["pretrends", "placebo", "randomization", "balance"]
    cs = s["estimators"]["cs"]
    assert cs["kind"] == "attgt" and cs["class"] == "AttgtResult"
    assert set(cs["files"]) == {"table", "cells", "dynamic", "group", "calendar", "event_study"}
    for entry in [*s["estimators"].values(), *s["checks"].values()]:
        for rel in entry["files"].values():
            assert (results_dir / rel).is_file(), rel
    assert (results_dir / "estimators" / "cs.parquet").is_file() and (results_dir / "checks" / "placebo.parquet").is_file()
    assert cs["overall"]["att"] == pytest.approx(results["cs"].aggregate("simple").overall_att)
    assert cs["pretrend"]["p_value"] == pytest.approx(results["cs"].pretrend_test()["p_value"])
    assert s["estimators"]["stacked"]["pretrend"] == {"statistic": 1.5, "df": 3, "p_value": 0.68}
    assert s["estimators"]["stacked"]["files"]["by_cohort"] == "estimators/stacked.by_cohort.csv"
    assert s["panel"]["units"] == 500 and s["panel"]["cohorts"]["never treated"] == 309
    assert s["columns"] == {"outcome": "lemp", "time": "year", "unit": "countyreal"}
    meta = s["metadata"]
    assert meta["seeds"] == {"cs": 1} and meta["job"] == "mpdta-test" and meta["cluster"] is None
    assert {"python", "dte_dask", "dask", "numpy", "pandas", "bokeh"} <= set(meta["versions"])
    assert set(meta["timings"]["cs"]) >= {"load", "estimate", "total"}
    assert s["checks"]["randomization"]["p_value"] == results["randomization"].p_value
    assert s["checks"]["pretrends"]["passed"] is True


def test_saved_frames_round_trip(results, results_dir):
    es = pd.read_csv(results_dir / "estimators" / "cs.event_study.csv")
    pd.testing.assert_frame_equal(es, plotting.event_study_frame(results["cs"]), check_dtype=False, rtol=1e-12)
    cells = pd.read_csv(results_dir / "estimators" / "cs.cells.csv")
    pd.testing.assert_frame_equal(cells, plotting.attgt_frame(results["cs"]), check_dtype=False, rtol=1e-12)
    table = pd.read_parquet(results_dir / "estimators" / "cs.parquet")
    pd.testing.assert_frame_equal(table, results["cs"].to_frame(), check_dtype=False)
    draws = pd.read_csv(results_dir / "checks" / "randomization.draws.csv")["statistic"].to_numpy()
    np.testing.assert_allclose(draws, results["randomization"].draws, rtol=1e-12)


def test_bad_names_and_dirs(results, tmp_path):
    with pytest.raises(SpecError, match="name"):
        save_results({"../escape": results["cs"]}, tmp_path)
    with pytest.raises(SpecError, match="summary.json"):
        build_report(tmp_path)


# ----------------------------------------------------------------------------- report
def test_report_is_self_contained(results_dir, tmp_path):
    path = write_report(results_dir, tmp_path / "sub" / "report.html", title="mpdta <check>")
    page = open(path, encoding="utf-8").read()
    assert "<title>mpdta &lt;check&gt;</title>" in page
    assert not re.search(r"<script[^>]+src=", page) and not re.search(r"<link[^>]+href=\"?https?:", page)
    assert "cdn.bokeh.org" not in page and "Bokeh" in page
    assert page.count("data-root-id=") == N_FIGURES
    for heading in ("Panel", "Estimators", "Estimators compared", "Identification checks", "Run"):
        assert f">{heading}</h2>" in page
    assert "Stacked DiD &lt;with corrective weights&gt; &amp; friends" in page  # escaped text
    assert "Cohorts and their sizes" in page and "never treated" in page and "mpdta-test" in page
    assert "Randomization inference" in page and "Covariate balance" in page and "Placebo adoption" in page


def test_cli_report(results_dir, tmp_path):
    from click.testing import CliRunner

    from dte_dask.cli import main

    out = tmp_path / "r.html"
    r = CliRunner().invoke(main, ["report", str(results_dir), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.stat().st_size > 100_000 and "report written" in r.output
    bad = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert bad.exit_code != 0 and "summary.json" in bad.output


def test_report_with_the_regression_estimators(results, tmp_path):
    pytest.importorskip("dte_dask.regression_results")
    df = dte_dask.datasets.load_mpdta()
    with dask.config.set(scheduler="sync"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = {"cs": results["cs"], "es": dte_dask.event_study(df, **COLS, bootstrap=True, n_boot=99, seed=5), "sa": dte_dask.sun_abraham(df, **COLS)}
    s = save_results(res, tmp_path)
    assert [e["kind"] for e in s["estimators"].values()] == ["attgt", "event_study", "sun_abraham"]
    assert set(s["estimators"]["sa"]["files"]) == {"table", "event_study", "by_cohort"}
    assert s["estimators"]["es"]["pretrend"]["df"] == res["es"].pretrend_test()["df"]
    # an event study has no cohorts: no by_cohort file, and no note that calls that a failure
    assert "by_cohort" not in s["estimators"]["es"]["files"]
    assert "notes" not in s["estimators"]["es"], s["estimators"]["es"].get("notes")
    assert s["metadata"]["seeds"] == {"cs": 1, "es": 5}  # every bootstrapped result's seed; sa drew none
    page = build_report(tmp_path)
    assert page.count("data-root-id=") == 3 + 1 + 2 + 1  # cs, es, sa (+ its cohorts), comparison
    assert "TWFE event study" in page


# ----------------------------------------------------------------------------- headless browser
def _chromium() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


_PROBE = """<script>
(function(){var errs=[];function rec(m){errs.push(String(m));
document.documentElement.setAttribute('data-errors',JSON.stringify(errs));}
document.documentElement.setAttribute('data-errors','[]');
var oe=console.error;console.error=function(){rec(Array.prototype.join.call(arguments,' '));oe.apply(console,arguments);};
var ow=console.warn;console.warn=function(){rec('warn: '+Array.prototype.join.call(arguments,' '));ow.apply(console,arguments);};
window.addEventListener('error',function(e){rec(e.message);});
window.addEventListener('unhandledrejection',function(e){rec('rejection: '+e.reason);});
window.addEventListener('load',function(){setTimeout(function(){var n=0;
document.querySelectorAll('[data-root-id]').forEach(function(d){
if((d.shadowRoot&&d.shadowRoot.childNodes.length)||d.childNodes.length){n++;}});
document.documentElement.setAttribute('data-rendered',String(n));},1000);});})();
</script>"""


def _run(browser: str, profile, *args: str) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=8000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_report_loads_in_headless_chromium(results_dir, tmp_path):
    pytest.importorskip("matplotlib", reason="reading the screenshot needs matplotlib (test extra)")
    from matplotlib.image import imread

    browser = _chromium()
    page = write_report(results_dir, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    r = _run(browser, tmp_path / "profile1", "--window-size=1300,4200", f"--screenshot={shot}", f"file://{page}")
    console = re.findall(r":CONSOLE[^\]]*\] \"(.*?)\", source", r.stderr)
    assert console, r.stderr[-2000:]  # bokeh logs its start-up: the scripts ran
    assert [m for m in console if not m.startswith("[bokeh")] == []
    assert shot.is_file()
    img = imread(str(shot))[..., :3]
    assert img.shape[0] >= 4000
    blue = (np.abs(img - np.array([0.12, 0.47, 0.71])).sum(axis=2) < 0.08).sum()  # estimates / whiskers
    shade = (np.abs(img - np.array([0.95, 0.95, 0.95])).sum(axis=2) < 0.03).sum()  # pre-period shading
    assert blue > 300 and shade > 5000, (blue, shade)

    probe = tmp_path / "probe.html"
    probe.write_text(open(page, encoding="utf-8").read().replace("<head>", "<head>\n" + _PROBE, 1), encoding="utf-8")
    d = _run(browser, tmp_path / "profile2", "--dump-dom", f"file://{probe}")
    head = d.stdout[:400]
    assert 'data-errors="[]"' in head, head
    assert f'data-rendered="{N_FIGURES}"' in head, head
