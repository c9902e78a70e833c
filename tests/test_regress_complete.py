"""The closed forms of the regression kernels for RNG blocks whose units are observed in every period
(``core.within._complete``: balanced panels without covariates) and the per-RNG-block score pass
(``core.ols.scores_meat``): pyfixest parity with sampling weights, a panel mixing complete and
incomplete RNG blocks, and bit-identity across partitionings."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import dte_dask
from dte_dask.core import within

from .test_stacked import build_stacked

COLS = dict(outcome="y", unit="unit", time="time", group="group")
NEVER = -1000
BS = 64  # small RNG blocks: several per partition, some complete and some not


def _frame(drop_units: int) -> pd.DataFrame:
    """A balanced panel with sampling weights and clusters; the first ``drop_units`` units (the
    first RNG blocks) miss one period each, so that their blocks take the general kernels."""
    df = dte_dask.simulate_panel(320, 8, seed=11).data.compute(scheduler="sync")
    df["wt"] = 1.0 + (df["unit"] % 5) / 4.0
    df["cl"] = df["unit"] // 4
    units = np.sort(df["unit"].unique())[:drop_units]
    miss = df["unit"].isin(units) & (df["time"] == df["time"].min() + df["unit"] % 8)
    return df[~miss].reset_index(drop=True)


@pytest.fixture(scope="module")
def mixed() -> pd.DataFrame:
    return _frame(drop_units=100)


def _feols(df: pd.DataFrame, fml: str, **kw):
    pf = pytest.importorskip("pyfixest")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pf.feols(fml, data=df, fixef_tol=1e-14, **kw).tidy()


def _panel(df: pd.DataFrame, npartitions: int, **kw):
    return dte_dask.load_panel(df, **COLS, weights="wt", npartitions=npartitions, rng_block_size=BS,
                               allow_unbalanced_panel=True, **kw)


def test_fast_path_taken_on_complete_blocks(mixed):
    """The panel really mixes both kernels: the first RNG block is incomplete, the last complete."""
    import dask

    from dte_dask.estimators.event_study import _es_design, _es_layout, treated_cohorts

    panel = _panel(mixed, 1)
    block = dask.compute(panel.blocks[0], scheduler="sync")[0]
    cohorts = treated_cohorts(panel)
    spec, _ = _es_design(panel, cohorts, _es_layout(sorted({t - g for g in cohorts for t in range(8)}), -3, 3, -1, True),
                         [], True)
    assert within._complete(block.take(slice(0, BS)), spec) is None
    assert within._complete(block.take(slice(block.n - BS, block.n)), spec) is not None


@pytest.mark.peer
@pytest.mark.parametrize("vcov", ["unit", "cl"])
@pytest.mark.parametrize("drop_units", [0, 100], ids=["balanced", "mixed"])
def test_weighted_event_study_matches_pyfixest(drop_units, vcov):
    df = _frame(drop_units)
    res = dte_dask.event_study(_panel(df, 3, cluster=None if vcov == "unit" else "cl"), window=(-3, 3))
    df = df.assign(treated=(df["group"] > 0).astype(float),
                   relw=np.where(df["group"] > 0, (df["time"] - df["group"]).clip(-3, 3), NEVER))
    tid = _feols(df, "y ~ i(relw, treated, ref=-1) | unit + time", weights="wt", vcov={"CRV1": vcov})
    tid = tid[tid.index.str.startswith("rel")]
    np.testing.assert_allclose(res.coef, tid["Estimate"].to_numpy(), rtol=0, atol=1e-8)
    np.testing.assert_allclose(res.se, tid["Std. Error"].to_numpy(), rtol=1e-6)


@pytest.mark.peer
def test_weighted_stacked_matches_pyfixest_on_mixed_blocks(mixed):
    res = dte_dask.stacked_did(_panel(mixed, 2), window=(-2, 2))
    st = build_stacked(mixed, -2, 2, "not_yet_treated")
    tid = _feols(st.assign(Qw=st["Q"] * st["wt"]), "y ~ i(event_time, treat, ref=-1) | unit_stack + time_stack",
                 weights="Qw", vcov={"CRV1": "unit"})
    np.testing.assert_allclose(res.coef, tid["Estimate"].to_numpy(), rtol=0, atol=1e-8)
    np.testing.assert_allclose(res.se, tid["Std. Error"].to_numpy(), rtol=1e-6)


CASES = {
    "event-study": lambda p: dte_dask.event_study(p, window=(-3, 3)),
    "event-study-boot": lambda p: dte_dask.event_study(p, window=(-3, 3), bootstrap=True, n_boot=29, seed=2),
    "stacked-boot": lambda p: dte_dask.stacked_did(p, window=(-2, 2), bootstrap=True, n_boot=29, seed=2),
    "event-study-bits": lambda p: dte_dask.event_study(p, window=(-3, 3), bootstrap=True, n_boot=300, seed=2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_mixed_blocks_identical_for_any_npartitions(mixed, case):
    fit = CASES[case]
    ref = fit(_panel(mixed, 1))
    for k in (3, 5):
        other = fit(_panel(mixed.sample(frac=1.0, random_state=k), k))
        for name in ("coef", "se", "cov", "draws"):
            a, b = getattr(ref, name), getattr(other, name)
            if a is None:
                assert b is None
            else:
                np.testing.assert_array_equal(a, b, err_msg=name)
        if ref.cohorts is not None:
            pd.testing.assert_frame_equal(ref.cohorts, other.cohorts, check_exact=True)
