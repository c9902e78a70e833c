"""Goodman-Bacon (2021) decomposition of the static TWFE coefficient: ``bacon_decomposition``."""
from __future__ import annotations

import time as _time
from typing import Any

import numpy as np
import pandas as pd

from dte_dask.core.bacon import cell_sums, cluster_meat, decompose, twfe_fit, twfe_se
from dte_dask.core.labels import plain
from dte_dask.estimators.event_study import resolve_panel
from dte_dask.estimators.options import BaconOptions
from dte_dask.exceptions import SpecError
from dte_dask.graph.reduce import compute
from dte_dask.graph.regress import exact_sum
from dte_dask.registry import EstimatorEntry, register
from dte_dask.results.bacon import BaconResult

__all__ = ["bacon_decomposition", "BaconResult"]


def bacon_decomposition(
    data: Any,
    *,
    outcome: str | None = None,
    unit: str | None = None,
    time: str | None = None,
    group: str | None = None,
    weights: str | None = None,
    cluster: str | None = None,
    npartitions: int | None = None,
) -> BaconResult:
    """Goodman-Bacon (2021) decomposition of the TWFE coefficient on the treatment dummy.

    .. math:: y_{it} = \\alpha_i + \\lambda_t + \\beta D_{it} + \\varepsilon_{it},\\qquad
              \\hat\\beta = \\sum_{k} s_{kU}\\hat\\beta_{kU} + \\sum_{k<l}
              \\big(s^k_{kl}\\hat\\beta^k_{kl} + s^l_{kl}\\hat\\beta^l_{kl}\\big)

    Every timing group k against the untreated (``treated_vs_never``), every earlier group against
    a later one before the later is treated (``earlier_vs_later``) and every later group against an
    earlier one after it is treated (``later_vs_earlier``, the "forbidden" comparison). The weights
    sum to one and the weighted sum equals the TWFE coefficient (to rounding).

    The panel must be balanced: a DataFrame is loaded keeping the units observed in every period
    (with a warning naming the dropped ones), a Panel is balanced the same way. Sampling weights
    (constant within unit) weight cell means and group shares. Units treated in or before the
    first period (always treated, their dummy is absorbed by the unit effects) and units treated
    after the last period join the never treated in the untreated bucket U, as the paper's footnote
    11 does.

    Two passes over the data, and only (groups x periods) tables and scalars reach the driver: the
    cohort x period sums (every 2x2 comparison, its weight and the TWFE coefficient are closed forms
    in them), then the squared cluster scores of the TWFE coefficient for its CRV1 standard error.
    """
    t0 = _time.perf_counter()
    panel, _ = resolve_panel(data, outcome=outcome, unit=unit, time=time, group=group, covariates=None,
                             weights=weights, cluster=cluster, allow_unbalanced_panel=False,
                             npartitions=npartitions)
    T = panel.n_periods
    timing = tuple(float(g) for g in panel.cohort_sizes if np.isfinite(g) and 0 < g <= T - 1)
    if not timing:
        raise SpecError(f"column {panel.spec.group_source!r}: no cohort is first treated inside the panel "
                        "(after its first period)")
    sums = compute(exact_sum(panel, cell_sums, timing, name="bacon-cells"))[0]
    comps = decompose(sums, timing, T)
    total = sum(c.weight for c in comps)
    fit = twfe_fit(sums, timing, T)
    meat = compute(exact_sum(panel, cluster_meat, timing, fit.dt, fit.shift, name="bacon-twfe-meat"))[0]
    U = len(timing)

    def label(r: int) -> Any:
        return "never_treated" if r == U else str(plain(panel.group_label(timing[r])))

    frame = pd.DataFrame({
        "type": [c.kind for c in comps],
        "treated": [label(c.treated) for c in comps],
        "control": [label(c.control) for c in comps],
        "estimate": [c.estimate for c in comps],
        "weight": [c.weight / total for c in comps],
        "n_treated": [int(sums["units"][c.treated]) for c in comps],
        "n_control": [int(sums["units"][c.control]) for c in comps],
    })
    options = dict(estimator="bacon_decomposition", outcome=panel.spec.outcome, unit=panel.spec.unit,
                   time=panel.spec.time, group=panel.spec.group_source, weights=panel.spec.weights,
                   cluster=panel.spec.cluster)
    return BaconResult(twfe=fit.beta, twfe_se=twfe_se(fit, meat, T), comparisons=frame, n_units=panel.n_units, n_periods=T,
                       options=options, timings={"total": _time.perf_counter() - t0})


register(EstimatorEntry(
    name="bacon_decomposition", function=bacon_decomposition, options=BaconOptions, result="decomposition",
    label="Bacon decomposition", title="Goodman-Bacon (2021) decomposition of TWFE", covariates=False,
    unbalanced=False, bootstrap=False, cost="cells"))
