"""Shared machinery of the data-based checks: panel preparation and the ATT(g,t) estimators on
modified data.

The placebo and randomization checks re-estimate ATT(g,t) many times on modified data (shifted
adoption dates, permuted cohort labels). Each modified data set is an *experiment*: a pure
function of a partition's :class:`~dte_dask.core.blocks.UnitBlock` returns, per experiment, the
modified block and the cells to estimate on it. The experiments are estimated with
:func:`dte_dask.att_gt`'s own cell kernels (:mod:`dte_dask.core.kernels`, picked by
:func:`dte_dask.core.routes.select`: the 2x2 sums without covariates; with them outcome regression,
propensity logit, weighted moments and influence functions), wired as ``dask.delayed`` tasks and computed with whatever scheduler is active
(the user's ``Client`` if there is one; none is ever created). Every pass sums small statistics of
all experiments at once, so the driver only ever holds K-sized arrays per experiment.

Estimator: ``est_method`` "dr" | "ipw" | "reg" as ``att_gt``: without covariates the unconditional
2x2 DiD (``att_gt``'s numbers for every ``est_method``, including DRDID's trimming of cells whose
controls all have a propensity score >= 0.995); with covariates DRDID's panel estimators, the
propensity logit fitted as ``att_gt`` fits it (one reduction over the partitions per IRLS iteration
for every experiment still iterating).

The panel is prepared exactly as ``att_gt`` prepares it (balanced, units treated in the first period
dropped, the same cells for the given ``control_group`` and ``base_period``; for the regression
estimators, balanced and nothing dropped, as those estimators do); anticipation is not modelled by
the checks.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import dask
import numpy as np

from dte_dask.core.blocks import UnitBlock, summarize
from dte_dask.core.cells import Cells
from dte_dask.core.kernels import CellKernel, Pass
from dte_dask.core.routes import select
from dte_dask.exceptions import PanelWarning, SpecError
from dte_dask.graph.reduce import compute, tree_sum  # compute: dask.compute with the active scheduler, arrays aligned
from dte_dask.panel.panel import Panel

Stats = dict[str, np.ndarray]
EST_METHODS = ("dr", "ipw", "reg")
REGRESSION_ESTIMATORS = ("event_study", "stacked_did", "sun_abraham")
ESTIMATORS = ("att_gt", *REGRESSION_ESTIMATORS)

# An experiment expander: block -> one (modified block, cells) per experiment of a batch.
Expand = Callable[[UnitBlock], Sequence[tuple[UnitBlock, Cells]]]


@dataclass(frozen=True)
class Prepared:
    """A panel ready for the checks, with the cells ``att_gt`` would estimate on it."""

    panel: Panel
    cells: Cells
    groups: np.ndarray  # group indices of the treated cohorts (sorted)
    p: int  # 1 + number of covariates
    options: dict[str, Any]
    method: str = "dr"  # est_method of the ATT(g,t) estimator
    estimator: str = "att_gt"


def check_estimator(estimator: str, est_method: str, estimator_options: dict[str, Any] | None) -> dict[str, Any]:
    if estimator not in ESTIMATORS:
        raise SpecError(f"estimator={estimator!r} is not one of {list(ESTIMATORS)}")
    if est_method not in EST_METHODS:
        raise SpecError(f"est_method={est_method!r} is not one of {list(EST_METHODS)}")
    opts = dict(estimator_options or {})
    if opts and estimator == "att_gt":
        raise SpecError("estimator_options are for the regression estimators; att_gt takes est_method, "
                        "control_group and base_period")
    reserved = {"data", "outcome", "unit", "time", "group", "covariates", "weights", "cluster", "bootstrap",
                "n_boot", "seed", "npartitions", "allow_unbalanced_panel"} & set(opts)
    if reserved:
        raise SpecError(f"estimator_options may not set {sorted(reserved)}: they are arguments of the check")
    return opts


def prepare(data: Any, *, outcome: str | None, unit: str | None, time: str | None, group: str | None,
            treatment: str | None = None, covariates: Sequence[str] | str | None = None,
            weights: str | None = None, cluster: str | None = None, control_group: str = "never_treated",
            base_period: str = "varying", npartitions: int | None = None, est_method: str = "dr",
            estimator: str = "att_gt") -> Prepared:
    """Load (or take) the panel, balance it and drop early-treated units exactly as ``att_gt`` does."""
    from dte_dask.core.cells import BasePeriod, ControlGroup
    from dte_dask.estimators.cs import as_panel, cells_for, check_literal

    check_literal("control_group", control_group, ControlGroup)
    check_literal("base_period", base_period, BasePeriod)
    if covariates and estimator in ("stacked_did", "sun_abraham"):
        raise SpecError(f"{estimator} takes no covariates; use estimator='att_gt' (est_method 'dr', 'ipw' or "
                        "'reg') or 'event_study' to condition on them")
    panel = as_panel(data, outcome=outcome, unit=unit, time=time, group=group, treatment=treatment,
                      covariates=covariates, weights=weights, cluster=cluster, npartitions=npartitions,
                      allow_unbalanced_panel=False)
    if estimator == "att_gt":
        panel = panel.drop_early_treated(0)
        cells, groups = cells_for(panel, control_group, 0, base_period)
    else:  # the regression estimators keep units treated from the first period: so do their checks
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PanelWarning)
            cells, groups = cells_for(panel.drop_early_treated(0), control_group, 0, base_period)
    spec = panel.spec
    if estimator == "att_gt":
        name = f"att_gt ({est_method})" if spec.covariates else f"att_gt ({est_method}; unconditional 2x2)"
    else:
        name = estimator
    options = dict(outcome=spec.outcome, unit=spec.unit, time=spec.time, group=spec.group_source,
                   covariates=list(spec.covariates), weights=spec.weights, cluster=spec.cluster,
                   control_group=control_group, base_period=base_period,
                   est_method=est_method if estimator == "att_gt" else None, estimator=name)
    return Prepared(panel, cells, groups, 1 + len(spec.covariates), options, est_method, estimator)


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise SpecError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_alpha(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise SpecError(f"alpha must be in (0, 1), got {alpha}")
    return float(alpha)


# ----------------------------------------------------------------------------- pure kernels
def with_g(block: UnitBlock, g: np.ndarray) -> UnitBlock:
    """The block with its cohorts replaced by ``g`` (same units, same order)."""
    return UnitBlock(block.ids, block.rank, np.asarray(g, dtype=float), block.w, block.cluster, block.y, block.x)


def truncate(block: UnitBlock, keep: np.ndarray, n_periods: int, g: np.ndarray) -> UnitBlock:
    """Units ``keep`` only, periods ``0..n_periods-1`` only, cohorts replaced by ``g`` (for the kept units)."""
    b = block.take(keep)
    x = b.x
    if x is not None and x.ndim == 3:
        x = x[:, :n_periods, :]
    return UnitBlock(b.ids, b.rank, np.asarray(g, dtype=float), b.w, b.cluster, b.y[:, :n_periods], x)


def _kernel(cells: Cells, p: int, method: str, groups: np.ndarray | None, weighted: bool) -> CellKernel:
    """``att_gt``'s kernel for a balanced panel (the 2x2 sums, or DRDID's panel estimators with
    covariates), silent and on the estimate's scale (``n = 1``)."""
    return select(cells, method=method, p=p, repeated=False, moments=False, n=1.0, groups=groups,
                  weighted=weighted, label=None)


def influence(block: UnitBlock, cells: Cells, est: dict[str, Any], p: int) -> np.ndarray:
    """(n_block, K) influence functions on the estimate's scale (covariance = sum of outer products)."""
    return _kernel(cells, p, est.get("method", "dr"), None, False).influence(block, cells, est)


def _apply(block: UnitBlock, expand: Expand, passes: dict[int, Pass]) -> dict[int, Stats]:
    """``stats(modified block, cells, *args)`` of the pass of each experiment j of ``passes``."""
    exps = expand(block)
    return {j: st.stats(exps[j][0], exps[j][1], *st.args) for j, st in passes.items()}


# ----------------------------------------------------------------------------- driver side
def fit(panel: Panel, batches: Sequence[Expand], sizes: Sequence[int], cells: Sequence[Sequence[Cells]], p: int,
        method: str, groups: np.ndarray | None = None, name: str = "check") -> list[list[tuple[np.ndarray, dict]]]:
    """Estimate every experiment of every batch: ``[batch][j] -> (att (K,), est)``.

    Each experiment runs ``att_gt``'s own cell kernel (:func:`dte_dask.core.routes.select`: outcome
    regression, the IRLS propensity logit with R did's overlap check, the reg / ipw / dr algebra).
    The kernels advance in lock-step: every round sums the pending pass of every experiment over
    the partitions, in one ``compute`` (one task per partition, batch and pass). ``est`` holds the
    first pass's summed statistics (``est["stats"]``) and what :func:`influence` needs; its
    influence functions are on the estimate's scale (``n = 1``). Cells that cannot be estimated
    (no treated or control units, singular designs, failed logit) are NaN with ``ok`` False.
    """
    weighted = panel.spec.weights is not None
    kernels = [[_kernel(cells[c][j], p, method, groups, weighted) for j in range(m)] for c, m in enumerate(sizes)]
    steps = {(c, j): k.start() for c, ks in enumerate(kernels) for j, k in enumerate(ks)}
    while steps:
        rounds: dict[tuple[str, int], dict[int, Pass]] = {}
        for (c, j), st in steps.items():
            rounds.setdefault((st.name, c), {})[j] = st
        todo = [(c, tree_sum(panel.map_blocks(_apply, batches[c], passes, name=f"{name}-{stage}-{c}"),
                             name=f"{name}-{stage}-sum-{c}")) for (stage, c), passes in rounds.items()]
        steps = {}
        for (c, _), res in zip(todo, compute(*[t for _, t in todo])):
            for j, s in res.items():
                if (nxt := kernels[c][j].solve(s)) is not None:
                    steps[(c, j)] = nxt
    out: list[list[tuple[np.ndarray, dict]]] = []
    for ks in kernels:
        fits = [k.result() for k in ks]
        out.append([(f.att, {**f.est, "stats": f.stats}) for f in fits])
    return out


# ----------------------------------------------------------------------------- derived panels
def derived_panel(panel: Panel, func: Callable[[UnitBlock], UnitBlock], *, n_periods: int | None = None,
                  name: str = "check-derive") -> Panel:
    """A :class:`Panel` whose blocks are ``func(block)`` (pure, same units' ranks), for the real estimators.

    ``n_periods`` truncates the period labels (``func`` must drop the same trailing periods).
    """
    blocks = panel.map_blocks(func, name=name)
    summaries = compute(*[dask.delayed(summarize, pure=True)(b) for b in blocks])
    periods = panel.periods if n_periods is None else replace(panel.periods, labels=panel.periods.labels[:n_periods])
    return replace(panel, blocks=tuple(blocks), summaries=tuple(summaries), periods=periods)


def run_regression(estimator: str, panel: Panel, options: dict[str, Any]) -> Any:
    """One of the regression estimators (event_study, stacked_did, sun_abraham) on ``panel``."""
    from dte_dask.estimators.event_study import event_study
    from dte_dask.estimators.stacked import stacked_did
    from dte_dask.estimators.sun_abraham import sun_abraham

    fn = {"event_study": event_study, "stacked_did": stacked_did, "sun_abraham": sun_abraham}[estimator]
    kw = dict(options)
    if estimator == "event_study" and panel.spec.covariates:
        kw.setdefault("covariates", list(panel.spec.covariates))
    return fn(panel, **kw)


def post_mean(res: Any) -> tuple[float, float]:
    """Mean of a regression result's post-treatment (event time >= 0) coefficients, and its SE."""
    post = np.asarray(res.event_time) >= 0
    if not post.any():
        return float("nan"), float("nan")
    a = post / post.sum()
    return float(a @ res.coef), float(np.sqrt(max(a @ res.cov @ a, 0.0)))


