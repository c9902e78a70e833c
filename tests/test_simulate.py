"""Tests of the panel simulator (dte_dask.simulate) and the ``dte-dask simulate`` command."""
from __future__ import annotations

import json
import math

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dte_dask.exceptions import SpecError
from dte_dask.simulate import SIM_BLOCK, default_cohorts, simulate_panel, write_panel

COLS = ["unit", "time", "y", "group", "treat", "age", "bmi", "female"]


def _att(g: int, t: int, size: float = 3.0, scale: float = 1.0) -> float:
    """The documented truth, written out independently of the implementation."""
    e = t - g
    if e < 0 or e > 15:
        return 0.0
    return scale * size * (1 - math.exp(-0.3 * (e + 1))) * (0.82 + 0.18 * math.cos(
        2 * math.pi * (t - 1) / 12))


def _compute(ddf) -> pd.DataFrame:
    return ddf.compute(scheduler="sync").reset_index(drop=True)


# ----------------------------------------------------------------------------- determinism

@pytest.mark.parametrize("unbalanced", [0.0, 0.2])
def test_identical_for_any_npartitions(unbalanced):
    n = 30_000  # 8 simulation blocks, so 7 partitions is a real split
    ref = _compute(simulate_panel(n, 6, npartitions=1, seed=11,
                                  unbalanced_share=unbalanced).data)
    for k in (3, 7):
        sim = simulate_panel(n, 6, npartitions=k, seed=11, unbalanced_share=unbalanced)
        assert sim.data.npartitions == k
        pd.testing.assert_frame_equal(_compute(sim.data), ref)
    # npartitions above the number of blocks is capped; data unchanged
    sim = simulate_panel(n, 6, npartitions=100, seed=11, unbalanced_share=unbalanced)
    assert sim.data.npartitions == math.ceil(n / SIM_BLOCK)
    pd.testing.assert_frame_equal(_compute(sim.data), ref)


def test_seed_changes_data_and_is_reproducible():
    a = _compute(simulate_panel(5000, 4, seed=1).data)
    b = _compute(simulate_panel(5000, 4, seed=1).data)
    c = _compute(simulate_panel(5000, 4, seed=2).data)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["y"], c["y"])


def test_layout_dtypes_and_invariants():
    n, T = 10_000, 7
    sim = simulate_panel(n, T, npartitions=2, seed=3)
    assert list(sim.data.columns) == COLS
    parts = [sim.data.partitions[i].compute(scheduler="sync") for i in range(2)]
    lo = 1
    for p in parts:
        assert p["unit"].iloc[0] == lo and p["unit"].is_monotonic_increasing
        assert (p["unit"].iloc[0] - 1) % SIM_BLOCK == 0
        assert not p.duplicated(["unit", "time"]).any()
        assert (p.groupby("unit")["time"].diff().dropna() == 1).all()
        lo = p["unit"].iloc[-1] + 1
    df = pd.concat(parts, ignore_index=True)
    assert lo == n + 1 and len(df) == n * T
    assert df.dtypes.to_dict() == sim.data._meta.dtypes.to_dict()
    assert df.dtypes["unit"] == np.int64 and df.dtypes["y"] == np.float64
    assert set(df["time"]) == set(range(1, T + 1))
    assert set(df["group"]) == {0, *sim.options["cohorts"]}
    # time-invariant columns, absorbing treatment consistent with group
    assert (df.groupby("unit")[["group", "age", "bmi", "female"]].nunique() == 1).all().all()
    expect = ((df["group"] > 0) & (df["time"] >= df["group"])).astype(np.int8)
    assert (df["treat"] == expect).all()
    assert df["female"].isin([0, 1]).all()
    assert df["age"].between(30, 90).all() and df["bmi"].between(16, 45).all()
    share = (df.drop_duplicates("unit")["group"] == 0).mean()
    assert abs(share - 0.3) < 0.03
    assert sim.columns == {"unit": "unit", "time": "time", "outcome": "y", "group": "group",
                           "treatment": "treat", "covariates": ["age", "bmi", "female"]}


def test_unbalanced_is_subset_of_balanced():
    full = _compute(simulate_panel(9000, 6, seed=5).data)
    unb = _compute(simulate_panel(9000, 6, seed=5, unbalanced_share=0.3).data)
    assert abs(1 - len(unb) / len(full) - 0.3) < 0.02
    assert unb["unit"].nunique() == 9000  # never a whole unit dropped
    merged = unb.merge(full, on=["unit", "time"], suffixes=("", "_full"), validate="1:1")
    assert len(merged) == len(unb)
    np.testing.assert_array_equal(merged["y"], merged["y_full"])


# ----------------------------------------------------------------------------- truth

def test_truth_matches_documented_formula():
    T = 24  # long enough for the fade-out after 15 periods
    sim = simulate_panel(100, T, cohorts=[3, 9, 20], cohort_scale={9: 0.5})
    tr = sim.truth
    assert list(tr.columns) == ["group", "time", "event_time", "att"]
    assert len(tr) == 3 * T
    assert (tr["event_time"] == tr["time"] - tr["group"]).all()
    expect = [_att(g, t, scale=0.5 if g == 9 else 1.0) for g, t in zip(tr["group"], tr["time"])]
    np.testing.assert_allclose(tr["att"], expect, rtol=1e-13, atol=1e-15)
    assert (tr.loc[tr["event_time"] < 0, "att"] == 0).all()
    assert (tr.loc[tr["event_time"] > 15, "att"] == 0).all()
    assert (tr.loc[tr["event_time"].between(0, 15), "att"] > 0).all()


def test_medical_preset():
    sim = simulate_panel(3000, preset="medical", cohort_scale=[1, 1, 1, 1, 2])
    o = sim.options
    assert sim.columns["outcome"] == "sbp" and o["n_periods"] == 24
    assert o["cohorts"] == [4, 7, 10, 13, 16] and o["selection"] is True
    tr = sim.truth
    expect = [_att(g, t, size=-4.0, scale=2.0 if g == 16 else 1.0)
              for g, t in zip(tr["group"], tr["time"])]
    np.testing.assert_allclose(tr["att"], expect, rtol=1e-13, atol=1e-15)
    assert tr["att"].min() < -3
    df = _compute(sim.data)
    assert "sbp" in df and "y" not in df
    assert 130 < df["sbp"].mean() < 150


def test_default_cohorts():
    assert default_cohorts(8) == (3, 5, 7)
    assert default_cohorts(2) == (2,)
    assert default_cohorts(24) == (5, 9, 13, 17, 21)
    for T in range(2, 40):
        gs = default_cohorts(T)
        assert all(2 <= g <= T for g in gs) and len(gs) == (5 if T >= 12 else min(3, T - 1))


def _did(df: pd.DataFrame, g: int, t: int, adjust: bool = False) -> tuple[float, float]:
    """2x2 DiD of cohort g vs never treated between g-1 and t (optionally covariate-adjusted)."""
    w = df[df["time"].isin([g - 1, t])].pivot(index="unit", columns="time", values="y")
    dy = (w[t] - w[g - 1]).to_numpy()
    grp = df.drop_duplicates("unit").set_index("unit").loc[w.index]
    tr, co = (grp["group"] == g).to_numpy(), (grp["group"] == 0).to_numpy()
    if not adjust:
        est = dy[tr].mean() - dy[co].mean()
        return est, math.sqrt(dy[tr].var(ddof=1) / tr.sum() + dy[co].var(ddof=1) / co.sum())
    X = np.column_stack([np.ones(len(grp)), grp["age"], grp["bmi"]])
    beta = np.linalg.lstsq(X[co], dy[co], rcond=None)[0]
    return (dy[tr] - X[tr] @ beta).mean(), math.nan


def _post_cells(truth: pd.DataFrame):
    return truth[truth["event_time"] >= 0].itertuples(index=False)


def test_simple_did_recovers_truth_without_selection():
    sim = simulate_panel(40_000, 8, seed=7)
    df = _compute(sim.data)
    cells = list(_post_cells(sim.truth))
    assert len(cells) >= 10
    for c in cells:
        est, se = _did(df, c.group, c.time)
        assert abs(est - c.att) < 4 * se, (c, est, se)


def test_selection_biases_unconditional_did_but_not_conditional():
    sim = simulate_panel(40_000, 8, seed=7, selection=True)
    df = _compute(sim.data)
    z = []
    for c in _post_cells(sim.truth):
        est, se = _did(df, c.group, c.time)
        z.append((est - c.att) / se)
        adj, _ = _did(df, c.group, c.time, adjust=True)
        assert abs(adj - c.att) < 4 * se, (c, adj, se)  # conditional PT holds
    assert max(np.abs(z)) > 8, z
    # older / heavier units are treated earlier
    units = df.drop_duplicates("unit")
    first = min(sim.options["cohorts"])
    assert units.loc[units["group"] == first, "age"].mean() > units.loc[
        units["group"] == 0, "age"].mean() + 2


# ----------------------------------------------------------------------------- writing

def test_write_panel_round_trip(tmp_path):
    out = tmp_path / "sim"
    info = write_panel(out, 20_000, 5, npartitions=3, seed=4, unbalanced_share=0.1,
                       scheduler="sync")
    files = sorted(p.name for p in out.iterdir())
    assert files == ["_dte_dask.json", "_truth.csv", "part-00000.parquet", "part-00001.parquet",
                     "part-00002.parquet"]
    meta = json.loads((out / "_dte_dask.json").read_text())
    assert meta["partitioned_by"] == "unit" and meta["n_units"] == 20_000
    assert meta["n_periods"] == 5 and meta["seed"] == 4
    assert meta["columns"]["outcome"] == "y" and meta["options"]["unbalanced_share"] == 0.1
    assert sum(info["cohort_counts"].values()) == 20_000
    ref = simulate_panel(20_000, 5, seed=4, unbalanced_share=0.1)
    pd.testing.assert_frame_equal(pd.read_csv(out / "_truth.csv"), ref.truth)
    ddf = dd.read_parquet(out)
    assert ddf.npartitions == 3
    lens = ddf.map_partitions(len).compute(scheduler="sync").tolist()
    assert lens == [f["rows"] for f in meta["files"]] and sum(lens) == info["n_rows"]
    for f in meta["files"]:
        pf = pq.ParquetFile(out / f["file"])
        assert pf.metadata.num_row_groups == 1
        u = pf.read(columns=["unit"]).column(0).to_numpy()
        assert u[0] == f["unit_min"] and u[-1] == f["unit_max"]
    pd.testing.assert_frame_equal(_compute(ddf), _compute(ref.data))


def test_write_panel_refuses_non_empty_dir(tmp_path):
    write_panel(tmp_path, 100, 3, scheduler="sync")
    with pytest.raises(SpecError, match="not empty"):
        write_panel(tmp_path, 100, 3, scheduler="sync")
    info = write_panel(tmp_path, 5000, 3, npartitions=2, overwrite=True, scheduler="sync")
    assert len(info["files"]) == 2
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SpecError, match="did not write"):
        write_panel(tmp_path, 100, 3, overwrite=True, scheduler="sync")


def test_cli_simulate(tmp_path):
    from dte_dask.cli import main

    out = tmp_path / "cli"
    res = CliRunner().invoke(main, ["simulate", "--units", "6000", "--periods", "6", "--out",
                                    str(out), "--cohorts", "3,5", "--npartitions", "2",
                                    "--seed", "9", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "36,000 rows" in res.output and "g=3:" in res.output and "never treated" in res.output
    meta = json.loads((out / "_dte_dask.json").read_text())
    assert meta["options"]["cohorts"] == [3, 5] and len(meta["files"]) == 2
    pd.testing.assert_frame_equal(
        _compute(dd.read_parquet(out)),
        _compute(simulate_panel(6000, 6, cohorts=[3, 5], seed=9).data))
    bad = CliRunner().invoke(main, ["simulate", "--units", "10", "--periods", "5", "--out",
                                    str(tmp_path / "bad"), "--cohorts", "1,3"])
    assert bad.exit_code == 2 and "2..5" in bad.output
    assert not (tmp_path / "bad").exists()


def test_cli_medical_with_progress(tmp_path):
    from dte_dask.cli import main

    res = CliRunner().invoke(main, ["simulate", "--units", "500", "--preset", "medical",
                                    "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert "outcome: sbp" in res.output and "selection: True" in res.output


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n_units=0, n_periods=5), "n_units must be >= 1"),
        (dict(n_units=2.5, n_periods=5), "n_units must be an integer"),
        (dict(n_units=10, n_periods=1), "n_periods must be >= 2"),
        (dict(n_units=10, n_periods=5, cohorts=[1, 3]), r"cohorts must lie in 2\.\.5"),
        (dict(n_units=10, n_periods=5, cohorts=[3, 6]), r"got \[6\]"),
        (dict(n_units=10, n_periods=5, cohorts=[]), "at least one"),
        (dict(n_units=10, n_periods=5, cohorts=[3, 3]), "duplicates"),
        (dict(n_units=10, n_periods=5, cohorts=[2.5]), "integer periods"),
        (dict(n_units=10, n_periods=5, never_treated_share=1.0), "never_treated_share"),
        (dict(n_units=10, n_periods=5, unbalanced_share=-0.1), "unbalanced_share"),
        (dict(n_units=10, n_periods=5, preset="dental"), "preset must be one of"),
        (dict(n_units=10, n_periods=5, npartitions=0), "npartitions must be >= 1"),
        (dict(n_units=10, n_periods=5, seed=-1), "seed must be >= 0"),
        (dict(n_units=10, n_periods=5, rho=1.0), "rho"),
        (dict(n_units=10, n_periods=5, cohort_scale=[1, 2]), "cohort_scale has 2"),
        (dict(n_units=10, n_periods=5, cohort_scale={9: 1.0}), "not cohorts"),
    ],
)
def test_bad_options_raise_spec_error(kwargs, message):
    with pytest.raises(SpecError, match=message):
        simulate_panel(**kwargs)


def test_write_panel_bad_option(tmp_path):
    with pytest.raises(SpecError, match="unknown simulation options"):
        write_panel(tmp_path / "x", 10, 5, colour="red")
    with pytest.raises(SpecError, match="cohorts must lie"):
        write_panel(tmp_path / "y", 10, 5, cohorts=[7])
    assert not (tmp_path / "y").exists()


def test_no_global_rng_and_lazy():
    state = np.random.get_state()[1].copy()
    with dask.config.set(scheduler="sync"):
        simulate_panel(5000, 4).data.compute()
    np.testing.assert_array_equal(np.random.get_state()[1], state)
