"""de Chaisemartin & D'Haultfœuille (2024) intertemporal event-study estimator: ``did_multiplegt``.

Non-binary, non-absorbing treatments: DID_ℓ compares the outcome change from F_g - 1 to
F_g - 1 + ℓ of units whose treatment first changed at F_g with that of units with the same baseline
treatment that have not switched yet (R ``did_multiplegt_dyn``; conventions of moderndid's port, see
``docs/did_multiplegt.md``). Kernels: :mod:`dte_dask.core.dcdh`; each pass maps a kernel over entity
partitions and adds its small statistics along the fixed tree of RNG blocks (bit-identical for any
partitioning); the per-unit influence functions never leave the partitions.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import dask
import numpy as np
import pandas as pd
from pydantic import Field

from dte_dask.core.dcdh import (
    Ctx,
    cell_stats,
    design_stats,
    from_unit_block,
    influence_stats,
    meta_stats,
    prepare,
)
from dte_dask.core.dcdh_cells import cell_means, estimate_sums, split_cells
from dte_dask.core.dcdh_options import binarize, cumulation_matrix
from dte_dask.estimators.dcdh_extras import (
    adjust_for_controls,
    bootstrap_replicates,
    column_list,
    controls_correction,
    with_controls,
    with_first_differences,
    with_matched_variables,
)
from dte_dask.estimators.options import Bool, NonNegInt, Options, parse_options
from dte_dask.exceptions import DteDaskWarning, PanelError, SpecError
from dte_dask.graph.reduce import by_rng_block, compute, tree_merge
from dte_dask.inference.dist import chi2_sf
from dte_dask.panel.panel import Panel
from dte_dask.panel.wide import WideColumns, wide_blocks
from dte_dask.registry import EstimatorEntry, register
from dte_dask.results.base import Result, pointwise_z

__all__ = ["did_multiplegt", "DidMultiplegtOptions", "DidMultiplegtResult", "reduce_blocks"]



class DidMultiplegtOptions(Options):
    """Options of :func:`did_multiplegt` (R ``did_multiplegt_dyn`` names and defaults)."""

    effects: NonNegInt = 1
    placebo: NonNegInt = 0
    normalized: Bool = False
    switchers: str = ""
    only_never_switchers: Bool = False
    same_switchers: Bool = False
    effects_equal: Bool = False
    ci_level: float = 95.0
    trends_lin: Bool = False
    # R's bootstrap reruns the whole estimator on resampled units: asked for here, never switched on
    # by the job's `inference` section (that one is the multiplier bootstrap of the other estimators)
    bootstrap: Bool = False
    n_boot: int = Field(1000, ge=2, le=100_000, description="bootstrap replicates (full reruns) when bootstrap")


@dataclass(frozen=True, repr=False)
class DidMultiplegtResult(Result):
    """Effects DID_ℓ (horizon ℓ ≥ 1) and placebos (horizon -ℓ), their covariance, the average total
    effect per unit of treatment and the joint tests."""

    estimator: str = "did_multiplegt"
    alpha: float = 0.05
    horizon: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    coef: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cov: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    n_switchers: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    n_obs: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    ate: dict[str, float] = field(default_factory=dict)
    placebo_test: dict[str, float] | None = None
    effects_equal_test: dict[str, float] | None = None
    n_units: int = 0
    n_clusters: int | None = None

    @property
    def estimates(self) -> np.ndarray:
        return self.coef

    def vcov(self) -> np.ndarray:
        return self.cov

    @property
    def se(self) -> np.ndarray:
        return np.sqrt(np.diag(self.cov))

    def to_frame(self) -> pd.DataFrame:
        z = pointwise_z(self.alpha)
        se = self.se
        return pd.DataFrame({"horizon": self.horizon, "event_time": self.horizon, "estimate": self.coef, "se": se,
                             "ci_lower": self.coef - z * se, "ci_upper": self.coef + z * se,
                             "band_lower": np.nan, "band_upper": np.nan,
                             "n_switchers": self.n_switchers, "n_obs": self.n_obs})

    def summary(self) -> str:
        df = self.to_frame()
        lines = ["de Chaisemartin & D'Haultfoeuille (2024) DID_l estimators", "",
                 f"{'horizon':>8} {'estimate':>12} {'se':>10} {'ci_lower':>10} {'ci_upper':>10} {'N_sw':>6} {'N':>7}"]
        for r in df.itertuples():
            lines.append(f"{r.horizon:>8d} {r.estimate:>12.5f} {r.se:>10.5f} {r.ci_lower:>10.5f} "
                         f"{r.ci_upper:>10.5f} {r.n_switchers:>6d} {r.n_obs:>7d}")
        if self.ate:
            lines.append(f"Average total effect per unit of treatment: {self.ate['estimate']:.5f} "
                         f"(se {self.ate['se']:.5f})")
        for name, t in (("placebos jointly zero", self.placebo_test), ("effects equal", self.effects_equal_test)):
            if t:
                lines.append(f"Test {name}: chi2({t['df']}) = {t['statistic']:.4f}, p = {t['p_value']:.4f}")
        lines.append(f"Units: {self.n_units}" + (f", clusters: {self.n_clusters}" if self.n_clusters else ""))
        return "\n".join(lines)


def reduce_blocks(parts: list, func: Any, bs: int, nb: int, *args: Any) -> Any:
    covers = [dask.delayed(by_rng_block)(p, func, bs, nb, *args) for p in parts]
    return compute(tree_merge(covers, name=f"dcdh-{func.__name__}"))[0]


def did_multiplegt(data: Any, outcome: str | None = None, unit: str | None = None, time: str | None = None,
                   treatment: str | None = None, *, effects: int = 1,
                   placebo: int = 0, cluster: str | None = None, weights: str | None = None,
                   controls: Any = None, normalized: bool = False, switchers: str = "",
                   only_never_switchers: bool = False, same_switchers: bool = False, trends_lin: bool = False,
                   trends_nonparam: Any = None, continuous: int = 0, effects_equal: bool = False,
                   ci_level: float = 95.0, bootstrap: bool = False, n_boot: int = 1000, seed: int | None = None,
                   npartitions: int = 1, rng_block_size: int = 16384) -> DidMultiplegtResult:
    """de Chaisemartin & D'Haultfœuille (2024) DID_ℓ event-study estimators (R ``did_multiplegt_dyn``).

    Parameters
    ----------
    data : pandas or dask DataFrame or parquet path (file, directory or glob), long (one row per unit
        and period; rows may be missing); a dask frame or parquet is never gathered on the driver
        (entity-partitioned on the workers, see :mod:`dte_dask.panel.wide`), or a
        :class:`~dte_dask.Panel` (binary absorbing treatment D = 1{t >= group}; its weights and
        clusters are used and the column arguments are ignored; job specs and the service pass one)
    outcome, unit, time, treatment : columns; ``time`` equally spaced; ``treatment`` any non-negative
        number, may switch on and off
    effects, placebo : number of effects DID_1..DID_effects and placebos DID^pl_1..
    cluster : column constant within unit (default: clustered at the unit)
    weights : row weights (missing = 0)
    normalized : divide DID_ℓ by the average cumulative treatment change δ^D_ℓ
    switchers : "" (all), "in" (increases only), "out" (decreases only)
    only_never_switchers, same_switchers : as in R
    effects_equal : chi² test that all effects are equal
    ci_level : pointwise confidence level (percent)
    trends_nonparam : column name or list of numeric time-invariant columns; comparisons also match
        their values (comparison groups: baseline treatment × values)
    trends_lin : group-specific linear trends (first-differenced outcome, effects cumulated; no ATE)
    bootstrap, n_boot, seed : R's bootstrap SEs (entities drawn with replacement, ``n_boot`` reruns;
        draws keyed by RNG block, identical for any partitioning)
    controls : column name or list of numeric controls: R's adjustment (first-differenced outcome
        residualised on first-differenced controls with period effects among not-yet-switchers, per
        baseline treatment) with its influence-function correction
    continuous : degree K of R's continuous-baseline option (one comparison group, staggered binary
        treatment, controls 1{t >= j}·D_g1^k, normalisation by the original treatment); 0: off

    Notes
    -----
    Units whose treatment both rises and falls relative to the baseline are dropped from the period
    where both have happened (moderndid's default, ``keep_bidirectional_switchers=False``). SEs are
    analytic, from influence functions demeaned within cohorts (see :mod:`dte_dask.core.dcdh`);
    ``vcov()`` is Σ_c (Σ_{g∈c} ψ_g)(·)'/G², whose diagonal is the squared SE.
    """
    if isinstance(continuous, bool) or not isinstance(continuous, (int, np.integer)) or continuous < 0:
        raise SpecError(f"did_multiplegt: continuous={continuous!r}: the degree of the polynomial, an integer >= 0")
    opt = parse_options(DidMultiplegtOptions, effects=effects, placebo=placebo, normalized=normalized,
                        switchers=switchers, only_never_switchers=only_never_switchers,
                        same_switchers=same_switchers, effects_equal=effects_equal, ci_level=ci_level,
                        trends_lin=trends_lin)
    matched = None if trends_nonparam is None else column_list(trends_nonparam, "trends_nonparam")
    n_keys = 1
    xcols = None if controls is None else column_list(controls, "controls")
    if (xcols or continuous) and trends_lin:
        raise NotImplementedError("did_multiplegt: controls (or continuous) together with trends_lin is not "
                                  "implemented yet")
    if opt.switchers not in ("", "in", "out"):
        raise SpecError(f"switchers={opt.switchers!r}: use '', 'in' or 'out'")
    if opt.effects < 1:
        raise SpecError("effects must be >= 1")
    if not 0 < opt.ci_level < 100:
        raise SpecError(f"ci_level={opt.ci_level}: must be in (0, 100)")
    if isinstance(data, Panel):
        parts = data.map_blocks(from_unit_block, name="dcdh-blocks")
        T, nb, bs = data.n_periods, data.n_rng_blocks, data.rng_block_size
        cluster = data.spec.cluster
        n_ent = data.n_clusters
        if matched or xcols:
            raise SpecError("did_multiplegt: trends_nonparam and controls need the long data frame "
                            "(a Panel has no such columns)")
    else:
        for role, col in (("outcome", outcome), ("unit", unit), ("time", time), ("treatment", treatment)):
            if col is None:
                raise SpecError(f"did_multiplegt: name the `{role}` column")
        bs = int(rng_block_size)
        cols = WideColumns(str(outcome), str(unit), str(time), str(treatment), weights, cluster)
        wide = wide_blocks(data, cols, max(int(npartitions), 1), bs, "did_multiplegt", persist=False)
        parts, T, nb, n_ent = wide.parts, wide.n_periods, wide.n_blocks, wide.n_entities
        if matched:
            parts, n_keys = with_matched_variables(parts, data, cols, matched, max(int(npartitions), 1), bs)
        if xcols:
            parts = with_controls(parts, data, cols, xcols, max(int(npartitions), 1), bs)
    # the options-independent unit design once per block, kept with the block for every pass
    parts = list(dask.persist(*[dask.delayed(prepare, pure=False)(p, bs) for p in parts]))
    if continuous:
        parts = list(dask.persist(*[dask.delayed(binarize, pure=False)(p, int(continuous), bs) for p in parts]))
    fit = partial(_fit, opt=opt, T=T, bs=bs, nb=nb, clustered=cluster is not None,
                  n_clusters=n_ent if cluster is not None else None, n_keys=n_keys,
                  controls=bool(xcols) or bool(continuous))
    res = fit(parts)
    if not bootstrap:
        return res
    reps, ate = bootstrap_replicates(parts, fit, res.horizon, n_ent, bs, int(n_boot), seed)
    return _with_bootstrap(res, opt, reps, ate)


def _reduce(parts: list, func: Any, *args: Any, bs: int, nb: int) -> Any:
    return reduce_blocks(parts, func, bs, nb, *args)


def _fit(parts: list, opt: DidMultiplegtOptions, T: int, bs: int, nb: int, clustered: bool,
         n_clusters: int | None, n_keys: int, controls: bool = False) -> DidMultiplegtResult:
    """The estimator on prepared blocks (the data, or a bootstrap replicate of it)."""
    metas = compute(*[dask.delayed(meta_stats)(p, Ctx(np.zeros(0), np.zeros(0), opt.switchers))
                           for p in parts])
    dsq = np.unique(np.concatenate([m["dsq"] for m in metas]))
    dfg = np.unique(np.concatenate([m["dfg"] for m in metas]))
    ctx = Ctx(dsq, dfg, opt.switchers, only_never_switchers=opt.only_never_switchers, clustered=clustered,
              n_keys=n_keys)
    a = reduce_blocks(parts, design_stats, bs, nb, ctx, 1)
    keep_dsq = (a["fcount"] > 0).sum(axis=1) >= 2
    # stage 2 only drops whole baseline groups: its never-switcher cells are those of stage 1
    ctx = replace(ctx, keep_dsq=keep_dsq, ctrl_ok=(a["never_rows"] > 0) & keep_dsq[None, :])
    if opt.trends_lin:
        parts = with_first_differences(parts, ctx)
    a = reduce_blocks(parts, design_stats, bs, nb, ctx, 3)
    G = int(a["n_units"])
    if G == 0:
        raise PanelError("no units left: every baseline treatment group lacks variation in the first switch "
                         "period or never-switchers")
    effects_n, placebo_n = _clip(a, T, opt.effects, opt.placebo)
    horizons = tuple(range(1, effects_n + 1)) + tuple(-h for h in range(1, placebo_n + 1))
    ctx = replace(ctx, horizons=horizons, n_units=G, same_switchers=effects_n if opt.same_switchers else 0)
    reduce = partial(_reduce, bs=bs, nb=nb)
    if controls:
        parts, th = adjust_for_controls(parts, ctx, reduce)
    raw = reduce_blocks(parts, cell_stats, bs, nb, ctx)
    c, s = split_cells(ctx, raw)
    ctx = replace(ctx, nc=c["w"], ctrl=c, sw=s)
    means = cell_means(ctx, a["fcount"].sum(axis=1), T)
    correction = controls_correction(parts, ctx, th, T, reduce) if controls else None
    f = {**reduce_blocks(parts, influence_stats, bs, nb, ctx, means, correction), **estimate_sums(ctx, raw)}
    return _finish(opt, ctx, s, f, horizons, G, n_clusters, effects_n, placebo_n)


def _with_bootstrap(res: DidMultiplegtResult, opt: DidMultiplegtOptions, reps: np.ndarray,
                    ate: np.ndarray) -> DidMultiplegtResult:
    """Bootstrap SEs as R: the standard deviation of the replicates' estimates (replicates where a
    horizon cannot be estimated left out); the covariance of the joint tests from the replicates."""
    ok = np.isfinite(reps)
    n = ok.sum(axis=0)
    mean = np.where(n > 0, np.nansum(reps, axis=0) / np.maximum(n, 1), np.nan)
    dev = np.where(ok, reps - mean, 0.0)
    both = ok.T.astype(float) @ ok.astype(float)
    cov = np.where(both > 1, (dev.T @ dev) / np.maximum(both - 1, 1), np.nan)
    cov = np.where(np.isfinite(res.coef)[:, None] & np.isfinite(res.coef)[None, :], cov, np.nan)
    H = res.horizon
    eff, pl = np.flatnonzero(H > 0), np.flatnonzero(H < 0)
    placebo_test = _wald(res.coef[pl], cov[np.ix_(pl, pl)]) if pl.size > 1 else None
    eq = (_wald(res.coef[eff], cov[np.ix_(eff, eff)], contrast=np.ones(1))
          if opt.effects_equal and eff.size > 1 else None)
    out = replace(res, cov=cov, placebo_test=placebo_test, effects_equal_test=eq)
    a = ate[np.isfinite(ate)]
    if res.ate:
        out = replace(out, ate={**res.ate, "se": float(np.std(a, ddof=1)) if a.size > 1 else np.nan})
    return out


def _clip(a: dict, T: int, effects: int, placebo: int) -> tuple[int, int]:
    rows = np.flatnonzero(a["rows_t"] > 0)
    fsw = np.flatnonzero(a["fcount"][:, :T].sum(axis=0) > 0)
    if fsw.size == 0:
        raise PanelError("no switchers: the treatment never changes in the sample")
    max_eff = int(rows[-1] - fsw[0] + 1)
    max_pl = int(fsw[-1] - rows[0] - 1)
    if effects > max_eff:
        warnings.warn(f"effects={effects} but only {max_eff} post-switch periods: using {max_eff}",
                      DteDaskWarning, stacklevel=3)
    if placebo > max(max_pl, 0):
        warnings.warn(f"placebo={placebo} but only {max(max_pl, 0)} pre-switch periods: using {max(max_pl, 0)}",
                      DteDaskWarning, stacklevel=3)
    return min(effects, max_eff), min(placebo, max(max_pl, 0))


def _wald(est: np.ndarray, V: np.ndarray, contrast: np.ndarray | None = None) -> dict[str, float] | None:
    ok = np.isfinite(est)
    est, V = est[ok], V[np.ix_(ok, ok)]
    if contrast is not None:
        k = est.size
        if k < 2:
            return None
        D = np.eye(k - 1, k) - np.ones((k - 1, k)) / k
        est, V = D @ est, D @ V @ D.T
    if est.size == 0:
        return None
    stat = float(est @ np.linalg.pinv(V) @ est)
    return {"statistic": stat, "df": int(est.size), "p_value": float(chi2_sf(stat, est.size))}


def _finish(opt: DidMultiplegtOptions, ctx: Ctx, s: dict, f: dict, horizons: tuple, G: int,
            n_clusters: int | None, effects_n: int, placebo_n: int) -> DidMultiplegtResult:
    H = len(horizons)
    N_sw = s["w"].reshape(H, -1).sum(axis=1)
    has = s["n_sw"] > 0
    raw = np.where(has, f["num"] / G, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = np.where(s["dd_w"] > 0, s["dd_num"] / np.where(s["dd_w"] > 0, s["dd_w"], 1.0), np.nan)
    norm = np.where(opt.normalized & np.isfinite(delta) & (delta != 0), delta, 1.0)
    cross = f["cross"] / G ** 2
    cov_raw = np.where(np.outer(has, has), cross, np.nan)
    coef = raw / norm
    cov = cov_raw / np.outer(norm, norm)
    if opt.trends_lin:  # effects of the differenced outcome, cumulated (R: no average total effect)
        A = cumulation_matrix(horizons)
        coef, cov = A @ coef, A @ cov @ A.T
    ate: dict[str, float] = {}
    eff = np.arange(effects_n)
    valid = has[eff] & np.isfinite(raw[eff])
    if valid.any() and not opt.trends_lin:
        wts = np.where(valid, N_sw[eff], 0.0) / N_sw[eff][valid].sum()
        dd = np.where(np.isfinite(delta[eff]), delta[eff], 0.0)
        denom = float(np.sum(wts * np.diff(dd, prepend=0.0)))
        if denom == 0:
            denom = dd[0] if dd[0] != 0 else 1.0
        a = np.zeros(H)
        a[eff] = wts / denom
        ate = {"estimate": float(np.nansum(a * raw)), "se": float(np.sqrt(a @ np.nan_to_num(cov_raw) @ a)),
               "n_switchers": float(N_sw[eff][valid].sum())}
    pl = np.arange(effects_n, H)
    placebo_test = _wald(coef[pl], cov[np.ix_(pl, pl)]) if placebo_n > 1 else None
    eq = _wald(coef[eff], cov[np.ix_(eff, eff)], contrast=np.ones(1)) if opt.effects_equal and effects_n > 1 else None
    return DidMultiplegtResult(estimator="did_multiplegt", alpha=1 - opt.ci_level / 100,
                               horizon=np.array(horizons, int), coef=coef, cov=cov, n_switchers=s["n_sw"],
                               n_obs=f["nobs"], ate=ate, placebo_test=placebo_test, effects_equal_test=eq,
                               n_units=G, n_clusters=n_clusters)


register(EstimatorEntry(
    name="did_multiplegt", function=did_multiplegt, options=DidMultiplegtOptions, label="dCDH",
    title="de Chaisemartin & D'Haultfoeuille (2024) intertemporal event study (non-binary, non-absorbing)",
    covariates=False, weights=True, clusters=True, unbalanced=True, bootstrap=False, compare=None,
    cost="events"))
