"""The narrow bootstrap products equal the full-width ones (closed form: V (S A) = (V S) A; a
group's rows times only its nonzero columns), and stay bit-identical for any partitioning."""
from __future__ import annotations

import numpy as np
import pytest

import dte_dask
import dte_dask.estimators.event_study as es_mod
import dte_dask.estimators.stacked as st_mod
import dte_dask.graph.attgt as attgt_mod
import dte_dask.graph.regress as regress_mod
from dte_dask.core.multipliers import multipliers
from dte_dask.inference.bootstrap import boot_cover

from .boot_helpers import supported_psi

COLS = dict(outcome="y", unit="unit", time="time", group="group")


def test_multiplier_columns_and_grouped_products():
    for kind in ("rademacher", "mammen"):
        full = multipliers(3, 2, 1, 37, 203, kind)
        cols = np.random.default_rng(0).permutation(203)[:150]
        np.testing.assert_array_equal(multipliers(3, 2, 1, 37, 203, kind, cols=cols), full[:, cols])
    rng = np.random.default_rng(1)
    n, width, bs = 300, 9, 64
    support = [np.array([0, 1, 8]), np.array([2, 3, 4, 8]), None]
    key, psi = supported_psi(rng, n, width, support)
    psi[np.flatnonzero(key == 1)[0], 7] = 1.5  # outside its stated support: that group goes dense
    # float multipliers (150 draws) and signed sums from the bits (300); the dense group stated as
    # None or as every column
    for n_boot, last in ((150, None), (300, None), (300, np.arange(width))):
        kw = dict(seed=4, n_boot=n_boot, block_size=bs, n_blocks=-(-n // bs), n=n, kind="rademacher")
        dense = boot_cover(psi, np.arange(n), **kw).root()
        grouped, gram = boot_cover(psi, np.arange(n), key=key, support=support[:2] + [last], with_gram=True, **kw)
        np.testing.assert_allclose(grouped.root(), dense, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(gram, psi.T @ psi, rtol=1e-12, atol=1e-15)


def _capture(monkeypatch, module):
    fits = []
    real = module.fit_ols

    def spy(*a, **k):
        fits.append(real(*a, **k))
        return fits[-1]

    monkeypatch.setattr(module, "fit_ols", spy)
    return fits


@pytest.fixture(scope="module")
def small_df():
    return dte_dask.simulate_panel(300, 7, seed=3).data.compute(scheduler="synchronous")


@pytest.mark.parametrize("estimator", ["event_study", "stacked_did"])
def test_regression_draws_narrow_equal_full_width(small_df, monkeypatch, estimator):
    module = es_mod if estimator == "event_study" else st_mod
    fits = _capture(monkeypatch, module)
    run = lambda df: getattr(dte_dask, estimator)(df, **COLS, window=(-2, 2), bootstrap=True, n_boot=130, seed=5)
    panel = lambda n: dte_dask.load_panel(small_df, **COLS, npartitions=n, rng_block_size=64)
    narrow = run(panel(1))
    np.testing.assert_array_equal(run(panel(3)).draws, narrow.draws)  # any partitioning
    maps = []
    real_map = regress_mod.coef_map

    def full_width(inv, cols):  # every column's score draws, mapped to the coefficients afterwards
        maps.append(real_map(inv, cols))
        return np.eye(inv.shape[0])

    monkeypatch.setattr(regress_mod, "coef_map", full_width)
    run(panel(1))
    a, b = fits[0], fits[-1]
    assert a.draws.shape[1] == a.draw_cols.size < b.draws.shape[1]  # the product is narrower
    np.testing.assert_allclose(a.draws, b.draws @ maps[0], rtol=1e-12, atol=1e-12 * np.abs(a.draws).max())


def test_attgt_support_grouping_equals_dense_and_is_partition_invariant(small_df, monkeypatch):
    kw = dict(covariates=["age"], control_group="not_yet_treated", n_boot=130, seed=8)
    fit = lambda n: dte_dask.att_gt(dte_dask.load_panel(small_df, **COLS, covariates=["age"], npartitions=n,
                                                        rng_block_size=64), **{k: v for k, v in kw.items()
                                                                               if k != "covariates"})
    one, three = fit(1), fit(3)
    np.testing.assert_array_equal(one.draws_aug, three.draws_aug)
    np.testing.assert_array_equal(one.se_analytic, three.se_analytic)  # the Gram from the groups, too
    monkeypatch.setattr(attgt_mod, "_cohort_support", lambda block, cells, groups: (None, ()))
    dense = fit(1)
    np.testing.assert_allclose(one.draws_aug, dense.draws_aug, rtol=1e-12, atol=1e-12 * np.abs(dense.draws_aug).max())
    unboot = dte_dask.att_gt(dte_dask.load_panel(small_df, **COLS, covariates=["age"], npartitions=1, rng_block_size=64),
                             control_group="not_yet_treated", bootstrap=False)  # the dense Gram
    for grouped in (one, dense):
        np.testing.assert_allclose(grouped.se_analytic, unboot.se_analytic, rtol=1e-12)
        np.testing.assert_allclose(grouped.aggregate("dynamic").vcov(), unboot.aggregate("dynamic").vcov(),
                                   rtol=1e-10, atol=1e-14)  # the cohort-share columns of the Gram too


def test_affine_route_draws_equal_the_influence_route(small_df):
    """Balanced, no covariates: the affine (category) bootstrap against Psi formed unit by unit
    (the same data clustered by unit takes the influence route), and 1 vs 3 partitions."""
    df = small_df.assign(cl=small_df["unit"])
    fit = lambda n, **k: dte_dask.att_gt(dte_dask.load_panel(df, **COLS, npartitions=n, rng_block_size=64, **k),
                                         control_group="not_yet_treated", n_boot=130, seed=2)
    one = fit(1)
    np.testing.assert_array_equal(one.draws_aug, fit(3).draws_aug)
    by_unit = fit(1, cluster="cl")
    np.testing.assert_allclose(one.draws_aug, by_unit.draws_aug, rtol=1e-12, atol=1e-12 * np.abs(one.draws_aug).max())
