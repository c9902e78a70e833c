"""Bundled example data sets."""
from __future__ import annotations

from importlib import resources

import pandas as pd


def load_mpdta() -> pd.DataFrame:
    """The minimum-wage county panel of Callaway & Sant'Anna (2021), as shipped with R ``did``.

    500 US counties, 2003–2007. Columns ``year``, ``countyreal`` (unit), ``lpop`` (log population,
    time-invariant), ``lemp`` (log teen employment), ``first_treat`` (0 = never treated), ``treat``.

    Source: Callaway, B. and Sant'Anna, P. H. C. (2021), "Difference-in-Differences with multiple
    time periods", Journal of Econometrics 225(2), 200–230; R package ``did``.
    """
    with resources.files("dte_dask.data").joinpath("mpdta.csv").open("rb") as fh:
        return pd.read_csv(fh)
