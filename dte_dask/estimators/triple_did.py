"""Triple differences (Ortiz-Villavicencio & Sant'Anna 2025): ``triple_did`` (R ``triplediff::ddd``)."""
from __future__ import annotations

import time as _time
from collections.abc import Sequence
from typing import Any

import dask
import numpy as np

from dte_dask.core.blocks import UnitBlock
from dte_dask.core.cells import BasePeriod, ControlGroup
from dte_dask.estimators.cs import as_panel, cells_for
from dte_dask.estimators.options import (
    BootWeights,
    EstMethod,
    InferenceOptions,
    TripleDidOptions,
    parse_options,
)
from dte_dask.exceptions import PanelError, SpecError
from dte_dask.graph.ddd import fit_ddd, local_passes
from dte_dask.inference.bands import band_crit, boot_se
from dte_dask.inference.bootstrap import check_bootstrap_cost
from dte_dask.inference.variance import analytic_se, covariance
from dte_dask.panel.panel import Panel
from dte_dask.registry import AGGREGATIONS, EstimatorEntry, register
from dte_dask.results.attgt import AttgtResult


def triple_did(
    data: Any,
    *,
    outcome: str | None = None,
    unit: str | None = None,
    time: str | None = None,
    group: str | None = None,
    partition: str | None = None,
    covariates: Sequence[str] | str | None = None,
    control_group: ControlGroup = "never_treated",
    base_period: BasePeriod = "universal",
    est_method: EstMethod = "dr",
    weights: str | None = None,
    cluster: str | None = None,
    allow_unbalanced_panel: bool = False,
    bootstrap: bool = True,
    n_boot: int = 999,
    boot_weights: BootWeights = "rademacher",
    uniform_bands: bool = True,
    alpha: float = 0.05,
    seed: int | None = None,
    npartitions: int | None = None,
) -> AttgtResult:
    """Group-time ATT(g,t) of triple differences (Ortiz-Villavicencio & Sant'Anna 2025).

    Units adopt in cohorts ``group`` (first treated period; 0 / NaN / inf never), and within a
    cohort only the eligible ones (``partition`` = 1) are treated. ATT(g,t) of the treated and
    eligible units combines three 2x2 comparisons, each with DRDID's panel estimator (reg / ipw /
    dr, own propensity score and outcome regression): DiD[(g,1) vs (g,0)] + DiD[(g,1) vs (gc,1)]
    - DiD[(g,1) vs (gc,0)], the paper's covariate-adjusted estimator (a difference of two DiDs is
    biased with covariates). With ``not_yet_treated`` controls every comparison cohort gc of a cell
    gives one such estimate and they are combined with GMM weights (eq. 4.11-4.12). Numbers as
    moderndid's ``ddd`` (a port of R ``triplediff``); the two-period design is the case of one
    cohort and two periods.

    Parameters
    ----------
    data : anything :func:`dte_dask.load_panel` accepts (or a Panel whose first covariate is
        ``partition``)
    outcome, unit, time, group, partition, covariates, weights, cluster : column names
        ``partition``: 0/1 eligibility, constant within a unit. Covariates are read in the earlier
        period of each 2x2 (time-invariant covariates: any period).
    control_group : "never_treated" | "not_yet_treated"
    base_period : "universal" (default, as triplediff) | "varying"
    est_method : "dr" | "reg" | "ipw"
    allow_unbalanced_panel : bool
        Keep units missing in some periods: each 2x2 uses the units observed in both of its
        periods (moderndid's ``ddd`` with ``allow_unbalanced_panel=True``); influence functions
        stay on the scale of all units. False drops the units not observed in every period.
    bootstrap, n_boot, boot_weights, uniform_bands, alpha, seed : the multiplier bootstrap of
        :func:`dte_dask.att_gt` (sup-t uniform bands over the cells; unit blocks keyed RNG).

    Returns
    -------
    AttgtResult
        ``aggregate("simple" | "dynamic" | "group" | "calendar")`` as for ``att_gt``. For cells
        that combine several comparison cohorts ``options["se_gmm"]`` holds triplediff's GMM
        standard errors sqrt(1 / (n 1'Omega^-1 1)) (the reported SEs are those of the influence
        functions, which the aggregations and the bootstrap use).
    """
    t0 = _time.perf_counter()
    opt = parse_options(TripleDidOptions, partition=partition, control_group=control_group,
                        base_period=base_period, est_method=est_method)
    inf = parse_options(InferenceOptions, bootstrap=bootstrap, n_boot=n_boot, seed=seed, alpha=alpha,
                        boot_weights=boot_weights, uniform_bands=uniform_bands)
    if opt.partition is None:
        raise SpecError("triple_did needs partition=<eligibility column> (1 eligible, 0 not)")
    covs = [covariates] if isinstance(covariates, str) else list(covariates or [])
    if opt.partition in covs:
        raise SpecError(f"partition column {opt.partition!r} cannot also be a covariate")
    if inf.bootstrap:
        check_bootstrap_cost(inf.n_boot, n_entities=None, width=None, kind=inf.boot_weights)
    if isinstance(data, Panel):
        if opt.partition not in data.spec.covariates:
            raise SpecError(f"partition column {opt.partition!r} must be one of the panel's covariates "
                            f"{list(data.spec.covariates)} (load_panel(..., covariates=[partition, ...]))")
        rest = [c for c in data.spec.covariates if c != opt.partition]
        if covariates is not None and covs != rest:
            raise SpecError(f"covariates={covs!r} differ from the panel's {rest} (its covariates but the partition)")
        covs = None
    panel = as_panel(data, outcome=outcome, unit=unit, time=time, group=group, treatment=None,
                     covariates=None if covs is None else [opt.partition, *covs], weights=weights, cluster=cluster,
                     npartitions=npartitions, allow_unbalanced_panel=allow_unbalanced_panel)
    qcol = list(panel.spec.covariates).index(opt.partition)
    with local_passes(panel):
        _check_partition(panel, opt.partition, qcol)
    t_load = _time.perf_counter()
    cells, glist = cells_for(panel, opt.control_group, 0, opt.base_period)
    if inf.bootstrap:
        check_bootstrap_cost(inf.n_boot, n_entities=panel.n_entities, width=cells.K + glist.size,
                             kind=inf.boot_weights, block_size=panel.rng_block_size)
    seed = int(np.random.SeedSequence().entropy) if inf.seed is None else int(inf.seed)

    def label(idx: float) -> Any:
        return panel.group_label(float(idx))

    with local_passes(panel):
        res = fit_ddd(panel, cells, qcol=qcol, method=opt.est_method, groups=glist,
                      n_boot=inf.n_boot if inf.bootstrap else 0, seed=seed, boot_weights=inf.boot_weights, label=label)
    fit = res.fit
    t_fit = _time.perf_counter()
    K = cells.K
    cov = covariance(fit.gram, fit.n)
    se_a = np.where(fit.ok, analytic_se(cov[:K, :K]), np.nan)
    se_b = None
    crit = band_crit(None, se_a, inf.alpha, False, fallback=False)
    if fit.draws is not None:
        se_b = np.where(fit.ok, boot_se(fit.draws[:, :K], np.sqrt(fit.n_clusters)), np.nan)
        crit = band_crit(fit.draws[:, :K], se_b, inf.alpha, inf.uniform_bands, fallback=False)
    spec = panel.spec
    options = dict(partition=opt.partition, control_group=opt.control_group, anticipation=0,
                   base_period=opt.base_period, est_method=opt.est_method, covariates=[c for c in spec.covariates if c != opt.partition],
                   weights=spec.weights, cluster=spec.cluster, allow_unbalanced_panel=allow_unbalanced_panel,
                   panel=True, bootstrap=inf.bootstrap, n_boot=inf.n_boot if inf.bootstrap else 0,
                   boot_weights=inf.boot_weights, uniform_bands=inf.uniform_bands, alpha=inf.alpha,
                   outcome=spec.outcome, unit=spec.unit, time=spec.time,
                   se_gmm=[None if not np.isfinite(v) else float(v) for v in res.se_gmm],
                   n_comparison_groups=[int(v) for v in res.n_comparisons])
    step = panel.periods.event_step
    return AttgtResult(
        group=np.array([label(g) for g in cells.g]), time=np.array([label(t) for t in cells.t]),
        event_time=(cells.event_time * step).astype(np.int64), att=fit.att, se_analytic=se_a, se_boot=se_b,
        crit=crit, n_treated=fit.n_treated, n_control=fit.n_control, cov_aug=cov, draws_aug=fit.draws,
        groups=np.array([label(g) for g in glist]), pg=fit.pg, reference=cells.reference, n_units=fit.n,
        n_clusters=fit.n_clusters, g_index=cells.g, t_index=cells.t, group_index=glist.astype(np.int64),
        n_periods=panel.n_periods, step=step, alpha=inf.alpha, options=options,
        seed=seed if inf.bootstrap else None,
        timings={"load": t_load - t0, "estimate": t_fit - t_load, "total": _time.perf_counter() - t0},
        panel=panel.describe(), estimator="triple_did",
    )


def _partition_faults(block: UnitBlock, qcol: int) -> np.ndarray:
    """Units whose eligibility is not 0/1, and units whose eligibility changes over time."""
    x = block.x
    q = x[..., qcol]
    if x.ndim == 2:
        bad_value = ~np.isin(q, (0.0, 1.0))
        varying = np.zeros(block.n, bool)
    else:
        obs = ~np.isnan(block.y)
        bad_value = np.any(obs & ~np.isin(q, (0.0, 1.0)), axis=1)
        first = q[np.arange(block.n), np.argmax(obs, axis=1)]
        varying = np.any(obs & (q != first[:, None]), axis=1)
    return np.array([int(bad_value.sum()), int(varying.sum()),
                     _plain(block.ids[bad_value][0]) if bad_value.any() else None,
                     _plain(block.ids[varying][0]) if varying.any() else None], dtype=object)


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _check_partition(panel: Panel, name: str, qcol: int) -> None:
    parts = dask.compute(*panel.map_blocks(_partition_faults, qcol, name="ddd-check-partition"))
    for p in parts:
        if p[0]:
            raise PanelError(f"partition column {name!r} must be 0 or 1; unit {p[2]!r} has another value")
    for p in parts:
        if p[1]:
            raise PanelError(f"partition column {name!r} must be constant within a unit; it changes for unit {p[3]!r}")


register(EstimatorEntry(
    name="triple_did", function=triple_did, options=TripleDidOptions, result="cells", label="Triple DiD",
    title="Ortiz-Villavicencio & Sant'Anna (2025) triple differences", covariates=True,
    aggregations=AGGREGATIONS, cost="cells"))
