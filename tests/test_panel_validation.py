"""Bad panels fail early with a clear, specific PanelError; R ``did``'s load conventions; inputs untouched."""
from __future__ import annotations

import copy
import re
import warnings

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from dte_dask import load_panel
from dte_dask.exceptions import (
    ColumnTypeError,
    DuplicateRowsError,
    GroupError,
    MissingColumnError,
    MissingValuesError,
    NoControlGroupError,
    PanelError,
    PanelWarning,
    PeriodError,
    SpecError,
)

YEARS = [2001, 2002, 2003, 2004, 2005]
GROUPS = {1: 0, 2: 0, 3: 2003, 4: 2003, 5: 2004, 6: 2005, 7: 0, 8: 2004}  # unit -> first treated year


def frame(groups: dict = GROUPS, years=YEARS) -> pd.DataFrame:
    """A clean balanced panel: y = 100*unit + period position, so cells are easy to find."""
    units = np.repeat(list(groups), len(years))
    t = np.tile(years, len(groups))
    g = np.repeat(list(groups.values()), len(years))
    pos = np.tile(np.arange(len(years)), len(groups))
    return pd.DataFrame({
        "id": units, "t": t, "y": 100.0 * units + pos, "g": g,
        "d": ((g > 0) & (t >= g)).astype(np.int64),
        "x": np.repeat(np.linspace(-1, 1, len(groups)), len(years)),
        "w": np.repeat(np.arange(1.0, len(groups) + 1), len(years)),
        "c": np.repeat(np.arange(len(groups)) // 3, len(years)),
    })


KW = dict(unit="id", time="t", outcome="y", group="g")


def load(df, **kw):
    args = {**KW, **kw}
    if "treatment" in kw:
        args.pop("group")
    return load_panel(df, **args)


def ids_of(panel) -> np.ndarray:
    return np.concatenate([b.ids for b in dask.compute(*panel.blocks)])


def test_clean_frame_loads_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = load(frame(), covariates="x", weights="w", cluster="c")
    assert p.n_units == 8 and p.n_periods == 5 and p.is_balanced
    assert p.cohort_sizes == {2.0: 2, 3.0: 2, 4.0: 1, np.inf: 3}


# ----------------------------------------------------------------------------- columns and dtypes
@pytest.mark.parametrize("role, kw, missing", [
    ("unit", dict(unit="county"), "county"),
    ("time", dict(time="year"), "year"),
    ("outcome", dict(outcome="lemp"), "lemp"),
    ("group", dict(group="first_treat"), "first_treat"),
    ("treatment", dict(treatment="treated"), "treated"),
    ("covariate", dict(covariates=["x", "age"]), "age"),
    ("weights", dict(weights="pop"), "pop"),
    ("cluster", dict(cluster="state"), "state"),
])
def test_missing_column_names_column_and_role(role, kw, missing):
    with pytest.raises(MissingColumnError) as exc:
        load(frame(), **kw)
    msg = str(exc.value)
    assert f"'{missing}' ({role}) not found" in msg
    assert "available columns" in msg and "'y'" in msg
    assert isinstance(exc.value, PanelError) and isinstance(exc.value, KeyError)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_missing_column_from_files(tmp_path, fmt):
    path = tmp_path / f"panel.{fmt}"
    df = frame()
    df.to_parquet(path) if fmt == "parquet" else df.to_csv(path, index=False)
    with pytest.raises(MissingColumnError, match=r"'lemp' \(outcome\) not found"):
        load(str(path), outcome="lemp")
    with pytest.raises(MissingColumnError, match=r"'age' \(covariate\) not found"):
        load(str(path), covariates=["age"])


@pytest.mark.parametrize("column, role, kw, value", [
    ("y", "outcome", {}, lambda s: s.astype(str)),
    ("y", "outcome", {}, lambda s: s.astype(object)),
    ("y", "outcome", {}, lambda s: s > 300),
    ("x", "covariate", dict(covariates=["x"]), lambda s: s.astype(str)),
    ("x", "covariate", dict(covariates="x"), lambda s: s.map({v: f"v{i}" for i, v in enumerate(s.unique())})),
    ("w", "weights", dict(weights="w"), lambda s: s.astype(str)),
])
def test_non_numeric_column(column, role, kw, value):
    df = frame()
    df[column] = value(df[column])
    with pytest.raises(ColumnTypeError, match=rf"column '{column}' \({role}\) must be numeric, got dtype"):
        load(df, **kw)


def test_non_numeric_outcome_in_dask_and_csv(tmp_path):
    df = frame()
    df["y"] = "missing"
    with pytest.raises(ColumnTypeError, match=r"column 'y' \(outcome\) must be numeric"):
        load(dd.from_pandas(df, npartitions=2))
    df.to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(ColumnTypeError, match=r"column 'y' \(outcome\) must be numeric"):
        load(str(tmp_path / "p.csv"))


def test_nullable_numeric_dtypes_are_accepted():
    df = frame()
    df["y"] = df["y"].astype("Float64")
    df["t"] = df["t"].astype("Int64")
    df["g"] = df["g"].astype("Int64")
    ref = load(frame())
    p = load(df)
    assert p.cohort_sizes == ref.cohort_sizes
    np.testing.assert_array_equal(np.concatenate([b.y for b in dask.compute(*p.blocks)]),
                                  np.concatenate([b.y for b in dask.compute(*ref.blocks)]))


# ----------------------------------------------------------------------------- duplicates
def test_duplicate_rows_count_and_examples():
    df = frame()
    dup = df[((df.id == 5) & (df.t == 2004)) | ((df.id == 3) & (df.t == 2002))]
    bad = pd.concat([df, dup, dup.iloc[[0]]], ignore_index=True)  # (3, 2002) three times, (5, 2004) twice
    with pytest.raises(DuplicateRowsError) as exc:
        load(bad)
    msg = str(exc.value)
    assert msg.startswith("3 duplicate rows")
    assert "('id', 't')" in msg and "for 2 pairs" in msg
    assert "[(3, 2002), (5, 2004)]" in msg  # first offending (unit, period) pairs, plain values


def test_duplicate_rows_in_shuffled_dask_frame():
    df = frame()
    bad = pd.concat([df, df.iloc[[7]]]).sample(frac=1, random_state=1)
    with pytest.raises(DuplicateRowsError, match=r"\(2, 2003\)"):
        load(dd.from_pandas(bad, npartitions=3, sort=False))


# ----------------------------------------------------------------------------- treatment timing
def test_group_varying_within_unit():
    df = frame()
    df.loc[(df.id == 4) & (df.t == 2005), "g"] = 2004
    df.loc[(df.id == 7) & (df.t == 2001), "g"] = 2002
    with pytest.raises(GroupError) as exc:
        load(df)
    msg = str(exc.value)
    assert "column 'g' (group) varies within unit for 2 units, e.g. [4, 7]" in msg


def test_treatment_switching_off_is_not_absorbing():
    df = frame()
    df.loc[(df.id == 5) & (df.t == 2005), "d"] = 0  # treated from 2004, back to 0 in 2005
    df.loc[(df.id == 3) & (df.t == 2004), "d"] = 0
    with pytest.raises(GroupError) as exc:
        load(df, treatment="d")
    msg = str(exc.value)
    assert "column 'd' (treatment) is not absorbing" in msg
    assert "for 2 units" in msg and "[(3, 2004), (5, 2005)]" in msg


@pytest.mark.parametrize("value, match", [
    (0.5, r"column 'd' \(treatment\) must be 0/1.*found \[0.5\] for units \[6\]"),
    (np.nan, r"column 'd' \(treatment\) must be 0/1 with no missing values.*units \[6\]"),
    (2, r"found \[2.0\]"),
])
def test_treatment_not_a_0_1_indicator(value, match):
    df = frame()
    df["d"] = df["d"].astype(float)
    df.loc[(df.id == 6) & (df.t == 2003), "d"] = value
    with pytest.raises(ColumnTypeError, match=match):
        load(df, treatment="d")


def test_treatment_as_strings_and_booleans():
    df = frame()
    df["d"] = df["d"].astype(bool)
    assert load(df, treatment="d").cohort_sizes == load(frame()).cohort_sizes
    df["d"] = df["d"].astype(str)
    with pytest.raises(ColumnTypeError, match=r"column 'd' \(treatment\) must be a 0/1"):
        load(df, treatment="d")


def test_group_must_be_numeric_and_on_periods():
    df = frame()
    df["g"] = df["g"].astype(str)
    with pytest.raises(ColumnTypeError, match=r"column 'g' \(group\) must be numeric"):
        load(df)
    df = frame()
    df["g"] = df["g"].astype(float)
    df.loc[df.id == 5, "g"] = 2003.5
    with pytest.raises(PeriodError, match=r"column 'g' \(group\).*between periods.*\[2003.5\]"):
        load(df)
    df.loc[df.id == 5, "g"] = -1
    with pytest.raises(PeriodError, match=r"column 'g' \(group\) has negative values \[-1.0\]"):
        load(df)


def test_group_nan_and_inf_mean_never_treated():
    df = frame()
    df["g"] = df["g"].astype(float).replace({0.0: np.nan})
    df.loc[df.id == 7, "g"] = np.inf
    assert load(df).cohort_sizes == load(frame()).cohort_sizes


def test_no_control_group_everybody_treated_at_once():
    df = frame()
    df["g"] = 2003
    with pytest.raises(NoControlGroupError) as exc:
        load(df)
    msg = str(exc.value)
    assert "column 'g'" in msg and "every unit is treated in the same period (2003)" in msg
    assert "never-treated" in msg and "not-yet-treated" in msg


def test_no_control_group_after_dropping_early_treated():
    df = frame({1: 2001, 2: 2001, 3: 2004, 4: 2004})
    with pytest.warns(PanelWarning, match="Dropped 2 units"):
        with pytest.raises(NoControlGroupError, match=r"same period \(2004\)"):
            load(df)


def test_no_control_group_when_nobody_is_treated_in_the_panel():
    df = frame()
    df["g"] = 0
    with pytest.raises(NoControlGroupError, match="no unit is ever treated"):
        load(df)
    df.loc[df.id > 4, "g"] = 2010  # treated only after the last period
    with pytest.raises(NoControlGroupError, match="no unit is ever treated inside the panel's periods"):
        load(df)


def test_not_yet_treated_units_are_enough():
    p = load(frame({1: 2003, 2: 2003, 3: 2005, 4: 2005}))
    assert p.cohort_sizes == {2.0: 2, 4.0: 2}


# ----------------------------------------------------------------------------- missing values
def test_nan_outcomes_name_units_and_periods():
    df = frame()
    df.loc[(df.id == 6) & (df.t == 2002), "y"] = np.nan
    df.loc[(df.id == 2) & (df.t == 2005), "y"] = np.nan
    with pytest.raises(MissingValuesError) as exc:
        load(df)
    msg = str(exc.value)
    assert "column 'y' (outcome) has 2 missing values" in msg
    assert "(unit, period) [(2, 2005), (6, 2002)]" in msg
    assert "allow_unbalanced_panel" in msg
    with pytest.raises(MissingValuesError, match=r"\(2, 2005\)"):  # also when keeping unbalanced units
        load(df, allow_unbalanced_panel=True)


def test_nullable_na_outcome_and_nan_in_dask():
    df = frame()
    df["y"] = df["y"].astype("Float64")
    df.loc[(df.id == 8) & (df.t == 2003), "y"] = pd.NA
    with pytest.raises(MissingValuesError, match=r"1 missing values.*\[\(8, 2003\)\]"):
        load(df)
    with pytest.raises(MissingValuesError, match=r"\(8, 2003\)"):
        load(dd.from_pandas(df.astype({"y": float}).sample(frac=1, random_state=0), npartitions=3))


def test_missing_ids_covariates_and_times():
    df = frame()
    df["id"] = df["id"].astype(float)
    df.loc[3, "id"] = np.nan
    with pytest.raises(MissingValuesError, match=r"column 'id' \(unit\) has 1 missing ids"):
        load(df)
    df = frame()
    df.loc[(df.id == 7) & (df.t == 2001), "x"] = np.nan
    with pytest.raises(MissingValuesError, match=r"column 'x' \(covariate\) has missing values for units \[7\]"):
        load(df, covariates=["x"])
    df = frame()
    df["t"] = df["t"].astype(float)
    df.loc[4, "t"] = np.nan
    with pytest.raises(PeriodError, match=r"column 't' \(time\) has 1 missing values for units \[1\]"):
        load(df)


@pytest.mark.parametrize("route", ["pandas", "dask", "parquet"])
def test_missing_periods_name_their_units(route, tmp_path):
    df = frame()
    df["t"] = df["t"].astype(float)
    df.loc[(df.id == 6) & (df.t == 2003), "t"] = np.nan
    df.loc[(df.id == 2) & (df.t == 2001), "t"] = np.nan
    data = {"pandas": lambda: df, "dask": lambda: dd.from_pandas(df, npartitions=3),
            "parquet": lambda: (df.to_parquet(tmp_path / "p.parquet"), str(tmp_path / "p.parquet"))[1]}[route]()
    with pytest.raises(PeriodError, match=r"column 't' \(time\) has 2 missing values for units \[2, 6\]"):
        load(data)


@pytest.mark.parametrize("shuffled", [False, True])
def test_infinite_covariate_names_unit_and_period(shuffled):
    df = frame()
    df.loc[(df.id == 5) & (df.t == 2004), "x"] = np.inf
    df.loc[(df.id == 3) & (df.t == 2002), "x"] = -np.inf
    if shuffled:  # the scatter route (not unit-major)
        df = df.sample(frac=1, random_state=3)
    with pytest.raises(ColumnTypeError) as exc:
        load(df, covariates=["x"])
    msg = str(exc.value)
    assert "column 'x' (covariate) has 2 infinite values" in msg
    assert "(3, 2002)" in msg and "(5, 2004)" in msg


def test_non_numeric_cells_are_named():
    df = frame()
    df["x"] = df["x"].astype(object)
    df.loc[(df.id == 4) & (df.t == 2005), "x"] = "n/a"
    with pytest.raises(ColumnTypeError, match=r"column 'x' \(covariate\) must be numeric, got dtype object; "
                                              r"1 non-numeric values, e.g. \(id, t, value\) \[\(4, 2005, 'n/a'\)\]"):
        load(df, covariates=["x"])
    df = frame()
    df["y"] = df["y"].astype(str)  # numbers written as text
    with pytest.raises(ColumnTypeError, match=r"column 'y' \(outcome\) must be numeric.*convert it with \.astype\(float\)"):
        load(df)


# ----------------------------------------------------------------------------- periods
def test_irregular_integer_periods():
    df = frame(years=[2001, 2002, 2005])
    df["g"] = df["g"].where(df["g"] == 0, 2002)
    with pytest.raises(PeriodError) as exc:
        load(df)
    msg = str(exc.value)
    assert "column 't' (time) has irregular periods" in msg and "2002->2005" in msg


def test_equally_spaced_periods_with_a_step():
    df = frame(years=[2000, 2002, 2004, 2006])
    df["g"] = df["g"].map({0: 0, 2003: 2002, 2004: 2004, 2005: 2006})
    p = load(df)
    assert p.periods.step == 2 and p.n_periods == 4
    assert [p.group_label(g) for g in p.cohort_sizes] == [2002, 2004, 2006, 0]
    df.loc[df.id == 5, "g"] = 2003  # not a period of the panel
    with pytest.raises(PeriodError, match=r"between periods of the panel: \[2003.0\]"):
        load(df)


def test_irregular_dates():
    dates = pd.to_datetime(["2020-01-01", "2020-02-01", "2020-04-01", "2020-05-01"])
    df = frame(years=[0, 1, 2, 3])
    df["t"] = dates[df["t"]]
    df["g"] = pd.NaT
    with pytest.raises(PeriodError) as exc:
        load(df)
    msg = str(exc.value)
    assert "column 't' (time) holds dates with no regular frequency" in msg
    assert "'2020-02-01' -> '2020-04-01'" in msg


@pytest.mark.parametrize("values, match", [
    (lambda t: t + 0.5, r"non-integer periods \[2001.5"),
    (lambda t: t.astype(str), "must hold integer periods or dates, got dtype"),
    (lambda t: t.astype(bool), "must hold integer periods or dates"),
    (lambda t: t * 0 + 2001, r"1 distinct period\(s\); at least 2"),
])
def test_unusable_time_column(values, match):
    df = frame()
    df["t"] = values(df["t"])
    with pytest.raises(PeriodError, match=match):
        load(df)


@pytest.mark.filterwarnings("ignore:Could not infer format")
def test_date_panel_with_a_numeric_group_column_is_refused():
    dates = pd.date_range("2020-01-01", periods=5, freq="MS")
    df = frame()
    df["t"] = dates[df["t"] - 2001]
    with pytest.raises(ColumnTypeError, match=r"column 'g' \(group\) must hold dates.*\[2003, 2004, 2005\]"):
        load(df)  # years are not dates: never silently read as nanoseconds since 1970
    df["g"] = df["g"].astype(str)
    with pytest.raises(ColumnTypeError, match=r"column 'g' \(group\) must hold dates"):
        load(df)


# ----------------------------------------------------------------------------- weights and clusters
def test_weights_varying_within_unit():
    df = frame()
    df.loc[(df.id == 3) & (df.t == 2004), "w"] = 9.0
    with pytest.raises(GroupError, match=r"column 'w' \(weights\) varies within unit for 1 units, e.g. \[3\]"):
        load(df, weights="w")


@pytest.mark.parametrize("value", [-1.0, np.nan, np.inf])
def test_weights_negative_or_missing(value):
    df = frame()
    df.loc[df.id.isin([6, 2]), "w"] = value
    with pytest.raises(PanelError, match=r"column 'w' \(weights\) must be finite and non-negative; units \[2, 6\]"):
        load(df, weights="w")


def test_messages_with_mixed_type_ids():
    """Ids that cannot be compared (ints and strings) still give the specific error, not a TypeError."""
    df = frame()
    df["id"] = df["id"].astype(object)
    df.loc[df.id == 3, "id"] = "three"
    df.loc[df.id.isin([2, "three"]), "w"] = -1.0
    with pytest.raises(PanelError, match=r"column 'w' \(weights\) must be finite.*units \[2, 'three'\]"):
        load(df, weights="w")
    df = frame()
    df["id"] = df["id"].astype(object)
    df.loc[df.id == 3, "id"] = "three"
    df.loc[df.id.isin([4, "three"]) & (df.t == 2002), "x"] = np.nan
    with pytest.raises(MissingValuesError, match=r"column 'x' \(covariate\).*units \[4, 'three'\]"):
        load(df, covariates="x")


def test_cluster_varying_within_unit_or_missing():
    df = frame()
    df.loc[(df.id == 8) & (df.t == 2002), "c"] = 0
    with pytest.raises(GroupError, match=r"column 'c' \(cluster\) varies within unit for 1 units, e.g. \[8\]"):
        load(df, cluster="c")
    df = frame()
    df["c"] = df["c"].astype(float)
    df.loc[df.id == 1, "c"] = np.nan
    with pytest.raises(MissingValuesError, match=r"column 'c' \(cluster\) has missing values for units \[1\]"):
        load(df, cluster="c")


# ----------------------------------------------------------------------------- R did conventions
def test_units_treated_in_or_before_first_period_are_dropped():
    df = frame({**GROUPS, 9: 2001, 10: 1999, 11: 2001})
    with pytest.warns(PanelWarning, match=r"Dropped 3 units that were already treated in the first period \(2001\)"):
        p = load(df)
    assert sorted(ids_of(p)) == list(range(1, 9))
    assert p.n_units == 8 and all(g > 0 for g in p.cohort_sizes)


def test_treatment_active_in_first_period_is_dropped_too():
    df = frame({**GROUPS, 9: 2001})
    with pytest.warns(PanelWarning, match="Dropped 1 units"):
        p = load(df, treatment="d")
    assert 9 not in set(ids_of(p))


def test_unbalanced_panel_is_balanced_with_a_warning():
    df = frame()
    df = df[~(((df.id == 4) & (df.t == 2002)) | ((df.id == 7) & df.t.isin([2001, 2005])))]
    with pytest.warns(PanelWarning, match=r"^2 units are missing in some periods.*allow_unbalanced_panel=True"):
        p = load(df)
    assert p.is_balanced and p.n_units == 6
    assert sorted(ids_of(p)) == [1, 2, 3, 5, 6, 8]


def test_unbalanced_panel_kept_when_allowed():
    df = frame()
    df = df[~((df.id == 4) & (df.t == 2002))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = load(df, allow_unbalanced_panel=True)
    assert not p.is_balanced and p.n_units == 8 and p.n_rows == len(df)
    (block,) = dask.compute(*p.blocks)
    row = np.flatnonzero(block.ids == 4)[0]
    np.testing.assert_array_equal(block.y[row], [400.0, np.nan, 402.0, 403.0, 404.0])


# ----------------------------------------------------------------------------- options
def test_spec_errors():
    with pytest.raises(SpecError, match="exactly one of"):
        load_panel(frame(), unit="id", time="t", outcome="y")
    with pytest.raises(SpecError, match="exactly one of"):
        load_panel(frame(), unit="id", time="t", outcome="y", group="g", treatment="d")
    with pytest.raises(SpecError, match=r"\['t'\] given for more than one role"):
        load(frame(), covariates=["t"])


def test_bad_options_and_sources(tmp_path):
    with pytest.raises(PanelError, match="npartitions must be >= 1"):
        load(frame(), npartitions=0)
    with pytest.raises(PanelError, match="rng_block_size must be >= 1"):
        load(frame(), rng_block_size=0)
    with pytest.raises(PanelError, match="no file or directory matches"):
        load(str(tmp_path / "nope.parquet"))
    with pytest.raises(PanelError, match="no file or directory matches"):
        load(str(tmp_path / "*.csv"))
    (tmp_path / "p.txt").write_text("id,t\n")
    with pytest.raises(PanelError, match="unsupported file type"):
        load(str(tmp_path / "p.txt"))
    with pytest.raises(PanelError, match="unsupported source of type list"):
        load([1, 2, 3])


# ----------------------------------------------------------------------------- inputs are never mutated
def _mutations():
    dates = pd.date_range("2020-01-01", periods=5, freq="MS")
    cat = frame()
    cat["id"] = pd.Categorical(cat["id"].map(lambda i: f"u{i}"), categories=[f"u{i}" for i in range(9, 0, -1)])
    dated = frame()
    dated["t"] = dates[dated["t"] - 2001]
    dated["g"] = [dates[g - 2001] if g else pd.NaT for g in dated["g"]]
    shuffled_unbalanced = frame().sample(frac=1, random_state=2).iloc[3:]
    early = frame({**GROUPS, 9: 2001})
    dup = pd.concat([frame(), frame().iloc[[2]]])
    nan_y = frame()
    nan_y.loc[5, "y"] = np.nan
    return [
        (frame(), dict(covariates=["x"], weights="w", cluster="c")),
        (frame(), dict(treatment="d")),
        (cat, {}),
        (dated, dict(npartitions=2, rng_block_size=2)),
        (shuffled_unbalanced, {}),
        (shuffled_unbalanced, dict(allow_unbalanced_panel=True)),
        (early, {}),
        (dup, {}),
        (nan_y, {}),
    ]


@pytest.mark.parametrize("case", range(len(_mutations())))
def test_pandas_input_is_never_mutated(case):
    df, kw = _mutations()[case]
    before = copy.deepcopy(df)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PanelWarning)
        try:
            p = load(df, **kw)
            dask.compute(*p.blocks)
        except PanelError:
            pass
    pd.testing.assert_frame_equal(df, before, check_exact=True)
    assert list(df.dtypes) == list(before.dtypes)
    assert df.index.equals(before.index)


def test_error_classes_are_catchable_as_value_errors():
    for cls in (ColumnTypeError, DuplicateRowsError, GroupError, MissingColumnError, MissingValuesError,
                NoControlGroupError, PeriodError):
        assert issubclass(cls, PanelError) and issubclass(cls, ValueError)
    assert re.search("unit", str(MissingColumnError("column 'unit' (unit) not found")))
