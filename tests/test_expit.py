"""The logistic function of the propensity logits (``core.regression.expit``)."""
import warnings

import numpy as np
import pytest
from scipy.special import expit as scipy_expit

from dte_dask.core.regression import expit


def _two_branch(z: np.ndarray) -> np.ndarray:
    """The textbook overflow-free form, element by element (the reference)."""
    out = np.empty_like(z)
    for i, v in enumerate(z):
        if v >= 0:
            out[i] = 1.0 / (1.0 + np.exp(-v))
        else:
            ez = np.exp(v)
            out[i] = ez / (1.0 + ez)
    return out


@pytest.mark.parametrize("scale", [0.5, 4.0, 40.0, 800.0])
def test_expit_is_the_two_branch_formula_bit_for_bit(scale):
    z = np.random.default_rng(1).standard_normal(4000) * scale
    z[::17], z[::19] = 0.0, -0.0
    np.testing.assert_array_equal(expit(z), _two_branch(z))


def test_expit_matches_scipy_and_never_overflows():
    z = np.r_[np.linspace(-50, 50, 2001), -1e308, -745.2, -709.8, 709.8, 1e308, -np.inf, np.inf]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow, no invalid value
        p = expit(z)
    np.testing.assert_allclose(p, scipy_expit(z), rtol=1e-15, atol=1e-300)  # (subnormals differ)
    assert p[-2] == 0.0 and p[-1] == 1.0
    assert np.all((p >= 0) & (p <= 1)) and np.all(np.diff(p[:2001]) >= 0)


def test_expit_keeps_nan_and_takes_lists_and_ints():
    assert np.isnan(expit(np.array([np.nan]))[0])
    np.testing.assert_array_equal(expit([0, 1, -1]), _two_branch(np.array([0.0, 1.0, -1.0])))
