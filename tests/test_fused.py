"""The fused regression passes give the numpy expressions they replace, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from dte_dask.core.fused import add_at_rows, demeaned, put_at_rows, weighted_residuals

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("order", ["C", "F"])
def test_demeaned_rows(order):
    y = np.asarray(RNG.normal(140, 15, size=(517, 19)), order=order)
    y[5, 3] = np.nan
    mean = y.mean(axis=1)
    got = demeaned(y, mean)
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, np.subtract(y, mean[:, None], order="C"))
    view = np.asfortranarray(RNG.normal(size=(300, 30)))[:, 4:22]  # a column slice, as the kernels pass
    np.testing.assert_array_equal(demeaned(view, view[:, 0]), view - view[:, :1])
    with pytest.raises(ValueError, match="means for"):
        demeaned(y, mean[:-1])


@pytest.mark.parametrize("with_q", [False, True])
def test_weighted_residuals(with_q):
    n, R, L = 611, 7, 13
    yt = RNG.normal(size=(n, L)) * 1e3
    F = RNG.normal(size=(R, L))
    row = RNG.integers(0, R, n)
    w = RNG.uniform(0.1, 40, n)
    q = RNG.uniform(0.5, 2, (R, L)) if with_q else None
    ref = yt - F[row]
    ref *= w[:, None] if q is None else w[:, None] * q[row]
    np.testing.assert_array_equal(weighted_residuals(yt, F, row, w, q), ref)
    with pytest.raises(IndexError, match="design row positions"):
        weighted_residuals(yt, F, np.where(row == 0, R, row), w, q)
    with pytest.raises(ValueError, match="residuals of"):
        weighted_residuals(yt, F[:, 1:], row, w, q)


def test_add_at_rows():
    out = RNG.normal(size=(400, 30))
    sel = np.sort(RNG.choice(400, 250, replace=False))
    place = np.r_[0:4, 9:15, 17, 22:30]  # runs of columns, as a design's place in the pooled scores
    values = RNG.normal(size=(sel.size, place.size))
    ref = out.copy()
    ref[np.ix_(sel, place)] += values
    add_at_rows(out, sel, place, values)
    np.testing.assert_array_equal(out, ref)
    every = np.arange(400)  # every unit takes part
    every_values = RNG.normal(size=(400, place.size))
    ref[:, place] += every_values
    add_at_rows(out, every, place, every_values)
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(IndexError, match="column positions"):
        add_at_rows(out, sel, np.r_[place, 30], np.zeros((sel.size, place.size + 1)))
    with pytest.raises(ValueError, match="values"):
        add_at_rows(out, sel, place, values[:-1])


def test_put_at_rows():
    out = RNG.normal(size=(300, 40))
    sel = np.sort(RNG.choice(300, 120, replace=False))
    for place in (np.arange(5, 28), np.array([3, 7, 8, 30])):  # a run of cells, or scattered ones
        values = RNG.normal(size=(sel.size, place.size))
        ref = out.copy()
        ref[np.ix_(sel, place)] = values
        put_at_rows(out, sel, place, values)
        np.testing.assert_array_equal(out, ref)
    with pytest.raises(IndexError, match="row positions"):
        put_at_rows(out, np.r_[sel, 300], place, np.zeros((sel.size + 1, place.size)))
    with pytest.raises(TypeError, match="float64"):
        put_at_rows(out.astype(np.float32), sel, place, values)
