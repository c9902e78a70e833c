"""dCDH, triple differences and continuous doses give the same bits on the threaded scheduler and on
worker processes (blocks and arguments pickled, results sent back), bootstrap draws included. The
other estimators have their own checks (test_attgt_invariance, test_regress_invariance,
test_robust_did_invariance); tests/test_aligned.py checks the mechanism underneath."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from distributed import Client, LocalCluster

import dte_dask

from .test_continuous_did import _ours as contdid
from .test_did_multiplegt_controls import _sim2
from .test_triple_did import gen_ddd_mult_periods
from .test_triple_did import ours as triple_did

moderndid = pytest.importorskip("moderndid")


def _cases() -> dict:
    dcdh = _sim2()
    ddd = gen_ddd_mult_periods(n=400, dgp_type=1, random_state=3)["data"].to_pandas()
    dose = moderndid.gen_cont_did_data(n=400, seed=3).to_pandas()
    return {
        "did_multiplegt": lambda: dte_dask.did_multiplegt(
            dcdh, "y", "id", "t", "d", npartitions=3, effects=3, placebo=2, controls=["x", "x2"], weights="w",
            rng_block_size=16),
        "did_multiplegt-bootstrap": lambda: dte_dask.did_multiplegt(
            dcdh, "y", "id", "t", "d", npartitions=3, effects=2, placebo=1, bootstrap=True, n_boot=50, seed=2,
            rng_block_size=16),
        "triple_did": lambda: triple_did(ddd, npartitions=3, control_group="not_yet_treated", bootstrap=True,
                                         n_boot=300, seed=11, cluster="cluster"),
        "continuous_did": lambda: contdid(dose, npartitions=3, bootstrap=True, n_boot=300, seed=3),
    }


def _arrays(res) -> dict[str, np.ndarray]:
    out = {k: v for k, v in vars(res).items() if isinstance(v, np.ndarray) and v.dtype.kind == "f"}
    if callable(getattr(res, "vcov", None)):
        out["vcov()"] = np.asarray(res.vcov())
    return out


@pytest.fixture(scope="module")
def both() -> tuple[dict, dict]:
    cases = _cases()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        threaded = {k: _arrays(f()) for k, f in cases.items()}
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl, Client(cl):
            dist = {k: _arrays(f()) for k, f in cases.items()}
    return threaded, dist


@pytest.mark.parametrize("case", ["did_multiplegt", "did_multiplegt-bootstrap", "triple_did", "continuous_did"])
def test_threaded_equals_distributed(both, case):
    threaded, dist = both
    assert len(threaded[case]) >= 3  # estimates, standard errors, ... were found
    assert threaded[case].keys() == dist[case].keys()
    for name, a in threaded[case].items():
        np.testing.assert_array_equal(a, dist[case][name], err_msg=f"{case}: {name}")
