"""did_multiplegt / twowayfeweights on dask input: a parquet directory (several files, read lazily)
and an unsorted dask DataFrame (shuffled by entity on the workers) give results bit-identical to the
pandas input and to moderndid's numbers, and the driver never gathers the frame: ``compute`` on the
dask frame is forbidden and every pivot task sees one partition only."""
from __future__ import annotations

import warnings

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

import dte_dask
from dte_dask.exceptions import MissingColumnError
from dte_dask.panel import wide

md = pytest.importorskip("moderndid")


@pytest.fixture(scope="module")
def mixed() -> pd.DataFrame:
    """Baselines 0/1/2, switches up or down (some back again), missing outcomes and rows, clusters
    of whole units, row weights."""
    rng = np.random.default_rng(7)
    n, periods = 400, 8
    d0 = rng.integers(0, 3, n).astype(float)
    F = rng.integers(2, periods + 3, n)
    step = rng.choice([-1.0, 1.0, 2.0], n)
    step[d0 + step < 0] = 1.0
    back = rng.integers(2, 2 * periods, n)
    t = np.arange(periods)
    on = (t[None, :] >= F[:, None]) & (t[None, :] < F[:, None] + back[:, None])
    D = d0[:, None] + step[:, None] * on
    Y = rng.normal(size=(n, 1)) + 0.2 * t[None, :] + 0.7 * D + rng.normal(size=(n, periods))
    df = pd.DataFrame({"id": np.repeat(np.arange(n), periods), "t": np.tile(t, n) + 1990, "y": Y.ravel(),
                       "d": D.ravel(), "cl": np.repeat(np.arange(n) // 7, periods),
                       "w": np.repeat(rng.uniform(0.5, 2.0, n), periods)})
    df.loc[rng.random(len(df)) < 0.03, "y"] = np.nan
    return df.drop(index=df.index[rng.random(len(df)) < 0.02]).reset_index(drop=True)


@pytest.fixture(scope="module")
def parquet_dir(mixed, tmp_path_factory) -> str:
    """Sorted by unit, four files with disjoint unit ranges (as ``dte-dask simulate`` writes)."""
    path = tmp_path_factory.mktemp("dcdh") / "panel"
    dd.from_pandas(mixed, npartitions=4, sort=False).to_parquet(str(path), write_index=False)
    return str(path)


@pytest.fixture()
def no_gather(monkeypatch, mixed):
    """Fail if the dask frame is computed on the driver or a pivot task gets more than a partition."""
    def refuse(self, *a, **k):
        raise AssertionError("the dask frame was gathered on the driver")

    sizes = []
    pivot = wide.frame_to_dcdh

    def spy(df, *a, **k):
        sizes.append(len(df))
        return pivot(df, *a, **k)

    monkeypatch.setattr(dd.DataFrame, "compute", refuse)
    monkeypatch.setattr(wide, "frame_to_dcdh", spy)
    yield sizes
    assert len(sizes) >= 3 and max(sizes) < len(mixed)


def _same(a, b):
    fa, fb = a.to_frame(), b.to_frame()
    for c in ("estimate", "se", "n_switchers", "n_obs"):
        np.testing.assert_array_equal(fa[c], fb[c])
    np.testing.assert_array_equal(a.vcov(), b.vcov())
    assert a.ate == b.ate and a.n_units == b.n_units and a.n_clusters == b.n_clusters


KW = {"effects": 3, "placebo": 2, "rng_block_size": 64}


EXTRA = {"unit": {}, "cluster_weights": {"cluster": "cl", "weights": "w"}}


@pytest.fixture(scope="module")
def pandas_refs(mixed):
    """Results from the pandas frame (computed before the driver is watched)."""
    out = {k: dte_dask.did_multiplegt(mixed, "y", "id", "t", "d", npartitions=1, **KW, **v) for k, v in EXTRA.items()}
    out["twfe"] = dte_dask.twowayfeweights(mixed, "y", "id", "t", "d", rng_block_size=64)
    return out


@pytest.mark.parametrize("case", list(EXTRA))
def test_parquet_lazy_bit_identical(mixed, parquet_dir, pandas_refs, no_gather, case):
    extra = EXTRA[case]
    ref = pandas_refs[case]
    got = dte_dask.did_multiplegt(parquet_dir, "y", "id", "t", "d", npartitions=5, **KW, **extra)
    _same(ref, got)
    lazy = dd.read_parquet(parquet_dir)
    _same(ref, dte_dask.did_multiplegt(lazy, "y", "id", "t", "d", npartitions=3, **KW, **extra))
    if not extra:  # independent reference for the numbers themselves
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = md.did_multiplegt(mixed, yname="y", idname="id", tname="t", dname="d", effects=3, placebo=2)
        np.testing.assert_allclose(got.estimates, np.r_[m.effects.estimates, m.placebos.estimates], atol=1e-8)
        np.testing.assert_allclose(got.se, np.r_[m.effects.std_errors, m.placebos.std_errors], rtol=1e-6)


def test_unsorted_dask_frame_shuffled_by_entity(mixed, pandas_refs):
    """Rows in random order across partitions: the frame is shuffled by entity on the workers."""
    shuffled = mixed.sample(frac=1.0, random_state=3).reset_index(drop=True)
    ddf = dd.from_pandas(shuffled, npartitions=4, sort=False)
    for case, extra in EXTRA.items():
        _same(pandas_refs[case], dte_dask.did_multiplegt(ddf, "y", "id", "t", "d", npartitions=4, **KW, **extra))


def test_twowayfeweights_parquet(parquet_dir, pandas_refs, no_gather):
    ref = pandas_refs["twfe"]
    got = dte_dask.twowayfeweights(parquet_dir, "y", "id", "t", "d", npartitions=3, rng_block_size=64)
    assert (got.beta_fe, got.n_negative, got.sum_negative) == (ref.beta_fe, ref.n_negative, ref.sum_negative)
    pd.testing.assert_frame_equal(got.by_period, ref.by_period)


def test_dask_errors(mixed, parquet_dir):
    with pytest.raises(MissingColumnError, match="nope"):
        dte_dask.did_multiplegt(parquet_dir, "nope", "id", "t", "d")
    dup = dd.from_pandas(pd.concat([mixed, mixed.iloc[:1]]), npartitions=2)
    with pytest.raises(dte_dask.exceptions.PanelError, match="duplicate rows for unit 0"):
        dte_dask.did_multiplegt(dup, "y", "id", "t", "d")
