"""Rows over their stated support: numpy's gather, and the support checked row by row."""
from __future__ import annotations

import numpy as np
import pytest

from dte_dask.inference.support import support_rows


def _psi(seed=0, n=300, K=40):
    rng = np.random.default_rng(seed)
    S = np.zeros((n, K))
    cols = np.sort(rng.choice(K, 9, replace=False))
    S[:, cols] = rng.normal(size=(n, cols.size))
    S[rng.random((n, K)) < 0.1] = 0.0  # zeros inside the support too
    return rng, S, cols


@pytest.mark.parametrize("order", ["C", "F"])
def test_rows_over_their_support_equal_numpy(order):
    rng, S, cols = _psi()
    S = np.asarray(S, order=order)
    rows = rng.permutation(S.shape[0])[:170]
    for c in (cols, cols[::-1], cols[:1]):  # any order of the columns; one column
        sub, inside = support_rows(S, rows, c)
        np.testing.assert_array_equal(sub, S[np.ix_(rows, c)])
        assert inside is (c.size == cols.size)  # a narrower support leaves nonzeros outside it


def test_one_nonzero_outside_the_support_is_found():
    rng, S, cols = _psi(1)
    rows = np.arange(50, 120)
    assert support_rows(S, rows, cols)[1] is True
    outside = np.setdiff1d(np.arange(S.shape[1]), cols)[3]
    S[99, outside] = 1e-300  # tiny, still not zero
    assert support_rows(S, rows, cols)[1] is False
    assert support_rows(S, np.arange(50, 99), cols)[1] is True  # rows without it
    S[99, outside] = np.nan  # a NaN counts as a nonzero, as in np.count_nonzero
    assert support_rows(S, rows, cols)[1] is False


def test_other_dtypes_no_rows_and_bad_positions():
    rng, S, cols = _psi(2)
    sub, inside = support_rows(S.astype(np.float32), np.arange(10), cols)
    assert sub.dtype == np.float32 and inside
    np.testing.assert_array_equal(sub, S.astype(np.float32)[:10][:, cols])
    sub, inside = support_rows(S, np.arange(0), cols)
    assert sub.shape == (0, cols.size) and inside
    with pytest.raises(IndexError, match="column positions"):
        support_rows(S, np.arange(3), np.array([0, S.shape[1]]))
    with pytest.raises(IndexError, match="row positions -1"):
        support_rows(S, np.array([-1, 2]), cols)
    with pytest.raises(ValueError, match="each column once"):
        support_rows(S, np.arange(3), np.array([1, 1]))
