"""triple_did's design-level fast paths (one propensity logit per design, the cells' influence
functions formed per design and RNG block): against moderndid's ``ddd`` and bit-identical when the
panel is cut into many RNG blocks and partitions."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import dte_dask

md = pytest.importorskip("moderndid")
from moderndid.core.data import gen_ddd_mult_periods

COVS = ["cov1", "cov2", "cov3", "cov4"]


@pytest.fixture(scope="module")
def df():
    return gen_ddd_mult_periods(n=600, dgp_type=1, random_state=7)["data"].to_pandas()


def fit(df, npartitions: int, method: str):
    panel = dte_dask.load_panel(df, outcome="y", unit="id", time="time", group="group",
                                covariates=["partition", *COVS], rng_block_size=64, npartitions=npartitions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dte_dask.triple_did(panel, partition="partition", covariates=COVS, est_method=method,
                                   bootstrap=False)


@pytest.mark.parametrize("method", ["dr", "ipw", "reg"])
def test_many_rng_blocks_match_moderndid_and_any_partitioning(df, method) -> None:
    a, b = fit(df, 1, method), fit(df, 4, method)
    for name in ("att", "se_analytic", "cov_aug"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = md.ddd(df, yname="y", tname="time", idname="id", gname="group", pname="partition",
                   xformla="~" + "+".join(COVS), est_method=method, boot=False)
    idx = {(int(g), int(t)): k for k, (g, t) in enumerate(zip(a.group, a.time))}
    k = np.array([idx[(int(g), int(t))] for g, t in zip(m.groups, m.times)])
    np.testing.assert_allclose(a.att[k], m.att, rtol=0, atol=1e-8 if method != "ipw" else 1e-6)
    np.testing.assert_allclose(a.se_analytic[k], m.se, rtol=1e-6)  # issue 17: SEs to 1e-6
