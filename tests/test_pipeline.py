"""The policy-evaluation pipeline on a smaller simulated medical panel: the Callaway–Sant'Anna
uniform band covers the simulator's true dynamic effects, and everything is written to disk."""
from __future__ import annotations

import json

import numpy as np
import pytest

import dte_dask
from dte_dask.pipelines import policy_evaluation


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    sim = dte_dask.simulate_panel(20000, 24, preset="medical", seed=12)
    out = tmp_path_factory.mktemp("policy")
    res = policy_evaluation(sim.data, n_boot=499, seed=3, out=str(out))
    return sim, res, out


def _true_dynamic(sim, res):
    """True dynamic effects weighted by the sample cohort sizes (the estimand of CS's dynamic aggregation)."""
    sizes = sim.data.compute(scheduler="synchronous").groupby("group")["unit"].nunique()
    truth = sim.truth.assign(n=lambda d: d["group"].map(sizes))
    truth = truth[truth["time"] >= 1]
    return truth.groupby("event_time").apply(lambda d: np.average(d["att"], weights=d["n"]), include_groups=False)


def test_uniform_band_covers_true_dynamic_effects(run):
    sim, res, _ = run
    dyn = res["att_gt_dynamic"].to_frame().set_index("event_time")
    truth = _true_dynamic(sim, res).reindex(dyn.index)
    assert truth.notna().all()
    inside = (dyn["band_lower"] <= truth) & (truth <= dyn["band_upper"])
    assert inside.all(), dyn.assign(truth=truth)[~inside]
    assert res["att_gt"].draws_aug is not None and res["att_gt_dynamic"].crit > 1.96  # a sup-t band, wider than pointwise


def test_selection_biases_the_unadjusted_stacked_estimates(run):
    """The medical preset selects on age/BMI with covariate trends: stacked DiD without covariates
    shows pre-trends, CS with covariates does not."""
    _, res, _ = run
    assert res["pretrends_att_gt"].passed
    table = res["att_gt_vs_stacked_did"].set_index("event_time")
    assert np.nanmax(np.abs(table.loc[table.index < -1, "stacked_did_estimate"])) > 3 * np.nanmax(np.abs(table.loc[table.index < -1, "att_gt_estimate"]))


def test_results_written(run):
    _, res, out = run
    summary = json.loads((out / "summary.json").read_text())
    assert {"event_study", "att_gt", "stacked_did", "att_gt_vs_stacked_did"} <= set(summary["estimators"])
    assert {"pretrends_att_gt", "pretrends_event_study"} <= set(summary["checks"])
    assert (out / "report.html").stat().st_size > 10_000
    assert (out / "estimators" / "att_gt.parquet").exists()


def test_medical_job_spec_runs_on_a_small_panel(tmp_path):
    """benchmarks/jobs/medical_policy.yaml, shrunk to 6,000 patients, through the job runner."""
    import pathlib

    import yaml
    from distributed import Client, LocalCluster

    from dte_dask.jobs.runner import run_job
    from dte_dask.jobs.spec import parse_job

    raw = yaml.safe_load((pathlib.Path(__file__).parents[1] / "benchmarks/jobs/medical_policy.yaml").read_text())
    raw["data"]["simulate"]["units"] = 6000
    raw["inference"]["n_boot"] = 99
    raw["output"] = str(tmp_path)
    job = parse_job(raw)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cl, Client(cl) as c:
        summary = run_job(job, client=c, progress=False, echo=lambda s: None)
    names = set(summary["estimators"])
    assert {"event_study", "att_gt", "att_gt.dynamic", "att_gt.group", "stacked_did", "comparison"} <= names
    assert {"att_gt.pretrends", "event_study.pretrends", "stacked_did.pretrends"} <= set(summary["checks"])
    corr = summary["metadata"]["comparison_correlation"]
    assert set(corr) == {"event_study", "att_gt", "stacked_did"}


def test_old_result_names_still_read_with_a_deprecation_warning():
    from dte_dask.pipelines import PipelineResults

    res = PipelineResults(att_gt="cells", att_gt_vs_stacked_did="table")
    with pytest.warns(DeprecationWarning, match="'cs' is named 'att_gt'"):
        assert res["cs"] == "cells"
    with pytest.warns(DeprecationWarning, match="att_gt_vs_stacked_did"):
        assert res["cs_vs_stacked"] == "table"
    with pytest.raises(KeyError):
        res["nothing"]
