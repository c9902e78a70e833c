"""Shared, generic fixtures. Every fixture hands out a fresh object, so a test may not affect another."""
from __future__ import annotations

import pandas as pd
import pytest


@pytest.fixture
def mpdta() -> pd.DataFrame:
    """The mpdta county panel of R ``did`` (year, countyreal, lpop, lemp, first_treat, treat)."""
    from dte_dask.datasets import load_mpdta

    return load_mpdta()


@pytest.fixture(scope="session")
def _small_sim() -> pd.DataFrame:
    from dte_dask.simulate import simulate_panel

    return simulate_panel(300, 5, seed=3, npartitions=1).data.compute(scheduler="sync")


@pytest.fixture
def small_panel(_small_sim: pd.DataFrame) -> pd.DataFrame:
    """A small simulated long panel (pandas): 300 units x 5 periods, columns ``unit, time, y,
    group, treat, age, bmi, female``, sorted by (unit, time)."""
    return _small_sim.copy()
