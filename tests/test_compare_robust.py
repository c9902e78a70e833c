"""compare_estimators with the issue-14 estimators: CS, Sun–Abraham, stacked, imputation, two-stage and
ETWFE side by side (table and overlay plot); identities between them as the reference."""
from __future__ import annotations

import numpy as np
import pytest

import dte_dask

COLS = dict(outcome="y", unit="unit", time="time", group="group")
SIX = ["att_gt", "sun_abraham", "stacked_did", "imputation_did", "two_stage_did", "etwfe"]


@pytest.fixture(scope="module")
def cmp():
    df = dte_dask.simulate_panel(400, 8, seed=5).data.compute(scheduler="sync")
    return dte_dask.compare_estimators(df, **COLS, window=(-3, 3))


def test_all_six_offered_by_default():
    from dte_dask.estimators.compare import comparable

    assert set(SIX) <= set(comparable())


@pytest.mark.filterwarnings("ignore::dte_dask.exceptions.DteDaskWarning")
def test_six_estimators_side_by_side(cmp):
    tab = cmp.table.set_index("event_time")
    for name in SIX:
        assert f"{name}_estimate" in tab and f"{name}_se" in tab
    assert set(SIX) <= set(cmp.correlation.columns)
    post = [0, 1, 2, 3]
    # without covariates: imputation = two-stage = ETWFE (not-yet-treated) point estimates (BJS, Gardner,
    # Wooldridge identities), and CS (universal base) = Sun-Abraham
    for name in ("two_stage_did", "etwfe"):
        np.testing.assert_allclose(tab.loc[post, f"{name}_estimate"], tab.loc[post, "imputation_did_estimate"],
                                   atol=1e-10, rtol=0)
    np.testing.assert_allclose(tab.loc[post, "sun_abraham_estimate"], tab.loc[post, "att_gt_estimate"], atol=1e-10)
    # two-stage's leads fill the pre-periods (reference -1); imputation and ETWFE report post only
    assert tab.loc[[-3, -2], "two_stage_did_estimate"].notna().all()
    assert tab.loc[[-3, -2], ["imputation_did_estimate", "etwfe_estimate"]].isna().all().all()
    text = cmp.summary()
    assert "two_stage_did_estimate" in text and "Correlation" in text


@pytest.mark.filterwarnings("ignore::dte_dask.exceptions.DteDaskWarning")
def test_comparison_plot_overlays_six(cmp):
    pytest.importorskip("matplotlib")
    fig = dte_dask.plotting.plot_event_study(cmp, backend="matplotlib")
    labels = [t.get_text() for ax in fig.axes for leg in [ax.get_legend()] if leg for t in leg.get_texts()]
    assert len(labels) >= 6, labels
