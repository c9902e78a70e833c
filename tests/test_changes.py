"""The outcome-changes kernel gives numpy's numbers bit for bit, in any layout."""
from __future__ import annotations

import numpy as np
import pytest

from dte_dask.core.changes import ROWS, outcome_changes


def _numpy(y, idx, t, base, scale=None):
    d = y[idx][:, t] - y[idx][:, base]
    return d if scale is None else d * scale[:, None]


def _case(n=2 * ROWS + 37, T=11, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.normal(scale=1e4, size=(n, T)) + rng.normal(size=(n, T))  # large levels, small changes
    y[rng.random((n, T)) < 0.02] = np.nan  # missing outcomes propagate
    idx = np.flatnonzero(rng.random(n) < 0.6)
    t = np.array([1, 2, 3, 5, 6, 7, 10])
    base = np.array([0, 1, 2, 4, 4, 4, 4])  # varying, then one base period: R did's "varying"
    return y, idx, t, base, rng.normal(size=idx.size)


@pytest.mark.parametrize("y_order", ["C", "F"])
@pytest.mark.parametrize("scaled", [False, True])
def test_changes_equal_numpy_bit_for_bit(y_order, scaled):
    y, idx, t, base, scale = _case()
    y = np.asarray(y, order=y_order)
    s = scale if scaled else None
    ref = _numpy(y, idx, t, base, s)
    got = outcome_changes(y, idx, t, base, scale=s)
    assert got.flags.f_contiguous and got.shape == (idx.size, t.size)
    np.testing.assert_array_equal(got, ref)  # NaNs in the same places, every other value identical
    # written into a row-major slice of a wider array, as the influence functions' terms are
    L = np.full((idx.size, t.size + 5), 7.0)
    outcome_changes(y, idx, t, base, out=L[:, 2:2 + t.size], scale=s)
    np.testing.assert_array_equal(L[:, 2:2 + t.size], ref)
    assert (L[:, :2] == 7.0).all() and (L[:, 2 + t.size:] == 7.0).all()


def test_changes_of_no_rows_or_no_cells():
    y, idx, t, base, _ = _case(n=50)
    assert outcome_changes(y, idx[:0], t, base).shape == (0, t.size)
    assert outcome_changes(y, idx, t[:0], base[:0]).shape == (idx.size, 0)


def test_changes_refuse_mismatched_arguments():
    y, idx, t, base, scale = _case(n=50)
    with pytest.raises(ValueError, match="current periods against"):
        outcome_changes(y, idx, t, base[:-1])
    with pytest.raises(ValueError, match="out has shape"):
        outcome_changes(y, idx, t, base, out=np.empty((idx.size + 1, t.size)))
    with pytest.raises(ValueError, match="row factors"):
        outcome_changes(y, idx, t, base, scale=scale[:-1])
    with pytest.raises(IndexError, match="row positions"):
        outcome_changes(y, np.append(idx, y.shape[0]), t, base)
    with pytest.raises(IndexError, match="base period positions -1"):
        outcome_changes(y, idx, t, base - 1)
    with pytest.raises(TypeError, match="float64"):
        outcome_changes(y.astype(np.float32), idx, t, base)
