"""Cluster paths under distributed's own test fixtures (``distributed.utils_test.gen_cluster``).

``gen_cluster`` starts the scheduler and two workers in this process, with a time limit, and hands
the test an asynchronous client that is the default client. Our API is synchronous, so the test
calls it from a thread (``asyncio.to_thread``), where the client's methods block as they do for a
user. (The process-based ``client`` fixture, used here before, waits without a time limit for its
subprocesses to report their addresses.)
"""
from __future__ import annotations

import asyncio

import dask
import numpy as np
import pytest
from distributed.utils_test import gen_cluster

import dte_dask

KW = dict(outcome="lemp", unit="countyreal", time="year", group="first_treat")


@pytest.fixture(scope="module")
def mpdta():
    return dte_dask.datasets.load_mpdta()


def _compare(c, mpdta):
    """Runs in a thread: the synchronous API against the test's cluster, then without it."""
    panel = dte_dask.load_panel(mpdta, **KW, npartitions=2, rng_block_size=128)
    on_workers = {k for keys in c.has_what().values() for k in keys}
    assert {b.key for b in panel.blocks} <= on_workers  # persisted on the workers, not on the driver
    dist = dte_dask.att_gt(panel, n_boot=99, seed=8, covariates=None)
    dyn_d = dist.aggregate("dynamic")
    with dask.config.set(scheduler="sync"):  # the same panel layout, without the cluster
        local = dte_dask.att_gt(dte_dask.load_panel(mpdta, **KW, npartitions=1, rng_block_size=128),
                                n_boot=99, seed=8)
        dyn_l = local.aggregate("dynamic")
    np.testing.assert_array_equal(dist.att, local.att)
    np.testing.assert_array_equal(dist.draws_aug, local.draws_aug)
    np.testing.assert_array_equal(dyn_d.se, dyn_l.se)


@gen_cluster(client=True, timeout=180)
async def test_panel_blocks_live_on_the_workers_and_results_match_threaded(c, s, a, b, mpdta):
    await asyncio.to_thread(_compare, c, mpdta)
    assert a.state.executed_count + b.state.executed_count > 0  # the fit's tasks ran on these workers
