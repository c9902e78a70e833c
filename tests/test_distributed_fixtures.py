"""Cluster paths under distributed's own test fixtures (``distributed.utils_test``)."""
from __future__ import annotations

import dask
import numpy as np
import pytest
from distributed.utils_test import cleanup, client, cluster_fixture, loop, loop_in_thread  # noqa: F401

import dte_dask


@pytest.fixture(scope="module")
def mpdta():
    return dte_dask.datasets.load_mpdta()


def test_panel_blocks_live_on_the_workers_and_results_match_threaded(client, mpdta):  # noqa: F811
    kw = dict(outcome="lemp", unit="countyreal", time="year", group="first_treat")
    panel = dte_dask.load_panel(mpdta, **kw, npartitions=2, rng_block_size=128)
    on_workers = {k for keys in client.has_what().values() for k in keys}
    assert {b.key for b in panel.blocks} <= on_workers  # persisted on the workers, not on the driver
    dist = dte_dask.att_gt(panel, n_boot=99, seed=8, covariates=None)
    with dask.config.set(scheduler="sync"):  # the same panel layout, without the cluster
        local = dte_dask.att_gt(dte_dask.load_panel(mpdta, **kw, npartitions=1, rng_block_size=128),
                                n_boot=99, seed=8)
    np.testing.assert_array_equal(dist.att, local.att)
    np.testing.assert_array_equal(dist.draws_aug, local.draws_aug)
    dyn_d, dyn_l = dist.aggregate("dynamic"), local.aggregate("dynamic")
    np.testing.assert_array_equal(dyn_d.se, dyn_l.se)
