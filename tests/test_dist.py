"""``dte_dask.inference.dist`` against ``scipy.stats``: the same bits, edges included; and a job's
modules no longer import ``scipy.stats``."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from dte_dask.inference.dist import chi2_sf, norm_ppf, t_ppf

PROBS = np.concatenate([[0.0, 1.0, -0.1, 1.5, np.nan, 1e-300, 1 - 1e-16, 0.5],
                        np.random.default_rng(7).uniform(size=200), 1 - np.logspace(-12, -1, 23)])
DFS = [-1.0, 0.0, 1e-3, 0.5, 1.0, 2.0, 3.0, 7.5, 29.0, 1e3, 1e9, np.inf, np.nan]


def _same(a, b) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    num = ~np.isnan(a)  # the sign of a zero or an infinity counts, a NaN's does not
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True) and np.array_equal(np.signbit(a[num]), np.signbit(b[num]))


def test_norm_ppf_is_scipy_stats() -> None:
    assert _same(norm_ppf(PROBS), stats.norm.ppf(PROBS))
    for q in (0.975, 0.95, 0.75, 0.25, 1 - 0.05 / 14):
        assert float(norm_ppf(q)) == float(stats.norm.ppf(q))


@pytest.mark.parametrize("df", DFS)
def test_t_ppf_is_scipy_stats(df: float) -> None:
    assert _same(t_ppf(PROBS, df), stats.t.ppf(PROBS, df))
    assert _same(t_ppf(0.975, df), stats.t.ppf(0.975, df))  # scalars, as the results call it


@pytest.mark.parametrize("df", DFS + [1, 4, 60])
def test_chi2_sf_is_scipy_stats(df: float) -> None:
    x = np.array([-1.0, 0.0, 1e-9, 0.3, 1.0, 3.84, 12.5, 80.0, 1e4, np.inf, np.nan])
    assert _same(chi2_sf(x, df), stats.chi2.sf(x, df))
    assert _same(chi2_sf(3.0, df), stats.chi2.sf(3.0, df))


def test_a_job_does_not_import_scipy_stats() -> None:
    """Parsing a job (every registered estimator imported) and the runner, report and checks leave
    ``scipy.stats`` unimported: it costs a process about 0.35 s."""
    code = ("import sys, dte_dask.registry as r, dte_dask.jobs.runner, dte_dask.report, dte_dask.jobs.checks\n"
            "r.list_estimators()\n"
            "print(sorted(m for m in sys.modules if m.startswith('scipy.stats')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
