"""Continuous treatments (Callaway, Goodman-Bacon & Sant'Anna 2024; R ``contdid``): ``continuous_did``.

Dose-response curves ATT(d) and ACRT(d) by B-spline regressions of each cohort's outcome change on
its dose, compared with not-yet-treated (or never-treated) units, averaged over the post-treatment
cells (weights: cohort shares / the cohort's number of post periods, as moderndid ``cont_did``);
the overall ATT^o and ACRT^o; or event studies of ATT(g,t) / ACRT(g,t) by event time. With
``dose_method="cck"`` (two periods, one cohort) the number of spline segments is chosen by the
data-driven procedure of Chen, Christensen & Kankanala (2024) (see ``core.contdid_cck``).

Inference: influence functions computed per unit on the workers, reduced to Psi'Psi (analytic SEs)
and to multiplier-bootstrap draws keyed by RNG blocks (uniform sup-t bands over the dose grid or the
event times), bit-identical for any partitioning. The dose aggregation treats its weights as
known (as moderndid); the event study adds the influence of the estimated cohort shares (R ``did``).

Deliberate differences from moderndid 0.x ``cont_did`` (whose dose curves, ATT^o, ACRT^o and ACRT
event study are matched to ~1e-14):
* ATT(d) and ATT^o include the comparison units' variance (moderndid leaves it out), ATT^o's
  influence function is the binary DiD's (moderndid uses ACRT's), and ACRT^o / ACRT(g,t) scale each
  cohort's influence function by n / n_cohort (moderndid by n / n_cell);
* ACRT(d)'s influence function uses the same per-cohort basis as the estimate (moderndid the grid's
  range); with one cohort the two coincide;
* the ATT event study is the binary DiD by cell aggregated as R ``did``'s dynamic aggregation
  (moderndid passes the dose itself as the treatment indicator of its DR DiD there).
"""
from __future__ import annotations

import operator
import time as _time
from typing import Any, Literal

import dask
import numpy as np
from pydantic import Field

from dte_dask.core.contdid import (
    N_BINS,
    DoseSetup,
    cell_stats,
    curve_maps,
    dose_bounds,
    dose_histogram,
    doses_in_bins,
    influence,
    knots_from,
    needed_bins,
    solve_cells,
)
from dte_dask.core.contdid_cck import (
    CckSetup,
    cck_band,
    cck_scores,
    cck_stats,
    grid_maps,
    lepski,
    segment_set,
    shifted_knots,
    solve_cck,
)
from dte_dask.estimators.cs import as_panel, cells_for
from dte_dask.estimators.options import InferenceOptions, NBoot, NonNegInt, Options, parse_options
from dte_dask.exceptions import PanelError, SpecError
from dte_dask.graph.reduce import by_rng_block, compute, single_threaded_blas, tree_merge
from dte_dask.inference.bands import band_crit, boot_se
from dte_dask.inference.bootstrap import boot_cover, check_bootstrap_cost
from dte_dask.inference.variance import covariance, gram
from dte_dask.panel.panel import Panel
from dte_dask.registry import EstimatorEntry, register
from dte_dask.results.contdid import ContDidResult

Target = Literal["level", "slope"]
Aggregation = Literal["dose", "eventstudy"]
DoseMethod = Literal["parametric", "cck"]
ContControl = Literal["not_yet_treated", "never_treated"]


class ContinuousDidOptions(Options):
    """:func:`dte_dask.continuous_did` (R ``contdid::cont_did``)."""

    target: Target = "level"
    aggregation: Aggregation = "dose"
    dose_method: DoseMethod = "parametric"
    degree: NonNegInt = Field(3, description="B-spline degree (>= 1)")
    num_knots: NonNegInt = 0
    control_group: ContControl = "not_yet_treated"
    n_grid: NBoot = Field(50, description="doses of the default grid (>= 2)")
    dose: str | None = Field(None, description="the dose column (in a job: also listed in data.covariates); "
                                               "default: the panel's first covariate")


def continuous_did(
    data: Any, *, outcome: str | None = None, unit: str | None = None, time: str | None = None,
    group: str | None = None, dose: str | None = None, target: Target = "level", aggregation: Aggregation = "dose",
    dose_method: DoseMethod = "parametric", degree: int = 3, num_knots: int = 0,
    control_group: ContControl = "not_yet_treated", dose_grid: Any = None, n_grid: int = 50,
    bootstrap: bool = True, n_boot: int = 999, boot_weights: str = "rademacher", uniform_bands: bool = True,
    alpha: float = 0.05, seed: int | None = None, npartitions: int | None = None,
) -> ContDidResult:
    """Difference-in-differences with a continuous, time-invariant dose (staggered adoption).

    Parameters
    ----------
    data : Panel, or anything :func:`dte_dask.load_panel` accepts
    outcome, unit, time, group : column names (``group``: first treated period, 0 = never treated)
    dose : column of the unit's dose (constant over time; 0 for never-treated units, > 0 for treated)
    target : "level" (ATT) or "slope" (ACRT); with ``aggregation="dose"`` both curves are returned
        and ``target`` picks the one in ``estimates`` / ``to_frame()``
    aggregation : "dose" (curves over the dose grid) or "eventstudy" (ATT or ACRT by event time)
    dose_method : "parametric" (B-splines with ``num_knots`` knots) or "cck": the data-driven
        nonparametric estimator of Chen, Christensen & Kankanala (2024), as R ``contdid`` / moderndid:
        the number of spline segments chosen by a Lepski bootstrap test, honest uniform bands;
        two periods, one treated cohort and never-treated units, ``aggregation="dose"``, the bootstrap on
        (the chosen and searched segments, the test statistics and theta* are in ``result.options``;
        its bootstrap uses N(0, 1) multipliers, as CCK, whatever ``boot_weights``)
    degree, num_knots : B-spline degree and number of interior knots (at dose quantiles)
    control_group : "not_yet_treated" or "never_treated"
    dose_grid : doses at which to evaluate the curves; default ``n_grid`` equally spaced points
        over the treated doses' range
    bootstrap, n_boot, boot_weights, uniform_bands, alpha, seed : multiplier bootstrap and bands
    """
    t0 = _time.perf_counter()
    opt = parse_options(ContinuousDidOptions, target=target, aggregation=aggregation, dose_method=dose_method,
                        degree=degree, num_knots=num_knots, control_group=control_group, n_grid=n_grid)
    inf = parse_options(InferenceOptions, bootstrap=bootstrap, n_boot=n_boot, seed=seed, alpha=alpha,
                        boot_weights=boot_weights, uniform_bands=uniform_bands)
    if opt.dose_method == "cck":
        if opt.aggregation != "dose" or opt.num_knots:
            raise SpecError("dose_method='cck' estimates the dose-response curves (aggregation='dose') and chooses "
                            f"its knots itself (num_knots=0); got aggregation={opt.aggregation!r}, "
                            f"num_knots={opt.num_knots}")
        if not inf.bootstrap:
            raise SpecError("dose_method='cck' chooses the number of spline segments by a bootstrap test: it needs "
                            "bootstrap=True")
    if opt.degree < 1 or opt.num_knots < 0 or opt.n_grid < 2:
        raise SpecError(f"degree={opt.degree} must be >= 1, num_knots={opt.num_knots} >= 0, n_grid={opt.n_grid} >= 2")
    if isinstance(data, Panel):
        panel = data
        if not panel.spec.covariates:
            raise SpecError("load the panel with covariates=[<dose column>] to pass it to continuous_did")
        dose = dose or panel.spec.covariates[0]
        if dose not in panel.spec.covariates:
            raise SpecError(f"dose={dose!r} is not a column of the panel ({list(panel.spec.covariates)})")
    else:
        if dose is None:
            raise SpecError("name the dose column: dose=...")
        panel = as_panel(data, outcome=outcome, unit=unit, time=time, group=group, treatment=None, covariates=[dose],
                         weights=None, cluster=None, npartitions=npartitions, allow_unbalanced_panel=False)
    dose_col = list(panel.spec.covariates).index(dose)
    panel = panel.balance().drop_early_treated(0)
    cells, glist = cells_for(panel, opt.control_group, 0, "varying")

    # pass 1: dose ranges of the cohorts (and the knots' dose distribution if there are knots)
    parts = panel.map_blocks(dose_bounds, dose_col, glist, name="contdid-bounds")
    bounds = compute(*parts)
    varying = [b["varying"] for b in bounds if b["varying"] is not None]
    if varying:
        raise PanelError(f"the dose {dose!r} of unit {varying[0]!r} changes over time: continuous_did needs each "
                         "unit's dose constant in every period (code the dose a unit receives once treated, "
                         "also before its treatment starts)")
    lo = np.min([b["lo"] for b in bounds], axis=0)
    hi = np.max([b["hi"] for b in bounds], axis=0)
    if np.any(lo <= 0):
        j = int(np.argmax(lo <= 0))
        raise PanelError(f"cohort {panel.group_label(glist[j])} has units with dose <= 0 (column {dose!r}): treated "
                        "units need a positive dose")
    if np.any(~(hi > lo)):
        j = int(np.argmax(~(hi > lo)))
        raise PanelError(f"cohort {panel.group_label(glist[j])}: every unit has the same dose; a dose-response "
                        "curve needs at least two distinct doses per cohort")
    knots = np.empty(0)
    if opt.num_knots > 0:
        knots = _knots(panel, dose_col, glist, lo.min(), hi.max(), opt.num_knots)
    grid = (np.linspace(lo.min(), hi.max(), opt.n_grid) if dose_grid is None
            else np.asarray(dose_grid, dtype=float).ravel())
    if opt.dose_method == "cck":
        return _cck(panel, dose, dose_col, cells, glist, (float(lo.min()), float(hi.max())), grid, opt, inf, t0)
    gpos = np.searchsorted(glist, cells.g)
    setup = DoseSetup(cells=cells, dose_col=dose_col, degree=opt.degree, knots=knots, lo=lo[gpos], hi=hi[gpos])

    # pass 2: regression sums per cell
    s = compute(_exact_sum(panel, cell_stats, setup, name="contdid-stats"))[0]
    fit = solve_cells(s, setup, grid)
    bad = ~(np.isfinite(fit.coef).all(axis=1) & np.isfinite(fit.mean_c)) & (cells.t >= cells.g)
    if bad.any():
        k = int(np.argmax(bad))
        raise PanelError(f"cell (group {panel.group_label(cells.g[k])}, time {panel.group_label(cells.t[k])}): the "
                        f"B-spline regression is singular (too few distinct doses for degree={opt.degree} and "
                        f"num_knots={opt.num_knots})")

    # weights of the dose aggregation: cohort share / number of its post-treatment cells
    n_g = np.array([panel.cohort_sizes.get(g, 0) for g in glist], dtype=float)
    post = cells.t >= cells.g
    n_post = np.array([np.sum(post & (cells.g == g)) for g in glist], dtype=float)
    w = np.where(post, (n_g / n_g.sum())[gpos] / n_post[gpos], 0.0)
    n = panel.n_units

    ev_w, ev_col, events = _event_weights(cells, gpos, n_g)
    n_ev = events.size if opt.aggregation == "eventstudy" else 0
    vals = fit.att if opt.target == "level" else fit.acrt
    ok = np.isfinite(vals)
    theta = np.bincount(ev_col[ok], weights=(ev_w * vals)[ok], minlength=events.size)
    share = np.bincount(ev_col, weights=n_g[gpos], minlength=events.size) / n
    ev_wif = np.where(ok, (vals - theta[ev_col]) / share[ev_col], 0.0)

    step = panel.periods.event_step
    on = w > 0  # pre-treatment cells carry no weight (and may be NaN)
    att_d = w[on] @ fit.att_d[on]
    acrt_d = w[on] @ fit.acrt_d[on]
    overall = {"att": float(w[on] @ fit.att[on]), "acrt": float(w[on] @ fit.acrt[on])}
    # the reported columns (the curve or the event times, then ATT^o and ACRT^o) as a linear map of
    # influence()'s columns: the curve's coefficient part, the comparison part, ATT^o, ACRT^o, events
    if opt.aggregation == "dose":
        rmap, lv_map, sl_map = curve_maps(setup, grid)
        est, keys, key_name = (att_d, grid, "dose") if opt.target == "level" else (acrt_d, grid, "dose")
    else:
        rmap, lv_map, sl_map = np.zeros((cells.K, setup.p, 0)), np.zeros((0, 0)), np.zeros((0, 0))
        est, keys, key_name = theta, (events * step).astype(np.int64), "event_time"
        overall["att" if opt.target == "level" else "acrt"] = float(est[events >= 0].mean())
    m = est.size
    r = rmap.shape[2]
    cmap = np.zeros((r + 3 + n_ev, m + 2))
    cmap[r + 1, m] = cmap[r + 2, m + 1] = 1.0
    if opt.aggregation == "dose":
        cmap[:r, :m] = lv_map if opt.target == "level" else sl_map
        cmap[r, :m] = 1.0 if opt.target == "level" else 0.0
    else:
        cmap[r + 3:, :m] = np.eye(m)
        # the overall effect is the mean of the post-treatment event times (replaces ATT^o or ACRT^o)
        j = m + (0 if opt.target == "level" else 1)
        cmap[:, j] = 0.0
        cmap[r + 3 + np.flatnonzero(events >= 0), j] = 1.0 / np.sum(events >= 0)

    # pass 3: influence functions on the workers -> Psi'Psi and bootstrap draws of the reported columns
    boot_kw, seed_ = _boot_kw(panel, inf, min(cmap.shape), n)
    ev = (ev_w, ev_col, ev_wif, n_ev, opt.target == "slope")
    # the workers reduce influence()'s columns if they are fewer than the reported ones, else the reported
    pre = cmap.shape[0] > cmap.shape[1]
    gram_total, draws = _reduce(panel, influence, (setup, fit, w, n, rmap) + ev, cmap if pre else None, boot_kw)
    outmap = np.eye(m + 2) if pre else cmap
    V = covariance(outmap.T @ gram_total @ outmap, n)
    dr = draws @ outmap if draws is not None else None
    se_a = np.sqrt(np.clip(np.diag(V), 0, None))
    se_b = boot_se(dr, np.sqrt(n)) if dr is not None else None
    se = se_b if se_b is not None else se_a
    crit = band_crit(dr[:, :m] if dr is not None else None, se[:m], inf.alpha, inf.uniform_bands, fallback=True)
    overall_se = {"att": float(se[m]), "acrt": float(se[m + 1])}
    options = dict(target=opt.target, aggregation=opt.aggregation, dose_method=opt.dose_method, degree=opt.degree,
                   num_knots=opt.num_knots, control_group=opt.control_group, dose=dose, knots=knots.tolist(),
                   bootstrap=inf.bootstrap, n_boot=inf.n_boot if inf.bootstrap else 0, alpha=inf.alpha,
                   uniform_bands=inf.uniform_bands, outcome=panel.spec.outcome, unit=panel.spec.unit,
                   time=panel.spec.time)
    return ContDidResult(
        estimator="continuous_did", alpha=inf.alpha, key_name=key_name, keys=keys, est=est, V=V[:m, :m],
        se_main=se[:m], se_analytic=se_a[:m], boot_draws=dr[:, :m] if dr is not None else None, crit=crit,
        dose_grid=grid, att_d=att_d, acrt_d=acrt_d, overall=overall, overall_se=overall_se,
        overall_se_analytic={"att": float(se_a[m]), "acrt": float(se_a[m + 1])}, target=opt.target,
        n_units=n, seed=seed_ if inf.bootstrap else None, options=options,
        timings={"total": _time.perf_counter() - t0}, panel=panel.describe(),
    )


def _knots(panel: Panel, dose_col: int, glist: np.ndarray, lo: float, hi: float, num_knots: int) -> np.ndarray:
    """Exact dose quantiles without shipping the doses: a histogram pass, then only the doses of the
    bins that hold the needed order statistics."""
    T = panel.n_periods
    edges = np.linspace(lo, hi, N_BINS + 1)
    hist = sum(compute(*panel.map_blocks(dose_histogram, dose_col, glist, T, edges, name="contdid-knot-hist")))
    bins = needed_bins(hist, num_knots)
    gathered = compute(*panel.map_blocks(doses_in_bins, dose_col, glist, T, edges, bins, name="contdid-knot-doses"))
    return knots_from(hist, edges, list(gathered), num_knots)


def _event_weights(cells, gpos, n_g):
    """Event time of every cell (column index) and its weight: cohort shares within the event time."""
    e = (cells.t - cells.g).astype(np.int64)
    events, col = np.unique(e, return_inverse=True)
    wt = n_g[gpos]
    tot = np.bincount(col, weights=wt)
    return wt / tot[col], col, events


def _exact_sum(panel: Panel, func, *args, name: str):
    parts = panel.map_blocks(by_rng_block, func, panel.rng_block_size, panel.n_rng_blocks, *args, name=name)
    return tree_merge(parts, name=f"{name}-sum")


def _gram(block, psi: np.ndarray) -> np.ndarray:
    return gram(psi, block.rank, False)


def _reduce(panel: Panel, kernel, args: tuple, cmap: np.ndarray | None, boot_kw: dict | None):
    """Per-unit columns ``kernel(block, *args)`` (times ``cmap``) reduced on the workers to Psi'Psi and
    the multiplier-bootstrap draws (None without ``boot_kw``), bit-identical for any partitioning."""
    parts = panel.map_blocks(_psi_reductions, kernel, args, cmap, panel.rng_block_size, panel.n_rng_blocks, boot_kw,
                             name="contdid-influence")
    pick = dask.delayed(operator.getitem, pure=True)
    todo = [tree_merge([pick(p, 0, dask_key_name=f"contdid-gram-{p.key}") for p in parts], name="contdid-gram-sum")]
    if boot_kw is not None:
        todo.append(tree_merge([pick(p, 1, dask_key_name=f"contdid-mboot-{p.key}") for p in parts],
                               name="contdid-mboot-merge"))
    out = compute(*todo)
    return out[0], (out[1] if boot_kw is not None else None)


def _psi_reductions(block, kernel, args, cmap, block_size, n_blocks, boot_kw):
    with single_threaded_blas():  # small products: threads only oversubscribe; one rounding everywhere
        psi = kernel(block, *args)
        if cmap is not None:  # row by row, so the same in any partitioning
            psi = psi @ cmap
    g = by_rng_block(block, _gram, block_size, n_blocks, rows=psi)
    b = boot_cover(psi, block.rank, **boot_kw) if boot_kw is not None else None
    return g, b


def _boot_kw(panel: Panel, inf, width: int, n: int, kind: str | None = None) -> tuple[dict | None, int]:
    seed = int(np.random.SeedSequence().entropy) if inf.seed is None else int(inf.seed)
    if not inf.bootstrap:
        return None, seed
    kind = kind or inf.boot_weights
    check_bootstrap_cost(inf.n_boot, n_entities=panel.n_entities, width=width, kind=kind,
                         block_size=panel.rng_block_size)
    return dict(seed=seed, n_boot=inf.n_boot, block_size=panel.rng_block_size, n_blocks=panel.n_rng_blocks, n=n,
                kind=kind), seed


def _cck(panel: Panel, dose: str, dose_col: int, cells, glist: np.ndarray, bounds: tuple[float, float],
         grid: np.ndarray, opt: ContinuousDidOptions, inf: InferenceOptions, t0: float) -> ContDidResult:
    """dose_method="cck": the number of spline segments chosen by CCK's Lepski test (see core.contdid_cck)."""
    if panel.n_periods != 2 or glist.size != 1:
        raise SpecError(f"dose_method='cck' needs two periods and one treated cohort besides never-treated units "
                        f"(as R contdid / moderndid); the panel has {panel.n_periods} periods and {glist.size} "
                        "treated cohorts: use dose_method='parametric'")
    n, n_t = panel.n_units, int(panel.cohort_sizes.get(glist[0], 0))
    segs, alpha_hat = segment_set(n_t, opt.degree)
    top = int(segs[-1])
    q = _knots(panel, dose_col, glist, *bounds, top - 1) if top > 1 else np.empty(0)
    setup = CckSetup(cells=cells, dose_col=dose_col, degree=opt.degree,
                     knots=tuple(shifted_knots(q[(top // s) * np.arange(1, s) - 1], *bounds) for s in segs))
    s = compute(_exact_sum(panel, cck_stats, setup, name="contdid-cck-stats"))[0]
    if not s["n_c"] > 0:
        raise PanelError("dose_method='cck' compares the treated cohort with never-treated units: there are none")
    try:
        fit = solve_cck(s, setup)
    except np.linalg.LinAlgError:
        raise PanelError(f"dose_method='cck': too few distinct doses ({n_t} treated units) for the spline bases "
                         f"searched ({segs.tolist()} segments)") from None
    width = int(setup.offsets[-1]) + segs.size + 2
    boot_kw, seed_ = _boot_kw(panel, inf, width, n, kind="gaussian")  # CCK's N(0, 1) multipliers
    G, draws = _reduce(panel, cck_scores, (setup, fit, n), None, boot_kw)
    choice = lepski(segs, setup, fit, grid, G, draws, n, alpha_hat)
    j, D, off = choice.index, grid.size, setup.offsets
    lv_maps, lv, _ = grid_maps(setup, fit, grid, G, deriv=False)
    sl_maps, sl, _ = grid_maps(setup, fit, grid, G, deriv=True)
    att_d, acrt_d = lv[j] - fit.mean_c, sl[j]
    # reported columns (curve, ATT^o, ACRT^o) as a linear map of cck_scores' columns
    cmap = np.zeros((width, D + 2))
    js = slice(off[j], off[j + 1])
    cmap[js, :D] = n * (lv_maps[j] if opt.target == "level" else sl_maps[j]).T
    cmap[width - 1, :D] = 1.0 if opt.target == "level" else 0.0
    cmap[width - 2, D] = 1.0
    cmap[off[-1] + j, D + 1] = n / fit.n_t
    cmap[js, D + 1] = n * fit.xx_inv[j] @ fit.avg_deriv[j]
    V = covariance(cmap.T @ G @ cmap, n)
    se = np.sqrt(np.clip(np.diag(V), 0, None))
    crit = cck_band(segs, choice, setup, fit, grid, G, draws, n, inf.alpha, deriv=opt.target == "slope")
    est = att_d if opt.target == "level" else acrt_d
    options = dict(target=opt.target, aggregation="dose", dose_method="cck", degree=opt.degree,
                   num_knots=int(choice.segments) - 1, control_group=opt.control_group, dose=dose,
                   knots=setup.knots[j][1:-1].tolist(), cck_segments=int(choice.segments),
                   cck_segments_searched=segs.tolist(), cck_theta=choice.theta, cck_z_sup=choice.z_sup,
                   bootstrap=True, n_boot=inf.n_boot,
                   alpha=inf.alpha, uniform_bands=inf.uniform_bands, outcome=panel.spec.outcome,
                   unit=panel.spec.unit, time=panel.spec.time)
    overall = {"att": float(fit.mean_t - fit.mean_c), "acrt": float(fit.acrt[j])}
    overall_se = {"att": float(se[D]), "acrt": float(se[D + 1])}
    return ContDidResult(
        estimator="continuous_did", alpha=inf.alpha, key_name="dose", keys=grid, est=est, V=V[:D, :D], se_main=se[:D],
        se_analytic=se[:D], boot_draws=(draws @ cmap)[:, :D], crit=crit, dose_grid=grid, att_d=att_d, acrt_d=acrt_d,
        overall=overall, overall_se=overall_se, overall_se_analytic=dict(overall_se), target=opt.target, n_units=n,
        seed=seed_, options=options, timings={"total": _time.perf_counter() - t0}, panel=panel.describe())


register(EstimatorEntry(
    name="continuous_did", function=continuous_did, options=ContinuousDidOptions, result="event_study",
    label="Continuous DiD", title="Callaway, Goodman-Bacon & Sant'Anna (2024) continuous-treatment DiD",
    covariates=False, weights=False, clusters=False, unbalanced=False, aggregations=(), compare=None, cost="cells"))
