"""Thin adapters that run Callaway–Sant'Anna ATT(g,t) with the installed Python peers.

Each peer gets two functions with one signature::

    att_gt_<peer>(df, outcome, unit, time, group, covariates=None,
                  control_group="never_treated", anticipation=0,
                  base_period="varying", est_method="dr", weights=None,
                  allow_unbalanced_panel=False) -> DataFrame[group, time, att, se]

    aggte_<peer>(df, ..., kinds=("simple", "dynamic", "group", "calendar"))
        -> DataFrame[agg, key, att, se]

``ATT_GT`` and ``AGGTE`` map a peer name to its function; ``SUPPORT`` records which options each
peer supports. Requesting an unsupported option raises ``NotImplementedError("<peer> does not
support X")``. Peers are imported lazily inside the functions, so importing this module never
requires them.

Conventions (those of R ``did``, which the adapters normalise to):

* the input is a long pandas panel; ``group`` is the first treated period, with never-treated
  units coded 0, NaN or +inf (each adapter recodes to what its peer needs);
* standard errors are the analytic influence-function ones (no bootstrap, no uniform bands),
  ``se = sqrt(mean(IF**2) / n)`` per cell, clustered at the unit level;
* rows are sorted by (group, time); ``group``/``time`` take the dtype of ``df[time]``;
* ``base_period="universal"``: the reference cell of each cohort is reported with ``att=0`` and
  ``se=NaN`` (as R does);
* aggregation keys are strings: ``"overall"``, or the event time / group / calendar period
  (``"-3"``, ``"2004"``), as in the reference CSVs in ``tests/reference``. R's aggregations:
  ``simple`` (group-size weighted mean of post-treatment cells), ``dynamic`` (event study;
  overall = mean of the ``e >= 0`` effects), ``group`` (overall = group-size weighted mean of
  the group effects), ``calendar`` (overall = mean of the period effects);
* ``allow_unbalanced_panel=False`` means R's behaviour: units not observed in every period are
  dropped before estimation. ``True`` means R's "unbalanced panel" estimator (repeated cross
  sections, influence function summed within unit).

Peer quirks (csdid 0.4.3, moderndid 0.2.0, diff-diff 3.13.0, differences 0.3.0; all four run
with pandas 3.1 / numpy 2.4). "Matches" below means agreement with csdid, which reproduces R
``did`` (and the R vignette) to ~1e-17, on mpdta and on weighted / unbalanced variants of it.

csdid (``csdid.att_gt.ATTgt``)
    A line-by-line port of R ``did``. Unit ids must be numeric (the adapter factorises string
    ids). Never-treated coded 0 or inf; cohorts later than the last period count as never
    treated. Covariates as a patsy formula ``"y ~ x1 + x2"``. ``ATTgt.aggte`` prints its summary
    to stdout (suppressed here) and stores a dict in ``.atte`` (``overall_att``,
    ``overall_se``, ``egt``, ``att_egt``, ``se_egt``). The constructor's default
    ``control_group`` is a list sentinel: always pass a string. ``allow_unbalanced_panel=False``
    balances the panel like R; ``True`` uses the RC estimators with unit-clustered IF.
    Bootstrap: ``fit(bstrap=True)`` with ``biters=`` in the constructor; draws come from the
    global ``np.random`` state (seed it yourself). Clustering: ``clustervar=`` (one variable
    beyond the unit), analytic clustered SEs when ``bstrap=False`` (R needs the bootstrap).
moderndid (``moderndid.att_gt`` / ``moderndid.aggte``)
    Same numbers as csdid. Unit ids must be numeric. ``cband=True`` is the default: pass
    ``cband=False`` for pointwise inference (``boot=False`` is the default). Covariates as
    ``"~ x1 + x2"``. Accepts pandas / polars / arrow; a *dask* DataFrame dispatches to its
    distributed implementation (``moderndid.dask_att_gt``), which uses the current
    ``distributed.Client`` or starts a ``LocalCluster``. Bugs in 0.2.0: (1) with
    ``weightsname`` the result's ``weights_ind`` is ``None`` (it looks the user's column up after
    renaming it), so ``aggte`` weights groups by *unweighted* sizes (simple ATT off by 5e-3 on
    weighted mpdta); the adapter puts the unit weights back (``MPResult._replace``; units are
    ordered by (group with never = inf, id)). (2) ``allow_unbalanced_panel=True`` on an
    unbalanced panel crashes (``TypeError`` in ``run_att_gt_estimation``): unsupported here.
    ``clustervars`` must be a list. Bootstrap: ``boot=True, biters=, random_state=``.
diff-diff (``diff_diff.CallawaySantAnna``)
    String unit ids are fine. No covariates, ``reg`` and ``ipw``: matches to 1e-13. With
    covariates its ``dr`` estimator weights the controls by ``p/(1-p)`` *unnormalised* (divided
    by the treated count, not by the sum of the control weights; ``staggered.py`` ~L3636), so
    ATT(g,t) differs from R by up to 6.7e-6 (SE 6.6e-5 relative) on mpdta; not a solver issue
    (tightening ``solve_logit`` to 1e-15 changes nothing, nor does ``pscore_trim``, which clips
    scores to [0.01, 0.99] by default where R only drops controls with p >= 0.995). Sampling
    weights only via ``fit(survey_design=SurveyDesign(weights=col))``; that matches R exactly
    (not with ``allow_unbalanced_panel=True``, which raises). ``allow_unbalanced_panel=False``
    does *not* balance an unbalanced panel (it differences within cells and warns), so the
    adapter balances first; ``True`` uses R's RC estimator but with a CR1 ``sqrt(G/(G-1))``
    factor on the SEs, which the adapter removes. With anticipation ``a`` it reports all-NaN
    rows for cohorts ``g <= t_1 + a`` (R drops them; so does the adapter) and its simple/group
    aggregations count the anticipation cells ``g-a <= t < g`` as post-treatment (R uses
    ``t >= g``): unsupported here. Cohorts later than the last period are not recoded as never
    treated (it raises "No never-treated units"; the adapter recodes). No calendar aggregation
    and no overall for dynamic/group (``aggregate("total")`` is a different estimand).
    Bootstrap: ``n_bootstrap=999, seed=`` (analytic when 0); ``cluster=`` gives CR1 SEs.
differences (``differences.ATTgt``)
    Never-treated must be NaN (0 raises). Data indexed by ``[unit, time]``. ``est_method``
    ``"dr"``, ``"reg"``, ``"std_ipw"`` (R's ``"ipw"``); ``fit``'s default is ``"reg"``. The
    formula is ``"y ~ x1 + x2"`` (``"y"`` alone without covariates); covariates take their
    base-period value. Float periods with float cohorts raise ("must be both numeric"): the
    adapter casts integral float periods to int. With covariates the SEs differ from R by up to
    ~1e-7 relative (its logit converges less tightly). An unbalanced panel is *always*
    estimated as repeated cross sections and those estimates disagree with R (ATT off by up to
    5e-2 on mpdta with 6% of rows dropped): the adapter balances the panel for
    ``allow_unbalanced_panel=False`` and refuses ``True``. Aggregations are ``simple`` /
    ``cohort`` / ``event`` / ``time``, overall via ``overall=True``. ``fit`` shows a progress
    bar unless ``progress_bar=False``. Bootstrap: ``boot_iterations=999, random_state=``; the
    draws depend on ``n_jobs``. ``cluster_var=`` for clustered SEs (bootstrap).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "AGGTE",
    "ATT_GT",
    "PEERS",
    "SUPPORT",
    "aggte_csdid",
    "aggte_diff_diff",
    "aggte_differences",
    "aggte_moderndid",
    "att_gt_csdid",
    "att_gt_diff_diff",
    "att_gt_differences",
    "att_gt_moderndid",
    "balance_panel",
    "supported_kinds",
    "tolerance",
]

PEERS = ("csdid", "moderndid", "diff_diff", "differences")
AGG_KINDS = ("simple", "dynamic", "group", "calendar")


#: What each adapter supports; verified on mpdta (and an unbalanced/weighted variant of it)
#: against csdid, which itself reproduces R ``did`` (see tests/test_peers_smoke.py).
#: ``tol`` is ``(att abs, se rel)`` within which the peer agrees with R ``did`` (and
#: ``tol_dr_covariates`` for ``est_method="dr"`` with covariates where a quirk forces more);
#: ``overall`` lists the aggregations that report an overall effect.
SUPPORT: dict[str, dict[str, object]] = {
    "csdid": {
        "covariates": True,
        "control_group": ("never_treated", "not_yet_treated"),
        "anticipation": True,
        "base_period": ("varying", "universal"),
        "est_method": ("dr", "ipw", "reg"),
        "weights": True,
        "allow_unbalanced_panel": True,
        "aggregations": ("simple", "dynamic", "group", "calendar"),
        "overall": ("simple", "dynamic", "group", "calendar"),
        "bootstrap": True,
        "cluster": True,
        "tol": (1e-8, 1e-6),
    },
    "moderndid": {
        "covariates": True,
        "control_group": ("never_treated", "not_yet_treated"),
        "anticipation": True,
        "base_period": ("varying", "universal"),
        "est_method": ("dr", "ipw", "reg"),
        "weights": True,
        # 0.2.0 crashes (TypeError in run_att_gt_estimation) on an unbalanced panel
        "allow_unbalanced_panel": False,
        "aggregations": ("simple", "dynamic", "group", "calendar"),
        "overall": ("simple", "dynamic", "group", "calendar"),
        "bootstrap": True,
        "cluster": True,
        "tol": (1e-8, 1e-6),
    },
    "diff_diff": {
        "covariates": True,
        "control_group": ("never_treated", "not_yet_treated"),
        "anticipation": True,
        "base_period": ("varying", "universal"),
        "est_method": ("dr", "ipw", "reg"),
        "weights": True,  # through survey_design=SurveyDesign(weights=...)
        "allow_unbalanced_panel": True,  # SE rescaled by sqrt((G-1)/G) here
        "aggregations": ("simple", "dynamic", "group"),
        "overall": ("simple",),
        "bootstrap": True,
        "cluster": True,
        # simple/group with anticipation > 0 count t in [g-a, g) as post-treatment, unlike R
        "aggregations_with_anticipation": ("dynamic",),
        "tol": (1e-8, 1e-6),
        # unnormalised DR control weights once covariates enter the propensity score
        "tol_dr_covariates": (2e-5, 2e-4),
    },
    "differences": {
        "covariates": True,
        "control_group": ("never_treated", "not_yet_treated"),
        "anticipation": True,
        "base_period": ("varying", "universal"),
        "est_method": ("dr", "ipw", "reg"),
        "weights": True,
        # its RC estimator on an unbalanced panel disagrees with R (ATT off by ~5e-2 on mpdta)
        "allow_unbalanced_panel": False,
        "aggregations": ("simple", "dynamic", "group", "calendar"),
        "overall": ("simple", "dynamic", "group", "calendar"),
        "bootstrap": True,
        "cluster": True,
        "tol": (1e-8, 1e-6),  # SEs with covariates: ~1e-7 relative (looser logit convergence)
    },
}


def supported_kinds(peer: str, anticipation: int = 0) -> tuple[str, ...]:
    """The aggregations ``aggte_<peer>`` computes as R does for this ``anticipation``."""
    sup = SUPPORT[peer]
    if anticipation:
        return tuple(sup.get("aggregations_with_anticipation", sup["aggregations"]))
    return tuple(sup["aggregations"])


def tolerance(peer: str, covariates=None, est_method: str = "dr") -> tuple[float, float]:
    """``(att abs, se rel)`` tolerance within which ``peer`` reproduces R ``did``."""
    sup = SUPPORT[peer]
    if covariates and est_method == "dr":
        return tuple(sup.get("tol_dr_covariates", sup["tol"]))
    return tuple(sup["tol"])


# ----------------------------------------------------------------------------- helpers


def _check_options(peer, *, control_group, base_period, est_method, weights, covariates,
                   allow_unbalanced_panel, anticipation):
    sup = SUPPORT[peer]
    name = peer.replace("_", "-")
    if control_group not in ("never_treated", "not_yet_treated"):
        raise ValueError(f"control_group must be 'never_treated' or 'not_yet_treated', "
                         f"got {control_group!r}")
    if base_period not in ("varying", "universal"):
        raise ValueError(f"base_period must be 'varying' or 'universal', got {base_period!r}")
    if est_method not in ("dr", "ipw", "reg"):
        raise ValueError(f"est_method must be 'dr', 'ipw' or 'reg', got {est_method!r}")
    if anticipation < 0 or int(anticipation) != anticipation:
        raise ValueError(f"anticipation must be a non-negative integer, got {anticipation!r}")
    if control_group not in sup["control_group"]:
        raise NotImplementedError(f"{name} does not support control_group={control_group!r}")
    if base_period not in sup["base_period"]:
        raise NotImplementedError(f"{name} does not support base_period={base_period!r}")
    if est_method not in sup["est_method"]:
        raise NotImplementedError(f"{name} does not support est_method={est_method!r}")
    if anticipation and not sup["anticipation"]:
        raise NotImplementedError(f"{name} does not support anticipation")
    if weights is not None and not sup["weights"]:
        raise NotImplementedError(f"{name} does not support sampling weights")
    if covariates and not sup["covariates"]:
        raise NotImplementedError(f"{name} does not support covariates")
    if allow_unbalanced_panel and not sup["allow_unbalanced_panel"]:
        raise NotImplementedError(f"{name} does not support allow_unbalanced_panel=True")


def _never_mask(g: pd.Series) -> pd.Series:
    g = pd.to_numeric(g)
    return g.isna() | (g == 0) | np.isinf(g.astype("float64"))


def _prepare(df, outcome, unit, time, group, covariates, weights, never_code,
             anticipation=0, numeric_ids=False):
    """Select the needed columns and recode never-treated as ``never_code`` (0 or NaN).

    As in R ``did``, units first treated after the last period (plus anticipation) count as
    never treated. ``numeric_ids`` replaces non-numeric unit ids by their (sorted) codes.
    """
    cols = list(dict.fromkeys([unit, time, outcome, group, *(covariates or []),
                               *([weights] if weights else [])]))
    out = df.loc[:, cols].copy()
    g = pd.to_numeric(out[group]).astype("float64")
    g[_never_mask(g) | (g > out[time].max() + anticipation)] = never_code
    out[group] = g
    if numeric_ids and not pd.api.types.is_numeric_dtype(out[unit]):
        out[unit] = pd.factorize(out[unit], sort=True)[0]
    return out


def balance_panel(df: pd.DataFrame, unit: str, time: str) -> pd.DataFrame:
    """Keep the units observed in every period (R ``did``, ``allow_unbalanced_panel=FALSE``)."""
    n_periods = df[time].nunique()
    counts = df.groupby(unit)[time].transform("nunique")
    return df.loc[counts == n_periods]


def _gt_frame(group, tt, att, se, dtype) -> pd.DataFrame:
    out = pd.DataFrame({
        "group": np.asarray(group, dtype="float64"),
        "time": np.asarray(tt, dtype="float64"),
        "att": np.asarray(att, dtype="float64"),
        "se": np.asarray(se, dtype="float64"),
    })
    if np.issubdtype(np.dtype(dtype), np.integer):
        out["group"] = out["group"].round().astype(dtype)
        out["time"] = out["time"].round().astype(dtype)
    return out.sort_values(["group", "time"], kind="stable").reset_index(drop=True)


def _key(k) -> str:
    if isinstance(k, str):
        return k
    k = float(k)
    return str(int(k)) if k.is_integer() else repr(k)


def _agg_rows(rows) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=["agg", "key", "att", "se"])
    out["key"] = out["key"].map(_key).astype(object)
    out["att"] = out["att"].astype("float64")
    out["se"] = out["se"].astype("float64")
    return out


def _check_kinds(peer, kinds):
    kinds = tuple(kinds)
    for k in kinds:
        if k not in AGG_KINDS:
            raise ValueError(f"unknown aggregation {k!r}; expected one of {AGG_KINDS}")
        if k not in SUPPORT[peer]["aggregations"]:
            raise NotImplementedError(f"{peer.replace('_', '-')} does not support the {k!r} "
                                      f"aggregation")
    return kinds


# ----------------------------------------------------------------------------- csdid


def _fit_csdid(df, outcome, unit, time, group, covariates=None, control_group="never_treated",
               anticipation=0, base_period="varying", est_method="dr", weights=None,
               allow_unbalanced_panel=False):
    _check_options("csdid", control_group=control_group, base_period=base_period,
                   est_method=est_method, weights=weights, covariates=covariates,
                   allow_unbalanced_panel=allow_unbalanced_panel, anticipation=anticipation)
    from csdid.att_gt import ATTgt

    data = _prepare(df, outcome, unit, time, group, covariates, weights, never_code=0.0,
                    anticipation=anticipation, numeric_ids=True)
    xformla = f"{outcome} ~ " + " + ".join(covariates) if covariates else None
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        model = ATTgt(
            yname=outcome, tname=time, idname=unit, gname=group, data=data,
            control_group=control_group.replace("_", ""), xformla=xformla,
            allow_unbalanced_panel=allow_unbalanced_panel, weights_name=weights,
            anticipation=anticipation, cband=False,
        ).fit(est_method=est_method, base_period=base_period, bstrap=False)
    return model


def att_gt_csdid(df, outcome, unit, time, group, covariates=None, control_group="never_treated",
                 anticipation=0, base_period="varying", est_method="dr", weights=None,
                 allow_unbalanced_panel=False) -> pd.DataFrame:
    """ATT(g,t) with csdid's ``ATTgt(...).fit(bstrap=False)``."""
    m = _fit_csdid(df, outcome, unit, time, group, covariates, control_group, anticipation,
                   base_period, est_method, weights, allow_unbalanced_panel)
    r = m.results
    return _gt_frame(r["group"], r["year"], r["att"], r["se"], df[time].dtype)


def aggte_csdid(df, outcome, unit, time, group, covariates=None, control_group="never_treated",
                anticipation=0, base_period="varying", est_method="dr", weights=None,
                allow_unbalanced_panel=False, kinds: Sequence[str] = AGG_KINDS) -> pd.DataFrame:
    """Aggregations with csdid's ``ATTgt.aggte(typec, bstrap=False)``."""
    kinds = _check_kinds("csdid", kinds)
    m = _fit_csdid(df, outcome, unit, time, group, covariates, control_group, anticipation,
                   base_period, est_method, weights, allow_unbalanced_panel)
    rows = []
    for kind in kinds:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            a = m.aggte(typec=kind, bstrap=False, cband=False).atte
        rows.append((kind, "overall", a["overall_att"], a["overall_se"]))
        if kind != "simple":
            se = np.asarray(a["se_egt"], dtype="float64").reshape(-1)
            rows.extend((kind, k, att, s)
                        for k, att, s in zip(a["egt"], a["att_egt"], se, strict=True))
    return _agg_rows(rows)


# ----------------------------------------------------------------------------- moderndid


def _fit_moderndid(df, outcome, unit, time, group, covariates=None,
                   control_group="never_treated", anticipation=0, base_period="varying",
                   est_method="dr", weights=None, allow_unbalanced_panel=False):
    _check_options("moderndid", control_group=control_group, base_period=base_period,
                   est_method=est_method, weights=weights, covariates=covariates,
                   allow_unbalanced_panel=allow_unbalanced_panel, anticipation=anticipation)
    import moderndid

    data = _prepare(df, outcome, unit, time, group, covariates, weights, never_code=0.0,
                    anticipation=anticipation, numeric_ids=True)
    data = balance_panel(data, unit, time)  # what moderndid does too; keeps weights aligned
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = moderndid.att_gt(
            data, yname=outcome, tname=time, idname=unit, gname=group,
            xformla="~ " + " + ".join(covariates) if covariates else None,
            weightsname=weights, cband=False, boot=False, est_method=est_method,
            allow_unbalanced_panel=allow_unbalanced_panel,
            control_group=control_group.replace("_", ""), anticipation=int(anticipation),
            base_period=base_period,
        )
    if weights is not None and res.weights_ind is None:
        # moderndid 0.2.0 drops the sampling weights from its result (it looks the user's
        # column up after renaming it), so aggte would weight groups by unweighted sizes.
        # Its units are ordered by (group with never-treated as inf, unit id).
        per_unit = data.groupby(unit, sort=True)[[group, weights]].first().reset_index()
        # units treated in the first period are dropped, as in R
        per_unit = per_unit.loc[(per_unit[group] == 0) | (per_unit[group] > data[time].min())]
        per_unit[group] = per_unit[group].replace(0.0, np.inf)
        per_unit = per_unit.sort_values([group, unit], kind="stable")
        if not np.array_equal(np.asarray(res.G, dtype="float64"),
                              per_unit[group].to_numpy(dtype="float64")):
            raise RuntimeError("cannot align the sampling weights with moderndid's units")
        res = res._replace(weights_ind=per_unit[weights].to_numpy(dtype="float64"))
    return res


def att_gt_moderndid(df, outcome, unit, time, group, covariates=None,
                     control_group="never_treated", anticipation=0, base_period="varying",
                     est_method="dr", weights=None, allow_unbalanced_panel=False) -> pd.DataFrame:
    """ATT(g,t) with ``moderndid.att_gt(..., boot=False, cband=False)``."""
    r = _fit_moderndid(df, outcome, unit, time, group, covariates, control_group, anticipation,
                       base_period, est_method, weights, allow_unbalanced_panel)
    return _gt_frame(r.groups, r.times, r.att_gt, r.se_gt, df[time].dtype)


def aggte_moderndid(df, outcome, unit, time, group, covariates=None,
                    control_group="never_treated", anticipation=0, base_period="varying",
                    est_method="dr", weights=None, allow_unbalanced_panel=False,
                    kinds: Sequence[str] = AGG_KINDS) -> pd.DataFrame:
    """Aggregations with ``moderndid.aggte(..., boot=False, cband=False)``."""
    import moderndid

    kinds = _check_kinds("moderndid", kinds)
    r = _fit_moderndid(df, outcome, unit, time, group, covariates, control_group, anticipation,
                       base_period, est_method, weights, allow_unbalanced_panel)
    rows = []
    for kind in kinds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = moderndid.aggte(r, type=kind, boot=False, cband=False)
        rows.append((kind, "overall", a.overall_att, a.overall_se))
        if kind != "simple":
            rows.extend((kind, k, att, s) for k, att, s in
                        zip(a.event_times, a.att_by_event, a.se_by_event, strict=True))
    return _agg_rows(rows)


# ----------------------------------------------------------------------------- diff-diff


def _fit_diff_diff(df, outcome, unit, time, group, covariates=None,
                   control_group="never_treated", anticipation=0, base_period="varying",
                   est_method="dr", weights=None, allow_unbalanced_panel=False):
    _check_options("diff_diff", control_group=control_group, base_period=base_period,
                   est_method=est_method, weights=weights, covariates=covariates,
                   allow_unbalanced_panel=allow_unbalanced_panel, anticipation=anticipation)
    from diff_diff import CallawaySantAnna, SurveyDesign

    if weights is not None and allow_unbalanced_panel:
        raise NotImplementedError("diff-diff does not support sampling weights together with "
                                  "allow_unbalanced_panel=True")
    data = _prepare(df, outcome, unit, time, group, covariates, weights, never_code=0.0,
                    anticipation=anticipation)
    if not allow_unbalanced_panel:
        # diff-diff would difference within cells instead of dropping units, unlike R
        data = balance_panel(data, unit, time)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = CallawaySantAnna(
            control_group=control_group, anticipation=int(anticipation),
            estimation_method=est_method, base_period=base_period, n_bootstrap=0, cband=False,
            allow_unbalanced_panel=allow_unbalanced_panel,
        )
        res = est.fit(data, outcome=outcome, unit=unit, time=time, first_treat=group,
                      covariates=list(covariates) if covariates else None,
                      survey_design=SurveyDesign(weights=weights) if weights else None)
    # On an unbalanced panel (RC estimator) diff-diff applies a CR1 factor sqrt(G/(G-1)) to
    # the unit-clustered variance; R does not.
    n_units = data[unit].nunique()
    se_scale = (np.sqrt((n_units - 1) / n_units)
                if getattr(res, "used_rc_on_unbalanced_panel", False) else 1.0)
    return res, se_scale, data[time].min()


def att_gt_diff_diff(df, outcome, unit, time, group, covariates=None,
                     control_group="never_treated", anticipation=0, base_period="varying",
                     est_method="dr", weights=None, allow_unbalanced_panel=False) -> pd.DataFrame:
    """ATT(g,t) with ``diff_diff.CallawaySantAnna(n_bootstrap=0)``."""
    r, se_scale, t_min = _fit_diff_diff(df, outcome, unit, time, group, covariates,
                                        control_group, anticipation, base_period, est_method,
                                        weights, allow_unbalanced_panel)
    g = r.to_dataframe("group_time")
    # diff-diff keeps (as all-NaN rows) the cohorts R drops: g <= first period + anticipation
    g = g.loc[g["group"] > t_min + anticipation]
    return _gt_frame(g["group"], g["time"], g["effect"], g["se"] * se_scale, df[time].dtype)


def aggte_diff_diff(df, outcome, unit, time, group, covariates=None,
                    control_group="never_treated", anticipation=0, base_period="varying",
                    est_method="dr", weights=None, allow_unbalanced_panel=False,
                    kinds: Sequence[str] = ("simple", "dynamic", "group")) -> pd.DataFrame:
    """Aggregations with ``CallawaySantAnnaResults.aggregate``: simple (overall only), dynamic
    and group (per key only; diff-diff reports no overall for these, and no calendar)."""
    kinds = _check_kinds("diff_diff", kinds)
    ok = SUPPORT["diff_diff"]["aggregations_with_anticipation"]
    if anticipation and set(kinds) - set(ok):
        raise NotImplementedError(
            "diff-diff does not support R's simple/group aggregations with anticipation "
            "(it counts the anticipation cells g-a <= t < g as post-treatment)")
    r, se_scale, _ = _fit_diff_diff(df, outcome, unit, time, group, covariates, control_group,
                                    anticipation, base_period, est_method, weights,
                                    allow_unbalanced_panel)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind in kinds:
            if kind == "simple":
                a = r.aggregate("simple").to_dataframe()
                rows.append(("simple", "overall", a["att"].iloc[0], a["se"].iloc[0]))
            elif kind == "dynamic":
                # with a universal base, the e=-1 reference row (att 0, se NaN) is kept, as in R
                a = r.aggregate("event_study").to_dataframe()
                rows.extend(("dynamic", k, att, s)
                            for k, att, s in zip(a["event_time"], a["att"], a["se"], strict=True))
            elif kind == "group":
                a = r.aggregate("group").to_dataframe()
                rows.extend(("group", k, att, s)
                            for k, att, s in zip(a["label"], a["att"], a["se"], strict=True))
    out = _agg_rows(rows)
    out["se"] *= se_scale
    return out


# ----------------------------------------------------------------------------- differences

_DIFFERENCES_METHOD = {"dr": "dr", "reg": "reg", "ipw": "std_ipw"}
_DIFFERENCES_AGG = {"simple": "simple", "dynamic": "event", "group": "cohort",
                    "calendar": "time"}


def _fit_differences(df, outcome, unit, time, group, covariates=None,
                     control_group="never_treated", anticipation=0, base_period="varying",
                     est_method="dr", weights=None, allow_unbalanced_panel=False):
    _check_options("differences", control_group=control_group, base_period=base_period,
                   est_method=est_method, weights=weights, covariates=covariates,
                   allow_unbalanced_panel=allow_unbalanced_panel, anticipation=anticipation)
    from differences import ATTgt

    data = _prepare(df, outcome, unit, time, group, covariates, weights, never_code=np.nan,
                    anticipation=anticipation)
    t = data[time]
    if pd.api.types.is_float_dtype(t) and (t == t.round()).all():
        data[time] = t.astype("int64")  # differences rejects float periods with float cohorts
    if not allow_unbalanced_panel:
        # differences always treats an unbalanced panel as repeated cross sections
        data = balance_panel(data, unit, time)
    data = data.set_index([unit, time]).sort_index()
    formula = outcome + (" ~ " + " + ".join(covariates) if covariates else "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ATTgt(data=data, cohort_column=group, base_period=base_period,
                      anticipation=int(anticipation))
        model.fit(formula, est_method=_DIFFERENCES_METHOD[est_method],
                  control_group=control_group, weights_column=weights, boot_iterations=0,
                  progress_bar=False)
    return model


def att_gt_differences(df, outcome, unit, time, group, covariates=None,
                       control_group="never_treated", anticipation=0, base_period="varying",
                       est_method="dr", weights=None,
                       allow_unbalanced_panel=False) -> pd.DataFrame:
    """ATT(g,t) with ``differences.ATTgt(...).fit(boot_iterations=0)``."""
    m = _fit_differences(df, outcome, unit, time, group, covariates, control_group,
                         anticipation, base_period, est_method, weights, allow_unbalanced_panel)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = m.results()
    r = r.droplevel(0, axis=1) if r.columns.nlevels == 3 else r
    r.columns = [c[-1] if isinstance(c, tuple) else c for c in r.columns]
    idx = r.index.to_frame(index=False)
    return _gt_frame(idx["cohort"], idx["time"], r["ATT"], r["std_error"], df[time].dtype)


def aggte_differences(df, outcome, unit, time, group, covariates=None,
                      control_group="never_treated", anticipation=0, base_period="varying",
                      est_method="dr", weights=None, allow_unbalanced_panel=False,
                      kinds: Sequence[str] = AGG_KINDS) -> pd.DataFrame:
    """Aggregations with ``differences.ATTgt.aggregate(type, overall=...)``."""
    kinds = _check_kinds("differences", kinds)
    m = _fit_differences(df, outcome, unit, time, group, covariates, control_group,
                         anticipation, base_period, est_method, weights, allow_unbalanced_panel)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind in kinds:
            name = _DIFFERENCES_AGG[kind]
            tables = [(True, m.aggregate(name, overall=True))] if kind == "simple" else [
                (True, m.aggregate(name, overall=True)), (False, m.aggregate(name))]
            for overall, t in tables:
                t = t.copy()
                t.columns = [c[-1] for c in t.columns]
                if overall:
                    rows.append((kind, "overall", t["ATT"].iloc[0], t["std_error"].iloc[0]))
                else:
                    keys = t.index.get_level_values(-1)
                    rows.extend((kind, k, att, s)
                                for k, att, s in zip(keys, t["ATT"], t["std_error"], strict=True))
    return _agg_rows(rows)


ATT_GT: dict[str, Callable[..., pd.DataFrame]] = {
    "csdid": att_gt_csdid,
    "moderndid": att_gt_moderndid,
    "diff_diff": att_gt_diff_diff,
    "differences": att_gt_differences,
}

AGGTE: dict[str, Callable[..., pd.DataFrame]] = {
    "csdid": aggte_csdid,
    "moderndid": aggte_moderndid,
    "diff_diff": aggte_diff_diff,
    "differences": aggte_differences,
}

#: importable module of each peer (for ``pytest.importorskip``)
MODULE = {peer: peer for peer in PEERS}
