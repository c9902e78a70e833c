"""The dCDH kernels do not depend on the order of the units inside a block: ``prepare`` orders them
by (RNG block, baseline treatment, cluster) so that cells are row segments; a block in any other
order (e.g. comparison groups refined by further variables) is sorted by the kernel. Its sums then
equal those of the ordered block up to rounding."""
from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest

import dte_dask.estimators.did_multiplegt as dm
from dte_dask.core import dcdh


def _frame(seed: int = 5, n: int = 300, periods: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    d0 = rng.integers(0, 3, n).astype(float)
    F = rng.integers(2, periods + 3, n)
    step = rng.choice([-1.0, 1.0, 2.0], n)
    step[d0 + step < 0] = 1.0
    t = np.arange(periods)
    D = d0[:, None] + step[:, None] * (t[None, :] >= F[:, None])
    Y = rng.normal(size=(n, 1)) + 0.5 * D + rng.normal(size=(n, periods))
    Y[:, 3] = np.round(Y[:, 3])  # ties: zero first differences
    Y[:, 2] = np.where(rng.random(n) < 0.3, Y[:, 3], Y[:, 2])
    df = pd.DataFrame({"id": np.repeat(np.arange(n), periods), "t": np.tile(t, n), "y": Y.ravel(),
                       "d": D.ravel(), "cl": np.repeat(np.arange(n) // 4, periods)})
    df.loc[rng.random(len(df)) < 0.03, "y"] = np.nan
    return df.drop(index=df.index[rng.random(len(df)) < 0.02]).reset_index(drop=True)


@pytest.mark.parametrize("cluster", [None, "cl"])
def test_kernels_any_unit_order(monkeypatch, cluster):
    seen = {}
    real = dm.reduce_blocks

    def spy(parts, func, bs, nb, *args):
        seen[func.__name__] = (parts, args)
        return real(parts, func, bs, nb, *args)

    monkeypatch.setattr(dm, "reduce_blocks", spy)
    dm.did_multiplegt(_frame(), "y", "id", "t", "d", effects=3, placebo=2, cluster=cluster)
    (block,) = dask.compute(*seen["influence_stats"][0])
    perm = block.take(np.random.default_rng(0).permutation(block.n))
    for name in ("cell_stats", "influence_stats"):
        args = seen[name][1]
        a, b = getattr(dcdh, name)(block, *args), getattr(dcdh, name)(perm, *args)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-12, atol=1e-12, err_msg=f"{name}[{k}]")
    assert np.any(seen["cell_stats"][1][0].horizons)
