"""A job spec keeps the rows a direct call keeps: the regression estimators every observed row of an
unbalanced panel (so a job's event study is pyfixest's ``feols`` on the same rows), ``att_gt`` R did's
balanced panel (unless its options say ``allow_unbalanced_panel: true``); ``data.allow_unbalanced_panel``
still sets it for the whole job."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import dte_dask
from dte_dask.exceptions import SpecError
from dte_dask.jobs.runner import run_job
from dte_dask.jobs.spec import parse_job

COLS = dict(outcome="y", unit="unit", time="time", group="group")
NEVER = -1000  # relative time of never-treated units in the pyfixest formula (its dummy is all 0)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    df = dte_dask.simulate_panel(300, 8, seed=5, unbalanced_share=0.3).data.compute(scheduler="sync")
    assert df.groupby("unit").size().nunique() > 1  # unbalanced
    return df


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cl, \
            Client(cl) as c:
        yield c


def _job(path, out, estimators, **data) -> dict:
    return {"name": "unbalanced", "data": {"source": str(path), **COLS, **data}, "estimators": estimators,
            "inference": {"bootstrap": False}, "output": str(out), "report": False,
            "cluster": {"performance_report": False}}


def _run(client, raw) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_job(parse_job(raw), client=client, progress=False, echo=lambda s: None)


def test_job_gives_every_estimator_its_function_defaults(frame, client, tmp_path) -> None:
    path = tmp_path / "panel.parquet"
    frame.to_parquet(path)
    out = tmp_path / "out"
    _run(client, _job(path, out, [{"kind": "event_study"}, {"kind": "att_gt"},
                                  {"kind": "att_gt", "name": "att_gt_all", "options": {"allow_unbalanced_panel": True}}]))
    es = pd.read_parquet(out / "estimators" / "event_study.parquet")
    # pyfixest on the same (every observed) row: no argument on either side beyond the formula
    pf = pytest.importorskip("pyfixest")
    df = frame.assign(treated=(frame["group"] > 0).astype(float),
                      rel=np.where(frame["group"] > 0, frame["time"] - frame["group"], NEVER))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = pf.feols("y ~ i(rel, treated, ref=-1) | unit + time", data=df, vcov={"CRV1": "unit"}, fixef_tol=1e-14)
    tid = m.tidy()
    ref = tid[tid.index.str.startswith("rel")]
    np.testing.assert_allclose(es["estimate"].to_numpy(), ref["Estimate"].to_numpy(), rtol=0, atol=1e-8)
    np.testing.assert_allclose(es["se"].to_numpy(), ref["Std. Error"].to_numpy(), rtol=1e-6)
    # att_gt: R did's default (balanced, with its warning), or every row when its options say so
    with pytest.warns(Warning, match="Converting to balanced panel"):
        direct = dte_dask.att_gt(frame, **COLS, bootstrap=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct_all = dte_dask.att_gt(frame, **COLS, bootstrap=False, allow_unbalanced_panel=True)
    for name, res in (("att_gt", direct), ("att_gt_all", direct_all)):
        got = pd.read_parquet(out / "estimators" / f"{name}.parquet")
        np.testing.assert_array_equal(got["estimate"].to_numpy(), res.to_frame()["estimate"].to_numpy())
        np.testing.assert_array_equal(got["se"].to_numpy(), res.to_frame()["se"].to_numpy())
    assert direct.n_units < direct_all.n_units


def test_job_wide_balancing_is_still_an_option(frame, client, tmp_path) -> None:
    path = tmp_path / "panel.parquet"
    frame.to_parquet(path)
    out = tmp_path / "out"
    _run(client, _job(path, out, [{"kind": "event_study"}], allow_unbalanced_panel=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = dte_dask.event_study(frame, **COLS, allow_unbalanced_panel=False)
    got = pd.read_parquet(out / "estimators" / "event_study.parquet")
    np.testing.assert_array_equal(got["estimate"].to_numpy(), direct.coef)


def test_row_option_is_validated_per_estimator() -> None:
    base = {"data": {"source": "mpdta"}}
    with pytest.raises(SpecError, match="allow_unbalanced_panel must be true or false"):
        parse_job({**base, "estimators": [{"kind": "att_gt", "options": {"allow_unbalanced_panel": "yes"}}]})
    with pytest.raises(SpecError, match=r"unknown option\(s\) \['allow_unbalanced_panel'\] for bacon_decomposition"):
        parse_job({**base, "estimators": [{"kind": "bacon_decomposition", "options": {"allow_unbalanced_panel": True}}]})
    job = parse_job({**base, "estimators": [{"kind": "event_study", "options": {"allow_unbalanced_panel": False}}]})
    assert job.estimators[0].options == {"allow_unbalanced_panel": False} and job.data.allow_unbalanced_panel is None
