"""Staggered-adoption panels with a known true ATT(g,t), generated partition by partition.

The running example is medical: hypertension patients observed monthly, while a drug-reimbursement
policy is rolled out in staggered waves. Each unit (patient) has time-invariant covariates ``age``,
``bmi`` and ``female``, a first-treated period ``group`` (0 = never treated) and a yearly outcome
path; the treatment effect is homogeneous within a cohort, so the true ATT(g,t) is known exactly.

Determinism
-----------
Units are cut into fixed simulation blocks of :data:`SIM_BLOCK` = 4096 consecutive units. Block
``b`` draws everything it needs from ``np.random.default_rng(np.random.SeedSequence(seed,
spawn_key=(b,)))`` and a partition is a whole number of consecutive blocks, so the data do not
depend on ``npartitions``, on the scheduler or on the order in which partitions are computed.

Model
-----
For unit ``i`` (ids ``1..n``) in period ``t`` (``1..T``)::

    za_i = (age_i - 60) / 10,   age_i = clip(N(60, 10), 30, 90)
    zb_i = (bmi_i - 28) / 4,    bmi_i = clip(N(28, 4), 16, 45)
    female_i ~ Bernoulli(0.5)

    Y_it = mu + b_age*za_i + b_bmi*zb_i + b_female*female_i + unit_sd*a_i     (levels, a_i ~ N(0,1))
         + lambda_t                                                          (period effects)
         + [selection] (g_age*za_i + g_bmi*zb_i) * t / T                       (covariate trends)
         + 1{t >= G_i} * ATT(G_i, t)                                          (treatment effect)
         + e_it,      e_it = rho*e_i,t-1 + sqrt(1-rho^2)*noise_sd*z_it,  e_i1 ~ N(0, noise_sd^2)

    lambda_t     = drift*(t-1) + season*cos(2*pi*(t-1)/12)
    ATT(g, t)    = effect_size * scale_g * h(t-g) * c(t)            for t >= g, 0 before
    h(e)         = 1 - exp(-0.3*(e+1))    for 0 <= e <= 15,   h(e) = 0 otherwise (fades out)
    c(t)         = 0.82 + 0.18*cos(2*pi*(t-1)/12)                   (compliance, in [0.64, 1])

``scale_g`` is a per-cohort multiplier (``cohort_scale``, default 1). The errors are a stationary
AR(1) per unit, so their marginal standard deviation is ``noise_sd`` in every period.

Cohort assignment: without selection a unit is never treated with probability
``never_treated_share`` and otherwise joins one of the ``k`` cohorts with equal probability,
independently of everything else, so unconditional parallel trends hold. With ``selection=True``
the cohort is drawn from a multinomial logit on the risk score ``r_i = 0.7*za_i + 0.7*zb_i``
(log-odds of the j-th earliest cohort vs. never treated ``= base_j + d_j*r_i``, ``d_j`` falling
from 1.2 for the first wave to 0.6 for the last; ``base_j`` calibrated so that the marginal shares
are approximately the requested ones), and the outcome gets the covariate-specific trend above.
Older, heavier patients are then treated earlier *and* have steeper outcome trends, so
**unconditional parallel trends fail, while parallel trends conditional on (age, bmi) hold**: given
the covariates, cohort membership is independent of the untreated potential outcomes' changes,
which are linear in ``age`` and ``bmi``.

Presets
-------
generic (``preset=None``): outcome ``y``; mu=0, b_age=1, b_bmi=0.5, b_female=0.5, unit_sd=1,
drift=0.1, season=0.5, g_age=2, g_bmi=1, noise_sd=1, rho=0.5, effect_size=3, T=10, no selection.

``preset="medical"``: outcome ``sbp`` (systolic blood pressure, mmHg); mu=140, b_age=5, b_bmi=3,
b_female=-4, unit_sd=10, drift=0.05, season=2 (winter peak), g_age=3, g_bmi=2, noise_sd=6, rho=0.5,
effect_size=-4 (a reduction of up to about 4 mmHg), T=24 months, waves (4, 7, 10, 13, 16),
selection on age/bmi on by default.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time as _time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dte_dask.exceptions import SpecError

__all__ = [
    "SIM_BLOCK",
    "PRESETS",
    "SimulatedPanel",
    "simulate_panel",
    "write_panel",
    "true_effect",
    "compliance",
    "default_cohorts",
]

#: Units per simulation block: the unit of random-number generation (fixed, never configurable).
SIM_BLOCK = 4096

#: Fade-out horizon: the effect is zero for event times above this.
EFFECT_HORIZON = 15

#: Model parameters of each preset (see the module docstring).
PRESETS: dict[str | None, dict[str, Any]] = {
    None: dict(
        outcome="y", mu=0.0, b_age=1.0, b_bmi=0.5, b_female=0.5, unit_sd=1.0, drift=0.1,
        season=0.5, g_age=2.0, g_bmi=1.0, noise_sd=1.0, rho=0.5, effect_size=3.0, n_periods=10,
        cohorts=None, selection=False,
    ),
    "medical": dict(
        outcome="sbp", mu=140.0, b_age=5.0, b_bmi=3.0, b_female=-4.0, unit_sd=10.0, drift=0.05,
        season=2.0, g_age=3.0, g_bmi=2.0, noise_sd=6.0, rho=0.5, effect_size=-4.0, n_periods=24,
        cohorts=(4, 7, 10, 13, 16), selection=True,
    ),
}

_COVARIATES = ("age", "bmi", "female")


def true_effect(event_time: Any, effect_size: float = 3.0) -> np.ndarray:
    """Dynamic effect path ``effect_size * (1 - exp(-0.3 (e + 1)))`` for ``0 <= e <= 15``, else 0.

    Parameters
    ----------
    event_time : array_like of int
        Periods since first treatment, ``e = t - g``.
    effect_size : float, default 3.0
        Plateau of the effect (negative for a reduction).

    Returns
    -------
    numpy.ndarray
        The effect before compliance and cohort scaling.
    """
    e = np.asarray(event_time, dtype=np.float64)
    on = (e >= 0) & (e <= EFFECT_HORIZON)
    return np.where(on, effect_size * (1.0 - np.exp(-0.3 * (e + 1.0))), 0.0)


def compliance(t: Any) -> np.ndarray:
    """Deterministic compliance ``c(t) = 0.82 + 0.18 cos(2 pi (t - 1) / 12)``, in ``[0.64, 1]``."""
    tt = np.asarray(t, dtype=np.float64)
    return 0.82 + 0.18 * np.cos(2.0 * np.pi * (tt - 1.0) / 12.0)


def default_cohorts(n_periods: int) -> tuple[int, ...]:
    """Evenly spread first-treated periods in ``2..T``: 5 waves if ``T >= 12``, else up to 3.

    ``g_j = 2 + floor((j + 1) (T - 1) / (k + 1))`` for ``j = 0..k-1``; e.g. ``T=8 -> (3, 5, 7)``,
    ``T=24 -> (5, 9, 13, 17, 21)``.
    """
    k = 5 if n_periods >= 12 else min(3, n_periods - 1)
    gs = {2 + ((j + 1) * (n_periods - 1)) // (k + 1) for j in range(k)}
    return tuple(sorted(gs))


@dataclasses.dataclass(frozen=True)
class SimulatedPanel:
    """A simulated panel and its ground truth.

    Attributes
    ----------
    data : dask.dataframe.DataFrame
        Long format, one row per unit x period (fewer if unbalanced), sorted by (unit, time) inside
        each partition; partitions hold consecutive unit ranges made of whole simulation blocks.
    truth : pandas.DataFrame
        ``group, time, event_time, att`` for every treated cohort and every period ``1..T``
        (``att = 0`` before treatment).
    columns : dict
        Column roles: ``unit, time, outcome, group, treatment`` (names) and ``covariates`` (list).
    options : dict
        The resolved, JSON-serialisable simulation options (n_units, n_periods, seed, cohorts...).
    """

    data: Any
    truth: pd.DataFrame
    columns: dict[str, Any]
    options: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class _Design:
    """Fully resolved, hashable simulation design (passed to every partition task)."""

    n_units: int
    n_periods: int
    seed: int
    cohorts: tuple[int, ...]
    probs: tuple[float, ...]          # never, cohort_1..k (target marginal shares)
    sel_base: tuple[float, ...]       # calibrated logit intercepts (never first)
    sel_slope: tuple[float, ...]      # logit slopes on the risk score (never first = 0)
    selection: bool
    unbalanced_share: float
    outcome: str
    mu: float
    b_age: float
    b_bmi: float
    b_female: float
    unit_sd: float
    drift: float
    season: float
    g_age: float
    g_bmi: float
    noise_sd: float
    rho: float
    effect_size: float
    scales: tuple[float, ...]         # per cohort, aligned with ``cohorts``

    def effect_table(self) -> np.ndarray:
        """``(k + 1, T)`` array of ATT(g, t); row 0 (never treated) is zero."""
        t = np.arange(1, self.n_periods + 1)
        tab = np.zeros((len(self.cohorts) + 1, self.n_periods))
        for j, (g, s) in enumerate(zip(self.cohorts, self.scales), start=1):
            tab[j] = s * true_effect(t - g, self.effect_size) * compliance(t)
        return tab

    def period_effects(self) -> np.ndarray:
        """``lambda_t`` for ``t = 1..T``."""
        t = np.arange(1, self.n_periods + 1, dtype=np.float64)
        return self.drift * (t - 1.0) + self.season * np.cos(2.0 * np.pi * (t - 1.0) / 12.0)


# ----------------------------------------------------------------------------- validation

def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SpecError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise SpecError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_share(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SpecError(f"{name} must be a number in [0, 1), got {value!r}") from None
    if not (0.0 <= v < 1.0):
        raise SpecError(f"{name} must be in [0, 1), got {value!r}")
    return v


def _calibrate_logit(probs: np.ndarray, slopes: np.ndarray) -> np.ndarray:
    """Intercepts so that E_r[softmax(base + slope * r)] ~= probs with r ~ N(0, 0.7^2 * 2)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(48)
    weights = weights / weights.sum()
    r = nodes * math.sqrt(0.7**2 + 0.7**2)
    pos = probs > 0
    base = np.where(pos, np.log(np.where(pos, probs, 1.0)), -np.inf)
    for _ in range(500):
        lin = base[None, :] + slopes[None, :] * r[:, None]
        lin -= lin.max(axis=1, keepdims=True)
        p = np.exp(lin)
        p /= p.sum(axis=1, keepdims=True)
        marg = weights @ p
        step = np.where(pos, np.log(np.where(pos, probs, 1.0) / np.where(pos, marg, 1.0)), 0.0)
        base = base + step
        if np.max(np.abs(step)) < 1e-12:
            break
    return base - base[pos][0]


def _resolve(
    n_units: Any, n_periods: Any, *, cohorts: Any, never_treated_share: Any, seed: Any,
    selection: Any, preset: Any, unbalanced_share: Any, effect_size: Any, cohort_scale: Any,
    rho: Any, noise_sd: Any,
) -> _Design:
    """Validate the user options against the preset and return the design."""
    if preset not in PRESETS:
        raise SpecError(f"preset must be one of {sorted(str(p) for p in PRESETS)}, got {preset!r}")
    par = dict(PRESETS[preset])
    n_units = _check_int("n_units", n_units, 1)
    T = _check_int("n_periods", par["n_periods"] if n_periods is None else n_periods, 2)
    seed = _check_int("seed", seed, 0)
    if cohorts is None:
        pc = par["cohorts"]
        cohorts = tuple(g for g in pc if g <= T) if pc is not None else ()
        cohorts = cohorts or default_cohorts(T)
    else:
        if isinstance(cohorts, (str, bytes)) or not isinstance(cohorts, (Sequence, np.ndarray)):
            raise SpecError(f"cohorts must be a list of first-treated periods, got {cohorts!r}")
        gs = []
        for g in cohorts:
            if isinstance(g, bool) or not isinstance(g, (int, np.integer)):
                raise SpecError(f"cohorts must hold integer periods, got {g!r} in {list(cohorts)!r}")
            gs.append(int(g))
        if not gs:
            raise SpecError("cohorts must name at least one first-treated period")
        bad = [g for g in gs if not 2 <= g <= T]
        if bad:
            raise SpecError(
                f"cohorts must lie in 2..{T} (n_periods={T}; a cohort needs a pre-period), "
                f"got {bad}"
            )
        if len(set(gs)) != len(gs):
            raise SpecError(f"cohorts contain duplicates: {gs}")
        cohorts = tuple(sorted(gs))
    k = len(cohorts)
    share = _check_share("never_treated_share", never_treated_share)
    unbal = _check_share("unbalanced_share", unbalanced_share)
    sel = bool(par["selection"] if selection is None else selection)
    rho = float(par["rho"] if rho is None else rho)
    if not -1.0 < rho < 1.0:
        raise SpecError(f"rho must be in (-1, 1), got {rho}")
    noise_sd = float(par["noise_sd"] if noise_sd is None else noise_sd)
    if not (noise_sd >= 0 and math.isfinite(noise_sd)):
        raise SpecError(f"noise_sd must be a finite number >= 0, got {noise_sd}")
    eff = float(par["effect_size"] if effect_size is None else effect_size)
    if not math.isfinite(eff):
        raise SpecError(f"effect_size must be finite, got {eff}")
    if cohort_scale is None:
        scales = (1.0,) * k
    elif isinstance(cohort_scale, Mapping):
        unknown = sorted(set(int(g) for g in cohort_scale) - set(cohorts))
        if unknown:
            raise SpecError(f"cohort_scale names periods that are not cohorts: {unknown}")
        scales = tuple(float(cohort_scale.get(g, 1.0)) for g in cohorts)
    elif isinstance(cohort_scale, (int, float, np.number)) and not isinstance(cohort_scale, bool):
        scales = (float(cohort_scale),) * k
    else:
        scales = tuple(float(s) for s in cohort_scale)
        if len(scales) != k:
            raise SpecError(f"cohort_scale has {len(scales)} entries but there are {k} cohorts")
    probs = np.array([share] + [(1.0 - share) / k] * k)
    slopes = np.array([0.0] + [1.2 - 0.6 * j / max(k - 1, 1) for j in range(k)])
    base = _calibrate_logit(probs, slopes) if sel else np.zeros(k + 1)
    return _Design(
        n_units=n_units, n_periods=T, seed=seed, cohorts=cohorts, probs=tuple(probs.tolist()),
        sel_base=tuple(base.tolist()), sel_slope=tuple(slopes.tolist()), selection=sel,
        unbalanced_share=unbal, outcome=par["outcome"], mu=par["mu"], b_age=par["b_age"],
        b_bmi=par["b_bmi"], b_female=par["b_female"], unit_sd=par["unit_sd"], drift=par["drift"],
        season=par["season"], g_age=par["g_age"] if sel else 0.0,
        g_bmi=par["g_bmi"] if sel else 0.0, noise_sd=noise_sd, rho=rho, effect_size=eff,
        scales=scales,
    )


# ----------------------------------------------------------------------------- generation

def _columns(d: _Design) -> dict[str, Any]:
    return {"unit": "unit", "time": "time", "outcome": d.outcome, "group": "group",
            "treatment": "treat", "covariates": list(_COVARIATES)}


def _meta(d: _Design) -> pd.DataFrame:
    return pd.DataFrame({
        "unit": np.array([], np.int64), "time": np.array([], np.int64),
        d.outcome: np.array([], np.float64), "group": np.array([], np.int64),
        "treat": np.array([], np.int8), "age": np.array([], np.float64),
        "bmi": np.array([], np.float64), "female": np.array([], np.int8),
    })


def _simulate_block(b: int, d: _Design) -> dict[str, np.ndarray]:
    """Columns of simulation block ``b`` (units ``b*SIM_BLOCK+1 ...``), sorted by (unit, time)."""
    T = d.n_periods
    lo = b * SIM_BLOCK
    n = min(SIM_BLOCK, d.n_units - lo)
    rng = np.random.default_rng(np.random.SeedSequence(d.seed, spawn_key=(b,)))
    # fixed draw order: age, bmi, female, unit effect, cohort uniform, AR innovations, row drops
    age = np.clip(60.0 + 10.0 * rng.standard_normal(n), 30.0, 90.0)
    bmi = np.clip(28.0 + 4.0 * rng.standard_normal(n), 16.0, 45.0)
    female = (rng.random(n) < 0.5).astype(np.int8)
    a = rng.standard_normal(n)
    u = rng.random(n)
    z = rng.standard_normal((T, n))
    za, zb = (age - 60.0) / 10.0, (bmi - 28.0) / 4.0

    k = len(d.cohorts)
    if d.selection:
        lin = np.asarray(d.sel_base)[None, :] + np.outer(0.7 * za + 0.7 * zb, d.sel_slope)
        lin -= lin.max(axis=1, keepdims=True)
        p = np.exp(lin)
        cum = np.cumsum(p, axis=1)
        cum /= cum[:, -1:]
        cidx = np.minimum((cum < u[:, None]).sum(axis=1), k)
    else:
        cum = np.cumsum(d.probs)
        cum /= cum[-1]
        cidx = np.minimum(np.searchsorted(cum, u, side="right"), k)
    group = np.concatenate([[0], d.cohorts]).astype(np.int64)[cidx]

    # AR(1) errors, stationary start, loop over periods only
    e = z
    e[0] *= d.noise_sd
    e[1:] *= d.noise_sd * math.sqrt(1.0 - d.rho**2)
    for t in range(1, T):
        e[t] += d.rho * e[t - 1]
    level = d.mu + d.b_age * za + d.b_bmi * zb + d.b_female * female + d.unit_sd * a
    e += level[None, :]
    e += d.period_effects()[:, None]
    if d.selection:
        tt = np.arange(1, T + 1) / T
        e += np.outer(tt, d.g_age * za + d.g_bmi * zb)
    e += d.effect_table()[cidx].T
    y = e.T  # (n, T) view, unit-major

    times = np.arange(1, T + 1, dtype=np.int64)
    treat = ((group[:, None] > 0) & (times[None, :] >= group[:, None])).astype(np.int8)
    units = np.arange(lo + 1, lo + n + 1, dtype=np.int64)
    cols = {
        "unit": np.repeat(units, T), "time": np.tile(times, n), d.outcome: y.ravel(),
        "group": np.repeat(group, T), "treat": treat.ravel(), "age": np.repeat(age, T),
        "bmi": np.repeat(bmi, T), "female": np.repeat(female, T),
    }
    if d.unbalanced_share > 0:
        ud = rng.random((n, T))
        drop = ud < d.unbalanced_share
        lost = drop.all(axis=1)
        drop[lost, ud[lost].argmax(axis=1)] = False  # never drop a whole unit
        keep = ~drop.ravel()
        cols = {c: v[keep] for c, v in cols.items()}
    return cols


def _simulate_partition(blocks: tuple[int, int], design: _Design) -> pd.DataFrame:
    """Concatenate simulation blocks ``blocks[0] .. blocks[1]-1`` into one pandas frame."""
    parts = [_simulate_block(b, design) for b in range(*blocks)]
    out: dict[str, np.ndarray] = {}
    for c in _meta(design).columns:
        out[c] = np.concatenate([p.pop(c) for p in parts])
    return pd.DataFrame(out, copy=False)


def _partition_blocks(n_units: int, npartitions: int | None) -> list[tuple[int, int]]:
    nblocks = -(-n_units // SIM_BLOCK)
    if npartitions is None:
        from dte_dask import config

        per = int(config.get("partition-units"))
        npartitions = max(1, -(-n_units // per))
    npartitions = min(_check_int("npartitions", npartitions, 1), nblocks)
    bounds = [(p * nblocks) // npartitions for p in range(npartitions + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _truth(d: _Design) -> pd.DataFrame:
    tab = d.effect_table()
    T, k = d.n_periods, len(d.cohorts)
    g = np.repeat(np.asarray(d.cohorts, dtype=np.int64), T)
    t = np.tile(np.arange(1, T + 1, dtype=np.int64), k)
    return pd.DataFrame({"group": g, "time": t, "event_time": t - g, "att": tab[1:].ravel()})


def _options(d: _Design, npartitions: int, preset: str | None) -> dict[str, Any]:
    return {
        "n_units": d.n_units, "n_periods": d.n_periods, "seed": d.seed, "preset": preset,
        "cohorts": list(d.cohorts), "never_treated_share": d.probs[0],
        "selection": d.selection, "unbalanced_share": d.unbalanced_share,
        "effect_size": d.effect_size, "cohort_scale": {str(g): s for g, s in zip(d.cohorts, d.scales)},
        "rho": d.rho, "noise_sd": d.noise_sd, "npartitions": npartitions, "sim_block": SIM_BLOCK,
    }


def simulate_panel(
    n_units: int,
    n_periods: int | None = None,
    *,
    cohorts: Sequence[int] | None = None,
    never_treated_share: float = 0.3,
    seed: int = 0,
    npartitions: int | None = None,
    selection: bool | None = None,
    preset: str | None = None,
    unbalanced_share: float = 0.0,
    effect_size: float | None = None,
    cohort_scale: float | Mapping[int, float] | Sequence[float] | None = None,
    rho: float | None = None,
    noise_sd: float | None = None,
) -> SimulatedPanel:
    """Simulate a staggered-adoption panel lazily, as a dask DataFrame with a known ATT(g,t).

    See the module docstring for the exact data-generating process.

    Parameters
    ----------
    n_units : int
        Number of units (ids ``1..n_units``), >= 1.
    n_periods : int, optional
        Number of periods ``T`` (times ``1..T``), >= 2. Default 10, or 24 for ``preset="medical"``.
    cohorts : sequence of int, optional
        First-treated periods, each in ``2..T``. Default: the preset's waves that fit in ``T``
        (medical: 4, 7, 10, 13, 16) or :func:`default_cohorts`.
    never_treated_share : float, default 0.3
        Target share of never-treated units (``group == 0``), in ``[0, 1)``; the other units are
        spread evenly over the cohorts (approximately so with ``selection``).
    seed : int, default 0
        Root seed; block ``b`` uses ``SeedSequence(seed, spawn_key=(b,))``.
    npartitions : int, optional
        Number of partitions; default ``ceil(n_units / dte_dask.partition-units)`` (262144 units).
        Capped at the number of simulation blocks ``ceil(n_units / 4096)``. Does not change the data.
    selection : bool, optional
        Selection on observables (see module docstring): cohort membership depends on age/bmi and
        the outcome has covariate-specific trends, so only *conditional* parallel trends hold.
        Default False, True for ``preset="medical"``.
    preset : {None, "medical"}
        Parameter set; ``"medical"`` names the outcome ``sbp`` (systolic blood pressure, mmHg).
    unbalanced_share : float, default 0.0
        Share of unit-period rows dropped at random (never every row of a unit), in ``[0, 1)``.
        The remaining rows are identical to those of the balanced panel.
    effect_size : float, optional
        Plateau of the effect path (3.0; medical -4.0 mmHg).
    cohort_scale : float, mapping or sequence, optional
        Per-cohort multiplier of the effect (default 1 for every cohort).
    rho, noise_sd : float, optional
        AR(1) coefficient and marginal sd of the errors (0.5 / 1.0; medical 0.5 / 6.0).

    Returns
    -------
    SimulatedPanel
        ``data`` (lazy dask DataFrame with columns ``unit, time, <outcome>, group, treat, age,
        bmi, female``), ``truth``, ``columns`` and ``options``.

    Raises
    ------
    SpecError
        For an invalid option (cohort outside ``2..T``, ``n_units < 1``, shares outside [0, 1)...).
    """
    import dask.dataframe as dd

    d = _resolve(n_units, n_periods, cohorts=cohorts, never_treated_share=never_treated_share,
                 seed=seed, selection=selection, preset=preset, unbalanced_share=unbalanced_share,
                 effect_size=effect_size, cohort_scale=cohort_scale, rho=rho, noise_sd=noise_sd)
    parts = _partition_blocks(d.n_units, npartitions)
    data = dd.from_map(_simulate_partition, parts, design=d, meta=_meta(d),
                       label="simulate-panel", enforce_metadata=False)
    return SimulatedPanel(data=data, truth=_truth(d), columns=_columns(d),
                          options=_options(d, len(parts), preset))


# ----------------------------------------------------------------------------- writing

_OWN_FILES = ("_truth.csv", "_dte_dask.json")


def _write_partition(index: int, blocks: tuple[int, int], design: _Design, out_dir: str, fs: Any = None) -> dict:
    """Simulate one partition and write it as ``part-{index:05d}.parquet``, one row group.

    ``fs``: the fsspec filesystem of an object-store ``out_dir`` (then a single PUT, atomic there).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    df = _simulate_partition(blocks, design)
    units = df["unit"].to_numpy()
    first = np.r_[True, units[1:] != units[:-1]] if len(units) else np.zeros(0, bool)
    gs, counts = np.unique(df["group"].to_numpy()[first], return_counts=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    del df
    name = f"part-{index:05d}.parquet"
    if fs is not None:
        with fs.open(f"{out_dir}/{name}", "wb") as fh:
            pq.write_table(table, fh, row_group_size=max(table.num_rows, 1))
    else:
        tmp = os.path.join(out_dir, f"_tmp-{name}")
        pq.write_table(table, tmp, row_group_size=max(table.num_rows, 1))
        os.replace(tmp, os.path.join(out_dir, name))
    return {"file": name, "rows": int(table.num_rows), "unit_min": int(units[0]),
            "unit_max": int(units[-1]),
            "cohort_counts": {int(g): int(c) for g, c in zip(gs, counts)}}


class _LocalDir:
    """``os`` calls on a local output directory (the object-store twin is :class:`_FsDir`)."""

    fs = None

    def __init__(self, path: str) -> None:
        self.path = path

    def makedirs(self) -> None:
        os.makedirs(self.path, exist_ok=True)

    def listdir(self) -> list[str]:
        return sorted(os.listdir(self.path))

    def remove(self, name: str) -> None:
        os.remove(os.path.join(self.path, name))

    def open(self, name: str, mode: str, **kw: Any) -> Any:
        return open(os.path.join(self.path, name), mode, **kw)

    def errors(self) -> Any:
        return contextlib.nullcontext()


class _FsDir:
    """An output "directory" (prefix) in object storage, through fsspec."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None) -> None:
        from dte_dask import storage

        self.url = url.rstrip("/")
        self.fs, path = storage.filesystem(self.url, storage_options)
        self.path = path.rstrip("/")
        b = storage.bucket(self.fs, self.path)
        if b is not None:
            with self.errors():
                if not storage._bucket_exists(self.fs, b):
                    raise storage.missing(self.url, self.fs)

    def makedirs(self) -> None:
        pass  # object stores have no directories: a prefix exists once an object is under it

    def listdir(self) -> list[str]:
        with self.errors():
            if not self.fs.exists(self.path):
                return []
            if not self.fs.isdir(self.path):
                raise SpecError(f"output {self.url!r} is an object, not a prefix")
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path, detail=False, refresh=True))

    def remove(self, name: str) -> None:
        with self.errors():
            self.fs.rm(f"{self.path}/{name}")

    def open(self, name: str, mode: str, **kw: Any) -> Any:
        return self.fs.open(f"{self.path}/{name}", mode, **kw)

    def errors(self) -> Any:
        from dte_dask import storage

        return storage.errors(self.url, self.fs, action="writing")


def _prepare_dir(out_dir: str | _LocalDir | _FsDir, overwrite: bool) -> None:
    target = _LocalDir(out_dir) if isinstance(out_dir, str) else out_dir
    out_dir = getattr(target, "url", target.path)
    target.makedirs()
    existing = target.listdir()
    if not existing:
        return
    if not overwrite:
        raise SpecError(
            f"output directory {out_dir!r} is not empty ({len(existing)} entries); "
            "pass overwrite=True (CLI: --overwrite) to replace a previous simulation"
        )
    for f in existing:
        if (f.startswith(("part-", "_tmp-part-")) and f.endswith(".parquet")) or f in _OWN_FILES:
            target.remove(f)
    left = target.listdir()
    if left:
        raise SpecError(
            f"output directory {out_dir!r} holds files that write_panel did not write: "
            f"{sorted(left)[:5]}; choose an empty directory"
        )


def write_panel(
    out_dir: str | os.PathLike,
    n_units: int,
    n_periods: int | None = None,
    *,
    overwrite: bool = False,
    scheduler: Any = None,
    num_workers: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Simulate a panel and write it as a parquet directory, one file per partition.

    Each partition is simulated and written inside its own dask task, so the driver never holds
    more than small per-file statistics. Layout of ``out_dir``::

        part-00000.parquet ...  whole units, a contiguous sorted unit range per file, rows sorted
                                by (unit, time), a single row group per file
        _truth.csv              the truth table (group, time, event_time, att)
        _dte_dask.json          columns, n_units, n_periods, seed, options, files with unit ranges,
                                "partitioned_by": "unit"

    The underscore-prefixed side files are ignored by parquet dataset discovery.
    ``dask.dataframe.read_parquet(out_dir)`` returns one partition per file in file order: with a
    single row group per file the default ``split_row_groups="infer"`` cannot split a file and
    files are never aggregated (``aggregate_files`` is off). Caveat: when only a *subset* of columns
    is read, dask-expr may fuse neighbouring files into one partition (``FusedIO``); partitions
    then still hold whole, consecutive unit ranges. For an exact file = partition mapping whatever
    the columns, use ``dask.dataframe.from_map(pandas.read_parquet, files, columns=...)``.

    Parameters
    ----------
    out_dir : str or path
        Target directory; created if missing. Must be empty unless ``overwrite``. An object-store
        URL (``"s3://bucket/prefix"``, any fsspec URL) gets the same objects under that prefix;
        its bucket must exist.
    n_units, n_periods, **options
        As for :func:`simulate_panel` (``cohorts``, ``seed``, ``npartitions``, ``preset``...).
    overwrite : bool, default False
        Replace the files of an earlier simulation in ``out_dir`` (other files make it fail).
    scheduler, num_workers : optional
        Passed to ``dask.compute`` (default: the current scheduler, threads without a Client).
        Peak memory is about ``num_workers`` partitions in flight (~0.6 GiB each for 262k units x
        24 periods, data plus parquet encoding).
    storage_options : mapping, optional
        Options of the fsspec filesystem of a URL ``out_dir`` (``endpoint_url``, ``profile``...);
        credentials from the environment or a profile, as for :func:`dte_dask.load_panel`.

    Returns
    -------
    dict
        The metadata written to ``_dte_dask.json`` plus ``out_dir``, ``n_rows``,
        ``cohort_counts`` ({group: units}) and ``seconds``.
    """
    import dask

    start = _time.perf_counter()
    unknown = set(options) - set(_SIM_OPTIONS)
    if unknown:
        raise SpecError(f"unknown simulation options: {sorted(unknown)}")
    npartitions = options.pop("npartitions", None)
    preset = options.get("preset")
    d = _resolve(n_units, n_periods, **{**_SIM_DEFAULTS, **options})
    parts = _partition_blocks(d.n_units, npartitions)
    from dte_dask import storage

    out = os.fspath(out_dir)
    target = _FsDir(out, storage_options) if storage.is_url(out) else _LocalDir(out)
    _prepare_dir(target, overwrite)
    tasks = [dask.delayed(_write_partition, pure=True)(i, blk, d, target.path, target.fs)
             for i, blk in enumerate(parts)]
    kw: dict[str, Any] = {}
    if scheduler is not None:
        kw["scheduler"] = scheduler
    if num_workers is not None:
        kw["num_workers"] = num_workers
    with target.errors():
        stats = list(dask.compute(*tasks, **kw))
        truth = _truth(d)
        with target.open("_truth.csv", "w", newline="") as fh:
            truth.to_csv(fh, index=False)
    counts: dict[int, int] = {}
    for s in stats:
        for g, c in s.pop("cohort_counts").items():
            counts[g] = counts.get(g, 0) + c
    meta = {
        "format": "dte_dask.simulate/1", "columns": _columns(d), "n_units": d.n_units,
        "n_periods": d.n_periods, "seed": d.seed, "partitioned_by": "unit",
        "sorted_by": ["unit", "time"], "options": _options(d, len(parts), preset),
        "n_rows": sum(s["rows"] for s in stats),
        "cohort_counts": {str(g): counts[g] for g in sorted(counts)}, "files": stats,
    }
    with target.errors(), target.open("_dte_dask.json", "w") as fh:
        json.dump(meta, fh, indent=2)
    return {**meta, "out_dir": out, "cohort_counts": dict(sorted(counts.items())),
            "seconds": _time.perf_counter() - start}


_SIM_DEFAULTS: dict[str, Any] = dict(
    cohorts=None, never_treated_share=0.3, seed=0, selection=None, preset=None,
    unbalanced_share=0.0, effect_size=None, cohort_scale=None, rho=None, noise_sd=None,
)
_SIM_OPTIONS = (*_SIM_DEFAULTS, "npartitions")
