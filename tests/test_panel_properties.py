"""Property-based tests of ``load_panel``: random small panels with random corruptions either fail
with a clear PanelError, or load (possibly with a PanelWarning) into blocks that hold exactly the
input: every (unit, period, y) of the kept units, the right cohorts, whole units and RNG blocks."""
from __future__ import annotations

import warnings

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dte_dask import load_panel
from dte_dask.exceptions import (
    ColumnTypeError,
    DuplicateRowsError,
    GroupError,
    MissingValuesError,
    PanelError,
    PanelWarning,
    PeriodError,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CORRUPTIONS = ["drop", "dup", "nan_y", "flip_d", "vary_g", "str_y", "obj_y", "str_t", "float_t",
               "irregular", "mixed_ids", "neg_w", "vary_w", "vary_c", "bool_y"]


@st.composite
def panels(draw, corruptions=st.lists(st.sampled_from(CORRUPTIONS), max_size=3), dask_ok=False):
    """(frame, load kwargs, applied corruptions)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(2, 9))
    T = draw(st.integers(2, 5))
    start = draw(st.sampled_from([1, 7, 2001]))
    step = draw(st.sampled_from([1, 2]))
    times = start + step * np.arange(T)
    # per unit: -1 never, -2 before the panel, T after it, else the period index of the first treatment
    choices = [-1, -1, *range(1, T + 1)] + ([0, -2] if draw(st.booleans()) else [])  # maybe early-treated
    gpos = np.array(draw(st.lists(st.sampled_from(choices), min_size=n, max_size=n)))
    if draw(st.booleans()):  # a never-treated unit and a cohort treated inside the panel
        gpos[:2] = [-1, draw(st.integers(1, T - 1))]
        rng.shuffle(gpos)
    glab = np.where(gpos == -1, 0, np.where(gpos == -2, max(start - step, 1), start + step * np.maximum(gpos, 0)))
    glab = np.where(gpos == T, start + step * T, glab)
    glab = np.where((gpos == -2) & (glab == start), start, glab)  # no earlier period: treated in the first one
    raw_ids = rng.choice(np.arange(-50, 50), size=n, replace=False)
    kind = draw(st.sampled_from(["int", "str", "float", "cat"]))
    ids = {"int": raw_ids, "str": np.array([f"id{v}" for v in raw_ids], dtype=object),
           "float": raw_ids + 0.25, "cat": np.array([f"c{v}" for v in raw_ids], dtype=object)}[kind]
    df = pd.DataFrame({
        "id": np.repeat(ids, T),
        "t": np.tile(times, n),
        "y": np.round(rng.normal(size=n * T) * 100, 3),
        "g": np.repeat(glab, T),
        "w": np.repeat(rng.uniform(0.5, 2.0, size=n), T),
        "c": np.repeat(rng.integers(0, max(1, n // 2), size=n), T),
        "x": rng.normal(size=n * T),
    })
    df["d"] = ((df["g"] > 0) & (df["t"] >= df["g"])).astype(np.int64)
    if kind == "cat":
        cats = list(pd.unique(df["id"]))
        rng.shuffle(cats)
        df["id"] = pd.Categorical(df["id"], categories=cats)
    kw = dict(unit="id", time="t", outcome="y", rng_block_size=draw(st.integers(1, 4)),
              npartitions=draw(st.integers(1, 3)), allow_unbalanced_panel=draw(st.booleans()))
    if draw(st.booleans()):
        kw["treatment"] = "d"
    else:
        kw["group"] = "g"
    if draw(st.booleans()):
        kw["weights"] = "w"
    if draw(st.booleans()):
        kw["cluster"] = "c"
    if draw(st.booleans()):
        kw["covariates"] = ["x"]

    applied = draw(corruptions)
    if dask_ok:
        applied = [c for c in applied if c != "mixed_ids"]
    for c in applied:
        df = _corrupt(df, c, rng, times, step)
    if draw(st.booleans()):
        df = df.sample(frac=1, random_state=int(rng.integers(2**31)))
    return df, kw, applied


def _corrupt(df: pd.DataFrame, what: str, rng, times, step) -> pd.DataFrame:
    try:
        return _apply(df.copy(), what, rng, times, step)
    except (TypeError, ValueError):  # not applicable after an earlier dtype corruption (pandas 3 is strict)
        return df


def _apply(df: pd.DataFrame, what: str, rng, times, step) -> pd.DataFrame:
    m = len(df)
    if m == 0:
        return df
    i = int(rng.integers(m))
    if what == "drop":
        return df.drop(index=df.index[rng.choice(m, size=int(rng.integers(1, max(2, m // 3))), replace=False)])
    if what == "dup":
        return pd.concat([df, df.iloc[rng.choice(m, size=int(rng.integers(1, 3)))]])
    if what == "nan_y":
        df.iloc[i, df.columns.get_loc("y")] = np.nan
    elif what == "flip_d":
        df.iloc[i, df.columns.get_loc("d")] = 1 - df.iloc[i, df.columns.get_loc("d")]
    elif what == "vary_g":
        options = [v for v in [0, *times.tolist()] if v != df["g"].iloc[i]]
        df.iloc[i, df.columns.get_loc("g")] = options[int(rng.integers(len(options)))]
    elif what == "str_y":
        df["y"] = df["y"].astype(str)
    elif what == "obj_y":
        df["y"] = df["y"].astype(object)
    elif what == "bool_y" and pd.api.types.is_numeric_dtype(df["y"].dtype):
        df["y"] = df["y"] > 0
    elif what == "str_t":
        df["t"] = df["t"].astype(str)
    elif what == "float_t":
        df["t"] = df["t"].astype(float)
    elif what == "irregular" and pd.api.types.is_numeric_dtype(df["t"].dtype):
        last = df["t"].max()
        df.loc[df["t"] == last, "t"] = last + step + 1
    elif what == "mixed_ids":
        df["id"] = df["id"].astype(object)
        df.loc[df["id"] == df["id"].iloc[i], "id"] = "zz" if not isinstance(df["id"].iloc[i], str) else 12345
    elif what == "neg_w":
        df.loc[df["id"] == df["id"].iloc[i], "w"] = -1.0
    elif what == "vary_w":
        df.iloc[i, df.columns.get_loc("w")] = df["w"].iloc[i] + 1.0
    elif what == "vary_c":
        df.iloc[i, df.columns.get_loc("c")] = df["c"].iloc[i] + 1
    return df


# ----------------------------------------------------------------------------- the oracle
def _key(v):
    return v.item() if hasattr(v, "item") else v


def expected(df: pd.DataFrame, kw: dict) -> dict:
    """What a valid panel must hold, computed directly from the long frame."""
    ids = pd.Series(df["id"]).astype(object).map(_key).to_numpy()
    t = df["t"].to_numpy(dtype=float)
    labels = np.unique(t)
    step = np.diff(labels).min()
    tidx = np.searchsorted(labels, t)
    T = len(labels)
    units = {}
    for u in pd.unique(ids):
        rows = ids == u
        if "group" in kw:
            g = float(df["g"].to_numpy(dtype=float)[rows][0])
            gi = np.inf if (g == 0 or not np.isfinite(g)) else (g - labels[0]) / step
        else:
            on = df["d"].to_numpy()[rows] == 1
            gi = float(tidx[rows][on].min()) if on.any() else np.inf
        units[u] = {"g": gi, "n": int(rows.sum()),
                    "cells": dict(zip(tidx[rows].tolist(), df["y"].to_numpy(dtype=float)[rows].tolist())),
                    "x": dict(zip(tidx[rows].tolist(), df["x"].to_numpy(dtype=float)[rows].tolist()))
                    if "x" in df else {}}
    early = {u for u, v in units.items() if v["g"] <= 0}
    unbalanced = {u for u, v in units.items() if u not in early and v["n"] < T}
    kept = set(units) - early - (set() if kw["allow_unbalanced_panel"] else unbalanced)
    late = {u for u in kept if np.isfinite(units[u]["g"]) and units[u]["g"] > T - 1}  # R did: never treated
    return {"units": units, "kept": kept, "early": early, "late": late,
            "unbalanced": unbalanced if not kw["allow_unbalanced_panel"] else set(), "T": T}


def check_panel(p, blocks, df: pd.DataFrame, kw: dict, caught: list) -> None:
    exp = expected(df, kw)
    # warnings: exactly R did's two, with the right counts, and ours for cohorts after the last period
    msgs = [str(w.message) for w in caught if issubclass(w.category, PanelWarning)]
    assert all(issubclass(w.category, PanelWarning) for w in caught), [str(w.message) for w in caught]
    assert any(f"Dropped {len(exp['early'])} units" in m for m in msgs) == bool(exp["early"])
    assert any(m.startswith(f"{len(exp['unbalanced'])} units are missing") for m in msgs) == bool(exp["unbalanced"])
    assert any(m.startswith(f"{len(exp['late'])} units of column") and "after the last period" in m
               for m in msgs) == bool(exp["late"])
    assert len(msgs) == bool(exp["early"]) + bool(exp["unbalanced"]) + bool(exp["late"])

    ids = [_key(v) for b in blocks for v in b.ids]
    assert len(ids) == len(set(ids)) == p.n_units  # every unit once
    assert set(ids) == exp["kept"]
    assert p.n_periods == exp["T"]
    n_cells = 0
    for b in blocks:
        assert b.y.shape == (b.n, exp["T"])
        for r, u in enumerate(b.ids):
            unit = exp["units"][_key(u)]
            assert b.g[r] == unit["g"]
            observed = np.flatnonzero(~np.isnan(b.y[r]))
            assert sorted(unit["cells"]) == observed.tolist()
            for j, y in unit["cells"].items():  # every (unit, period, y) of the input, exactly
                assert b.y[r, j] == y
                if "covariates" in kw:
                    assert b.x_at(j)[r, 0] == unit["x"][j]
            n_cells += observed.size
            if "weights" in kw:
                assert b.w[r] == df["w"].to_numpy()[pd.Series(df["id"]).astype(object).map(_key).to_numpy() == _key(u)][0]
    assert n_cells == sum(exp["units"][u]["n"] for u in exp["kept"]) == p.n_rows

    # layout: ranks ordered across partitions, RNG blocks and clusters never split
    ranks = np.concatenate([b.rank for b in blocks])
    assert np.all(np.diff(ranks) >= 0)
    if "cluster" not in kw:
        assert np.all(np.diff(ranks) > 0)
    bs = kw["rng_block_size"]
    spans = [(b.rank.min() // bs, b.rank.max() // bs) for b in blocks if b.n]
    assert all(a[1] < b[0] for a, b in zip(spans[:-1], spans[1:]))
    if "cluster" in kw:
        seen = [set(b.cluster.tolist()) for b in blocks]
        assert sum(len(s) for s in seen) == len(set().union(*seen))
    homogeneous = len({type(i) for i in ids}) <= 1
    if homogeneous and "cluster" not in kw:
        assert ids == sorted(ids)  # stable unit index = sorted ids


def run(df, kw, dask_parts: int | None = None):
    """Load; return (panel, blocks, warnings) or the PanelError. Any other exception fails the test."""
    src = df if dask_parts is None else dd.from_pandas(df, npartitions=dask_parts, sort=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            p = load_panel(src, **kw)
            blocks = dask.compute(*p.blocks)
        except PanelError as exc:
            msg = str(exc)
            assert msg and len(msg) < 2000
            return exc
    return p, blocks, caught


def _record(out) -> None:
    """Outcome statistics (pytest --hypothesis-show-statistics)."""
    event(type(out).__name__ if isinstance(out, PanelError) else "loaded" + (" + PanelWarning" if out[2] else ""))


# ----------------------------------------------------------------------------- properties
@SETTINGS
@given(panels())
def test_corrupted_panels_fail_clearly_or_load_faithfully(case):
    df, kw, _ = case
    before = df.copy(deep=True)
    out = run(df, kw)
    _record(out)
    pd.testing.assert_frame_equal(df, before)  # never mutated
    if not isinstance(out, PanelError):
        check_panel(*out[:2], df, kw, out[2])


@SETTINGS
@given(panels(corruptions=st.lists(st.sampled_from(["drop", "dup", "nan_y", "flip_d", "str_y", "float_t",
                                                     "vary_g", "irregular"]), max_size=2), dask_ok=True),
       st.integers(1, 3))
def test_corrupted_dask_panels_fail_clearly_or_load_faithfully(case, parts):
    df, kw, _ = case
    out = run(df, kw, dask_parts=parts)
    _record(out)
    if not isinstance(out, PanelError):
        check_panel(*out[:2], df, kw, out[2])


def _loadable(df: pd.DataFrame, kw: dict) -> bool:
    exp = expected(df, kw)
    gs = {exp["units"][u]["g"] for u in exp["kept"]}
    treated = {g for g in gs if np.isfinite(g)}
    return bool(exp["kept"]) and (np.inf in gs or len(treated) >= 2) and any(g <= exp["T"] - 1 for g in treated)


@SETTINGS
@given(panels(corruptions=st.lists(st.sampled_from(["drop", "float_t"]), max_size=1)))
def test_clean_panels_load_exactly_when_they_have_controls(case):
    df, kw, applied = case
    out = run(df, kw)
    _record(out)
    if "drop" in applied and isinstance(out, PeriodError):
        return  # dropping every row of a period can make the periods irregular
    if _loadable(df, kw):
        assert not isinstance(out, PanelError), out
        check_panel(*out[:2], df, kw, out[2])
    else:
        assert isinstance(out, PanelError)


@SETTINGS
@given(panels(corruptions=st.just([])), st.sampled_from(["dup", "nan_y", "str_y", "bool_y", "str_t",
                                                          "vary_g", "neg_w", "vary_w", "vary_c"]),
       st.integers(0, 2**31))
def test_a_single_corruption_raises_its_own_error(case, what, seed):
    df, kw, _ = case
    rng = np.random.default_rng(seed)
    if what == "vary_g":
        kw = {k: v for k, v in kw.items() if k != "treatment"} | {"group": "g"}
    if what in ("neg_w", "vary_w"):
        kw = kw | {"weights": "w"}
    if what == "vary_c":
        kw = kw | {"cluster": "c"}
    if what == "dup":
        i = int(rng.integers(len(df)))
        bad = pd.concat([df, df.iloc[[i]]])
    elif what == "nan_y":
        i = int(rng.integers(len(df)))
        bad = df.copy()
        bad.iloc[i, bad.columns.get_loc("y")] = np.nan
    else:
        bad = _corrupt(df, what, rng, np.unique(df["t"]), 1)
    out = run(bad, kw)
    expected_error = {"dup": DuplicateRowsError, "nan_y": MissingValuesError, "str_y": ColumnTypeError,
                      "bool_y": ColumnTypeError, "str_t": PeriodError, "vary_g": GroupError,
                      "neg_w": PanelError, "vary_w": GroupError, "vary_c": GroupError}[what]
    assert isinstance(out, expected_error), out
    msg = str(out)
    column = {"dup": "'t'", "nan_y": "'y'", "str_y": "'y'", "bool_y": "'y'", "str_t": "'t'", "vary_g": "'g'",
              "neg_w": "'w'", "vary_w": "'w'", "vary_c": "'c'"}[what]
    assert column in msg
    if what in ("dup", "nan_y"):  # names the offending (unit, period)
        assert repr((_key(df["id"].iloc[i]), int(df["t"].iloc[i]))) in msg


@pytest.mark.parametrize("kind", ["int", "str"])
def test_oracle_sanity(kind):
    """The oracle itself: a hand-made panel with one early and one unbalanced unit."""
    df = pd.DataFrame({"id": [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4],
                       "t": [1, 2, 3] * 3 + [1, 2], "y": np.arange(11.0), "g": [0] * 3 + [1] * 3 + [3] * 3 + [2] * 2})
    if kind == "str":
        df["id"] = df["id"].map(lambda i: f"u{i}")
    kw = dict(unit="id", time="t", outcome="y", group="g", rng_block_size=1, npartitions=2,
              allow_unbalanced_panel=False)
    exp = expected(df, kw)
    u = (lambda i: f"u{i}") if kind == "str" else (lambda i: i)
    assert exp["early"] == {u(2)} and exp["unbalanced"] == {u(4)} and exp["kept"] == {u(1), u(3)}
    p, blocks, caught = run(df, kw)
    check_panel(p, blocks, df, kw, caught)
