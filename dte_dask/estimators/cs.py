"""Callaway & Sant'Anna (2021) ATT(g,t): ``att_gt`` (R ``did::att_gt``) on a Dask panel."""
from __future__ import annotations

import time as _time
import warnings
from collections.abc import Sequence
from typing import Any, get_args

import numpy as np

from dte_dask.core.cells import BasePeriod, ControlGroup, make_cells
from dte_dask.estimators.options import (
    AttGtOptions,
    BootWeights,
    EstMethod,
    InferenceOptions,
    parse_options,
)
from dte_dask.exceptions import EstimationError, PanelWarning, SpecError
from dte_dask.graph.attgt import fit_cells
from dte_dask.inference.bands import band_crit, boot_se
from dte_dask.inference.bootstrap import check_bootstrap_cost
from dte_dask.inference.variance import analytic_se, covariance
from dte_dask.panel.panel import Panel
from dte_dask.registry import AGGREGATIONS, EstimatorEntry, register
from dte_dask.results.attgt import AttgtResult


def check_literal(name: str, value: Any, kind: Any) -> None:
    allowed = get_args(kind)
    if value not in allowed:
        raise SpecError(f"{name}={value!r} is not one of {list(allowed)}")


def att_gt(
    data: Any,
    *,
    outcome: str | None = None,
    unit: str | None = None,
    time: str | None = None,
    group: str | None = None,
    treatment: str | None = None,
    covariates: Sequence[str] | str | None = None,
    control_group: ControlGroup = "never_treated",
    anticipation: int = 0,
    base_period: BasePeriod = "varying",
    est_method: EstMethod = "dr",
    weights: str | None = None,
    cluster: str | None = None,
    allow_unbalanced_panel: bool = False,
    panel: bool = True,
    bootstrap: bool = True,
    n_boot: int = 999,
    boot_weights: BootWeights = "rademacher",
    uniform_bands: bool = True,
    alpha: float = 0.05,
    seed: int | None = None,
    npartitions: int | None = None,
) -> AttgtResult:
    """Group-time average treatment effects ATT(g,t) of Callaway & Sant'Anna (2021).

    Same conventions and numbers as R ``did::att_gt`` 2.5: cells, base periods, control groups,
    anticipation, the reg / ipw / dr estimators of DRDID with sampling weights, analytic
    influence-function SEs, and the multiplier bootstrap with sup-t uniform bands; for panels
    (``panel=True``), unbalanced panels and repeated cross sections (``panel=False``).

    Parameters
    ----------
    data : Panel, or anything :func:`dte_dask.load_panel` accepts
    outcome, unit, time, group, treatment, covariates, weights, cluster : column names
        Not needed when ``data`` is a :class:`Panel` (its spec is used). ``unit`` is optional
        with ``panel=False``.
    control_group : "never_treated" | "not_yet_treated"
    anticipation : int
        Periods of anticipation delta: the base period of cohort g is g - delta - 1.
    base_period : "varying" | "universal"
    est_method : "dr" | "ipw" | "reg"
    allow_unbalanced_panel : bool
        Keep units missing in some periods: R's route through the repeated-cross-section
        estimators of DRDID (``reg_did_rc``, ``std_ipw_did_rc``, the locally efficient
        ``drdid_rc``; covariates of each row's own period), with the row influence functions
        rescaled by n_units / n_rows of the cell and summed by unit. On a balanced panel it is
        ignored, as in R.
    panel : bool
        False for repeated cross sections (R's ``panel=FALSE``): every row is its own
        observation (n = rows), estimated with the same repeated-cross-section estimators; the
        group column is read per row, ``unit`` (optional) is a row id that fixes the rows' order
        for partitions and bootstrap RNG blocks (else the original row order), ``cluster``
        clusters rows. A :class:`Panel` loaded with ``load_panel(..., panel=False)`` is a
        repeated cross section whatever this flag says.
    bootstrap, n_boot, boot_weights : multiplier bootstrap ("rademacher" or "mammen").
        With ``bootstrap=True`` the reported SEs are bootstrap SEs, as in R.
    uniform_bands, alpha : sup-t simultaneous bands over all cells (needs the bootstrap).
    seed : int, optional
        Root of the ``SeedSequence`` of the multipliers; drawn and recorded if None.

    Returns
    -------
    AttgtResult
    """
    t0 = _time.perf_counter()
    opt = parse_options(AttGtOptions, control_group=control_group, anticipation=anticipation,
                        base_period=base_period, est_method=est_method)
    inf = parse_options(InferenceOptions, bootstrap=bootstrap, n_boot=n_boot, seed=seed, alpha=alpha,
                        boot_weights=boot_weights, uniform_bands=uniform_bands)
    control_group, anticipation, base_period, est_method = (opt.control_group, opt.anticipation, opt.base_period,
                                                            opt.est_method)
    bootstrap, n_boot, seed, alpha, boot_weights, uniform_bands = (inf.bootstrap, inf.n_boot, inf.seed, inf.alpha,
                                                                   inf.boot_weights, inf.uniform_bands)
    if bootstrap:
        check_bootstrap_cost(n_boot, n_entities=None, width=None, kind=boot_weights)  # a lower bound, before loading

    panel = as_panel(data, outcome=outcome, unit=unit, time=time, group=group, treatment=treatment,
                      covariates=covariates, weights=weights, cluster=cluster, npartitions=npartitions,
                      allow_unbalanced_panel=allow_unbalanced_panel, panel=panel)
    t_load = _time.perf_counter()
    panel = panel.drop_early_treated(int(anticipation))
    rcs = panel.spec.repeated_cross_section
    unbalanced = rcs or (allow_unbalanced_panel and not panel.is_balanced)
    cells, glist = cells_for(panel, control_group, int(anticipation), base_period)
    if bootstrap:
        check_bootstrap_cost(n_boot, n_entities=panel.n_entities, width=cells.K + glist.size, kind=boot_weights,
                             block_size=panel.rng_block_size)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy)
    label = _labeler(panel)
    fit = fit_cells(panel, cells, method=est_method, unbalanced=unbalanced, groups=glist,
                    n_boot=n_boot if bootstrap else 0, seed=int(seed), boot_weights=boot_weights, label=label)
    t_fit = _time.perf_counter()

    cov = covariance(fit.gram, fit.n)
    K = cells.K
    se_a = np.where(fit.ok, analytic_se(cov[:K, :K]), np.nan)
    se_b = None
    crit = band_crit(None, se_a, alpha, False, fallback=False)
    if fit.draws is not None:
        se_b = np.where(fit.ok, boot_se(fit.draws[:, :K], np.sqrt(fit.n_clusters)), np.nan)
        crit = band_crit(fit.draws[:, :K], se_b, alpha, uniform_bands, fallback=False)
    step = panel.periods.event_step
    options = dict(control_group=control_group, anticipation=int(anticipation), base_period=base_period,
                   est_method=est_method, covariates=list(panel.spec.covariates), weights=panel.spec.weights,
                   cluster=panel.spec.cluster, allow_unbalanced_panel=allow_unbalanced_panel, panel=not rcs,
                   bootstrap=bootstrap, n_boot=n_boot if bootstrap else 0, boot_weights=boot_weights,
                   uniform_bands=uniform_bands, alpha=alpha, outcome=panel.spec.outcome, unit=panel.spec.unit,
                   time=panel.spec.time)
    return AttgtResult(
        group=np.array([label(g) for g in cells.g]), time=np.array([label(t) for t in cells.t]),
        event_time=(cells.event_time * step).astype(np.int64), att=fit.att, se_analytic=se_a, se_boot=se_b, crit=crit,
        n_treated=fit.n_treated, n_control=fit.n_control, cov_aug=cov, draws_aug=fit.draws,
        groups=np.array([label(g) for g in glist]), pg=fit.pg, reference=cells.reference,
        n_units=fit.n, n_clusters=fit.n_clusters, g_index=cells.g, t_index=cells.t, group_index=glist.astype(np.int64),
        n_periods=panel.n_periods, step=step, alpha=alpha, options=options, seed=int(seed) if bootstrap else None,
        timings={"load": t_load - t0, "estimate": t_fit - t_load, "total": _time.perf_counter() - t0},
        panel=panel.describe(),
    )


def _labeler(panel: Panel):
    def label(idx: float) -> Any:
        return panel.group_label(float(idx))
    return label


def as_panel(data: Any, **kw: Any) -> Panel:
    """The Panel to fit. ``panel`` (True / False) is passed only by callers that handle repeated
    cross sections (``att_gt``); other estimators refuse a repeated-cross-section Panel."""
    rc_ok = "panel" in kw
    kw.setdefault("panel", True)
    if isinstance(data, Panel):
        spec = data.spec
        if spec.repeated_cross_section and not rc_ok:
            raise SpecError("this Panel is a repeated cross section (panel=False): only att_gt estimates those")
        for role in ("outcome", "unit", "time", "group", "treatment", "weights", "cluster"):
            given = kw[role]
            if role == "cluster" and given == spec.unit:
                continue  # clustering by unit: the default
            if given is not None and given != getattr(spec, role):
                raise SpecError(f"{role}={given!r} differs from the panel's {role} column {getattr(spec, role)!r}; "
                                "load the panel again with that column")
        if kw["covariates"] is not None and tuple([kw["covariates"]] if isinstance(kw["covariates"], str) else kw["covariates"]) != spec.covariates:
            raise SpecError(f"covariates={kw['covariates']!r} differ from the panel's {list(spec.covariates)}")
        if not kw["panel"] and not spec.repeated_cross_section:
            raise SpecError("panel=False: this Panel was loaded as a panel; load it with load_panel(..., panel=False)")
        if not kw["allow_unbalanced_panel"]:
            return data.balance()
        return data
    missing = [r for r in ("outcome", "unit", "time") if kw[r] is None and (r != "unit" or kw["panel"])]
    if missing or (kw["group"] is None and kw["treatment"] is None):
        raise SpecError(f"name the panel's columns: missing {missing + ([] if kw['group'] or kw['treatment'] else ['group'])}")
    # imported here: workers running estimator tasks need no Dask DataFrame
    from dte_dask.panel.load import load_panel

    return load_panel(data, unit=kw["unit"], time=kw["time"], outcome=kw["outcome"], group=kw["group"],
                      treatment=kw["treatment"], covariates=kw["covariates"] or (), weights=kw["weights"],
                      cluster=kw["cluster"], npartitions=kw["npartitions"],
                      allow_unbalanced_panel=kw["allow_unbalanced_panel"], panel=kw["panel"])


def cells_for(panel: Panel, control_group: str, anticipation: int, base_period: str):
    T = panel.n_periods
    never_above = T - 1 + anticipation
    cohorts = panel.cohort_sizes
    groups = sorted(g for g in cohorts if np.isfinite(g) and g <= never_above)
    has_never = any((not np.isfinite(g)) or g > never_above for g in cohorts)
    alias = np.nan
    t_eff = T
    if not has_never:
        if not groups:
            raise EstimationError("no treated cohorts")
        latest = groups[-1]
        t_eff = int(latest - anticipation)
        groups = groups[:-1]
        if control_group == "never_treated":
            alias = latest
            warnings.warn(f"No never-treated group is available. The last treated cohort "
                          f"({panel.group_label(latest)}) is being coerced as 'never-treated' units, and periods "
                          f"from {panel.group_label(latest - anticipation)} on are dropped.", PanelWarning, stacklevel=3)
        else:
            warnings.warn(f"No never-treated group is available: periods from {panel.group_label(latest - anticipation)} "
                          "on are dropped and the last cohort only serves as a control.", PanelWarning, stacklevel=3)
    groups = [g for g in groups if g > anticipation]
    cells = make_cells(groups, t_eff, control_group=control_group, anticipation=anticipation,
                       base_period=base_period, never_above=never_above, never_alias=alias)
    if cells.K == 0:
        raise EstimationError("no ATT(g,t) cell can be estimated: no treated cohort has a pre-treatment period")
    return cells, np.array(sorted(set(cells.g.tolist())), dtype=float)




def _compare(panel: Panel, window: tuple[int, int]) -> Any:
    """In :func:`dte_dask.compare_estimators`: the dynamic aggregation with a universal base period
    (pre-periods comparable with the regressions' reference -1), never-treated controls."""
    res = att_gt(panel, control_group="never_treated", base_period="universal", bootstrap=False,
                 allow_unbalanced_panel=not panel.is_balanced)
    return res.aggregate("dynamic", min_e=window[0], max_e=window[1])


register(EstimatorEntry(
    name="att_gt", function=att_gt, options=AttGtOptions, result="cells", label="Callaway-Sant'Anna",
    title="Callaway & Sant'Anna (2021) group-time average treatment effects", covariates=True,
    aggregations=AGGREGATIONS, compare=_compare, cost="cells"))
