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

from dte_dask.simulate.design import (
    PRESETS,
    SIM_BLOCK,
    SimulatedPanel,
    compliance,
    default_cohorts,
    true_effect,
)
from dte_dask.simulate.generate import simulate_panel
from dte_dask.simulate.write import write_panel

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
