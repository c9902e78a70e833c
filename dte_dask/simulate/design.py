"""Simulation design: presets, the true effect path, cohorts, and the validated options
(:class:`Design`) every simulation block is drawn from (see :mod:`dte_dask.simulate`)."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dte_dask.exceptions import SpecError

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

COVARIATES = ("age", "bmi", "female")


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
class Design:
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

def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SpecError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise SpecError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_share(name: str, value: Any) -> float:
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


def resolve_design(
    n_units: Any, n_periods: Any, *, cohorts: Any, never_treated_share: Any, seed: Any,
    selection: Any, preset: Any, unbalanced_share: Any, effect_size: Any, cohort_scale: Any,
    rho: Any, noise_sd: Any,
) -> Design:
    """Validate the user options against the preset and return the design."""
    if preset not in PRESETS:
        raise SpecError(f"preset must be one of {sorted(str(p) for p in PRESETS)}, got {preset!r}")
    par = dict(PRESETS[preset])
    n_units = check_int("n_units", n_units, 1)
    T = check_int("n_periods", par["n_periods"] if n_periods is None else n_periods, 2)
    seed = check_int("seed", seed, 0)
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
    share = check_share("never_treated_share", never_treated_share)
    unbal = check_share("unbalanced_share", unbalanced_share)
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
    return Design(
        n_units=n_units, n_periods=T, seed=seed, cohorts=cohorts, probs=tuple(probs.tolist()),
        sel_base=tuple(base.tolist()), sel_slope=tuple(slopes.tolist()), selection=sel,
        unbalanced_share=unbal, outcome=par["outcome"], mu=par["mu"], b_age=par["b_age"],
        b_bmi=par["b_bmi"], b_female=par["b_female"], unit_sd=par["unit_sd"], drift=par["drift"],
        season=par["season"], g_age=par["g_age"] if sel else 0.0,
        g_bmi=par["g_bmi"] if sel else 0.0, noise_sd=noise_sd, rho=rho, effect_size=eff,
        scales=scales,
    )

SIM_DEFAULTS: dict[str, Any] = dict(
    cohorts=None, never_treated_share=0.3, seed=0, selection=None, preset=None,
    unbalanced_share=0.0, effect_size=None, cohort_scale=None, rho=None, noise_sd=None,
)
SIM_OPTIONS = (*SIM_DEFAULTS, "npartitions")
