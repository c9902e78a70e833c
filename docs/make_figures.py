"""Regenerate the figures of the README: ``python docs/make_figures.py`` (needs ``dte_dask[plot]``)."""
from __future__ import annotations

import os

import dask

import dte_dask
from dte_dask.plotting import save_figure

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    df = dte_dask.datasets.load_mpdta()
    with dask.config.set(scheduler="threads"):
        res = dte_dask.att_gt(df, outcome="lemp", unit="countyreal", time="year", group="first_treat",
                              control_group="never_treated", est_method="dr", n_boot=999, seed=1)
    fig = res.plot("dynamic", backend="matplotlib",
                   title="mpdta: effect of the minimum wage on teen employment (Callaway-Sant'Anna, dynamic)")
    out = save_figure(fig, os.path.join(HERE, "img", "mpdta_event_study.png"))
    print(out)


if __name__ == "__main__":
    main()
