"""Loading a panel: partition layout, determinism, id/period types, sources, clusters."""
from __future__ import annotations

import warnings

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from dte_dask import load_panel
from dte_dask.exceptions import NoControlGroupError, PanelWarning
from dte_dask.simulate import write_panel

KW = dict(unit="unit", time="time", outcome="y", group="group")

# dask's parquet reader calls a pandas API that pandas 3.1 deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.reset_index")


def collect(panel):
    return dask.compute(*panel.blocks)


def cat(blocks, field):
    return np.concatenate([getattr(b, field) for b in blocks])


def signature(panel) -> dict[str, np.ndarray]:
    """Ordered concatenation of the blocks plus a per-unit computation (mean of y)."""
    blocks = collect(panel)
    out = {f: cat(blocks, f) for f in ("ids", "rank", "g", "w", "y")}
    out["ybar"] = np.concatenate([np.nanmean(b.y, axis=1) for b in blocks])
    if blocks[0].x is not None:
        out["x"] = cat(blocks, "x")
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f"), k


def check_layout(panel, bs: int, contiguous: bool = True) -> None:
    """Whole units in one partition, partitions ordered by rank, whole RNG blocks per partition."""
    blocks = collect(panel)
    assert len(blocks) == panel.npartitions
    ids = cat(blocks, "ids")
    assert len(pd.unique(ids)) == len(ids) == panel.n_units  # every unit exactly once
    ranks = cat(blocks, "rank")
    if panel.spec.cluster is None:
        assert np.all(np.diff(ranks) > 0)
        if contiguous:
            np.testing.assert_array_equal(ranks, np.arange(len(ranks)))
    else:
        assert np.all(np.diff(ranks) >= 0)
    rng_blocks = [set((b.rank // bs).tolist()) for b in blocks if b.n]
    for i, s in enumerate(rng_blocks):  # an RNG block never straddles two partitions
        for t in rng_blocks[i + 1:]:
            assert max(s) < min(t)
    for s, blk in zip(panel.summaries, blocks):
        assert s.n_units == blk.n


def load(df, **kw):
    return load_panel(df, **{**KW, **kw})


# ----------------------------------------------------------------------------- layout and determinism
@pytest.mark.parametrize("npartitions", [1, 3, 7])
def test_layout_invariants(small_panel, npartitions):
    p = load(small_panel, npartitions=npartitions, rng_block_size=16)
    assert p.npartitions == npartitions
    assert p.n_rng_blocks == 19
    check_layout(p, 16)


def test_partition_count_defaults_and_caps(small_panel):
    assert load(small_panel, rng_block_size=16).npartitions == 1  # a small panel fits one partition
    p = load(small_panel, rng_block_size=64, npartitions=50)  # at most one partition per RNG block
    assert p.npartitions == 5
    check_layout(p, 64)


def test_identical_for_any_npartitions_and_row_order(small_panel):
    kw = dict(covariates=["age", "bmi"], rng_block_size=16)
    ref = signature(load(small_panel, npartitions=1, **kw))
    assert ref["ids"].tolist() == list(range(1, 301))
    for npart in (3, 7):
        assert_same(ref, signature(load(small_panel, npartitions=npart, **kw)))
    shuffled = small_panel.sample(frac=1, random_state=5)
    for npart in (1, 3, 7):
        assert_same(ref, signature(load(shuffled, npartitions=npart, **kw)))
    ddf = dd.from_pandas(shuffled, npartitions=4, sort=False)
    for npart in (1, 7):
        p = load(ddf, npartitions=npart, **kw)
        check_layout(p, 16)
        assert_same(ref, signature(p))


def test_blocks_hold_the_input(small_panel):
    p = load(small_panel, npartitions=3, rng_block_size=32, covariates=["age", "female"])
    blocks = collect(p)
    wide = small_panel.pivot(index="unit", columns="time", values="y").sort_index()
    np.testing.assert_array_equal(cat(blocks, "y"), wide.to_numpy())
    first = small_panel.groupby("unit").first().sort_index()
    g = first["group"].to_numpy(float)
    np.testing.assert_array_equal(cat(blocks, "g"), np.where(g == 0, np.inf, g - 1))
    np.testing.assert_array_equal(cat(blocks, "x"), first[["age", "female"]].to_numpy(float))
    np.testing.assert_array_equal(cat(blocks, "w"), np.ones(300))


# ----------------------------------------------------------------------------- treatment -> group
def test_group_from_treatment_equals_first_treat_on_mpdta(mpdta):
    df = mpdta.assign(D=((mpdta.first_treat > 0) & (mpdta.year >= mpdta.first_treat)).astype(int))
    kw = dict(unit="countyreal", time="year", outcome="lemp", rng_block_size=64, npartitions=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pt = load_panel(df, treatment="D", **kw)
        pg = load_panel(df, group="first_treat", **kw)
    bt, bg = collect(pt), collect(pg)
    np.testing.assert_array_equal(cat(bt, "g"), cat(bg, "g"))
    labels = pd.Series([pt.group_label(g) for g in cat(bt, "g")], index=cat(bt, "ids"))
    truth = mpdta.groupby("countyreal")["first_treat"].first()
    pd.testing.assert_series_equal(labels.sort_index(), truth.sort_index(), check_names=False, check_dtype=False)
    assert {pt.group_label(g): c for g, c in pt.cohort_sizes.items()} == {2004: 20, 2006: 40, 2007: 131, 0: 309}


def test_mpdta_treat_is_an_ever_treated_flag_not_a_treatment_path(mpdta):
    """``treat`` is 1 in every year for eventually-treated counties: read as a treatment indicator
    they are all treated in 2003, dropped (R did's rule), and nothing treated is left."""
    with pytest.warns(PanelWarning, match="Dropped 191 units"):
        with pytest.raises(NoControlGroupError, match="no unit is ever treated"):
            load_panel(mpdta, unit="countyreal", time="year", outcome="lemp", treatment="treat")


def test_group_from_treatment_on_simulated_panel(small_panel):
    ref = signature(load(small_panel, rng_block_size=16, npartitions=3))
    kw = {**KW, "treatment": "treat"}
    kw.pop("group")
    assert_same(ref, signature(load_panel(small_panel.sample(frac=1, random_state=1), rng_block_size=16,
                                          npartitions=3, **kw)))


# ----------------------------------------------------------------------------- id and period types
def test_string_integer_and_categorical_ids(small_panel):
    ref = signature(load(small_panel, npartitions=3, rng_block_size=16))
    padded = small_panel.assign(unit=small_panel.unit.map(lambda u: f"u{u:04d}"))  # same order as ints
    categorical = padded.assign(unit=pd.Categorical(padded.unit, categories=sorted(padded.unit.unique())[::-1]))
    for df in (padded, categorical, padded.assign(unit=padded.unit.astype(object)),
               small_panel.assign(unit=small_panel.unit.astype("int32")),
               small_panel.assign(unit=small_panel.unit + 0.5)):
        sig = signature(load(df.sample(frac=1, random_state=3), npartitions=3, rng_block_size=16))
        assert [str(i) for i in sig.pop("ids")] == [str(i) for i in pd.unique(df.unit)]
        assert_same({k: v for k, v in ref.items() if k != "ids"}, sig)
        check_layout(load(df, npartitions=7, rng_block_size=16), 16)


def test_unpadded_string_ids_are_ordered_as_strings(small_panel):
    df = small_panel.assign(unit=small_panel.unit.astype(str))
    p = load(df, npartitions=3, rng_block_size=16)
    check_layout(p, 16)
    ids = cat(collect(p), "ids").tolist()
    assert ids == sorted(ids) and ids[:3] == ["1", "10", "100"]
    wide = df.pivot(index="unit", columns="time", values="y").loc[ids]
    np.testing.assert_array_equal(cat(collect(p), "y"), wide.to_numpy())


@pytest.fixture
def dated(small_panel):
    dates = pd.date_range("2020-01-01", periods=5, freq="MS")
    df = small_panel.copy()
    df["time"] = dates[df["time"] - 1]
    df["group"] = [dates[g - 1] if g else pd.NaT for g in df["group"]]
    return df


def test_monthly_dates_with_a_date_group_column(small_panel, dated):
    ref = signature(load(small_panel, npartitions=3, rng_block_size=16))
    p = load(dated, npartitions=3, rng_block_size=16)
    assert_same(ref, signature(p))
    assert p.periods.kind == "datetime" and p.n_periods == 5
    labels = {str(p.group_label(g))[:10] for g in p.cohort_sizes if np.isfinite(g)}
    assert labels == {"2020-03-01", "2020-04-01", "2020-05-01"}
    d = p.describe()
    assert d["first_period"] == "2020-01-01" and d["last_period"] == "2020-05-01"
    assert set(d["cohorts"]) == labels | {"never treated"}
    assert_same(ref, signature(load(dd.from_pandas(dated.sample(frac=1, random_state=0), npartitions=3),
                                    npartitions=3, rng_block_size=16)))


def test_date_group_variants(small_panel, dated):
    ref = signature(load(small_panel, npartitions=3, rng_block_size=16))
    as_text = dated.assign(group=dated.group.dt.strftime("%Y-%m-%d"))  # NaT -> missing
    zero = dated.assign(group=dated.group.astype(object).where(dated.group.notna(), 0))  # 0 = never treated
    treat = dated.drop(columns="group")
    for df in (as_text, zero):
        assert_same(ref, signature(load(df, npartitions=3, rng_block_size=16)))
    kw = {**KW, "treatment": "treat"}
    kw.pop("group")
    assert_same(ref, signature(load_panel(treat, npartitions=3, rng_block_size=16, **kw)))


def test_early_dates_are_dropped_with_a_date_in_the_warning(dated):
    df = dated.copy()
    df.loc[df.unit <= 4, "group"] = pd.Timestamp("2019-11-01")  # before the panel starts
    with pytest.warns(PanelWarning, match=r"Dropped 4 units .*first period \(2020-01-01\)"):
        p = load(df)
    assert p.n_units == 296


# ----------------------------------------------------------------------------- sources
@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("panel-sources")
    sim = root / "sim"
    meta = write_panel(sim, 9000, 4, npartitions=3, seed=1)
    assert len(meta["files"]) == 3
    pdf = pd.read_parquet(sim).sort_values(["unit", "time"], ignore_index=True)
    pdf.to_parquet(root / "one.parquet")
    pdf.to_csv(root / "one.csv", index=False)
    csv = root / "csv"
    csv.mkdir()
    shuffled = pdf.sample(frac=1, random_state=0)  # rows in any order, units spread over the files
    for i, rows in enumerate(np.array_split(np.arange(len(shuffled)), 3)):
        shuffled.iloc[rows].to_csv(csv / f"part-{i}.csv", index=False)
    return {"root": root, "sim": sim, "pdf": pdf, "csv": csv}


def _forbid_shuffles(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the loader shuffled data that was already partitioned by unit")
    for name in ("set_index", "shuffle", "sort_values"):
        monkeypatch.setattr(dd.DataFrame, name, boom)


SRC_KW = dict(covariates=["age", "bmi"], rng_block_size=64, npartitions=5)


def test_all_sources_give_identical_blocks(sources):
    ref = signature(load(sources["pdf"], **SRC_KW))
    assert len(ref["ids"]) == 9000
    root = sources["root"]
    for src in (sources["sim"], str(sources["sim"]), str(sources["sim"] / "*.parquet"),
                str(root / "one.parquet"), str(root / "one.csv"), str(sources["csv"] / "part-*.csv"),
                dd.read_parquet(sources["sim"]),
                dd.from_pandas(sources["pdf"].sample(frac=1, random_state=2), npartitions=6, sort=False)):
        p = load(src, **SRC_KW)
        check_layout(p, 64)
        assert_same(ref, signature(p))


def test_simulator_directory_is_not_shuffled(sources, monkeypatch):
    ref = signature(load(sources["pdf"], **SRC_KW))
    _forbid_shuffles(monkeypatch)
    ddf = dd.read_parquet(sources["sim"])
    assert ddf.npartitions == 3  # one partition per file, each a sorted, disjoint unit range
    for src in (sources["sim"], str(sources["sim"] / "part-*.parquet"), ddf, ddf.partitions[::-1]):
        p = load(src, **SRC_KW)
        assert_same(ref, signature(p))
    single = load(str(sources["sim"] / "part-00001.parquet"), **SRC_KW)  # one file: units 4097..8192
    assert cat(collect(single), "ids").tolist() == list(range(4097, 8193))


def test_shuffled_dask_frame_is_shuffled_and_identical(sources, monkeypatch):
    calls = []
    for name in ("set_index", "shuffle", "sort_values"):  # whichever the loader uses to shuffle
        def spy(self, *args, _name=name, _original=getattr(dd.DataFrame, name), **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(dd.DataFrame, name, spy)
    ref = signature(load(sources["pdf"], **SRC_KW))
    assert not calls
    ddf = dd.from_pandas(sources["pdf"].sample(frac=1, random_state=7), npartitions=4, sort=False)
    p = load(ddf, **SRC_KW)
    assert calls  # rows were shuffled by unit...
    check_layout(p, 64)
    assert_same(ref, signature(p))  # ...into exactly the blocks of the sorted input


# ----------------------------------------------------------------------------- clusters
@pytest.fixture
def clustered(small_panel):
    rng = np.random.default_rng(4)
    state = rng.integers(0, 40, size=301)  # clusters are not contiguous in unit order
    return small_panel.assign(state=state[small_panel.unit].astype(np.int64) * 7)


@pytest.mark.parametrize("npartitions", [1, 3, 7])
def test_clusters_stay_whole_and_rank_is_the_cluster_index(clustered, npartitions):
    p = load(clustered, cluster="state", npartitions=npartitions, rng_block_size=4)
    blocks = collect(p)
    assert p.n_clusters == clustered.state.nunique() and p.n_units == 300
    check_layout(p, 4)
    seen = [set(b.cluster.tolist()) for b in blocks]
    for i, s in enumerate(seen):
        for t in seen[i + 1:]:
            assert not s & t  # a cluster never spans two partitions
    clusters = cat(blocks, "cluster")
    np.testing.assert_array_equal(cat(blocks, "rank"), np.searchsorted(np.sort(clustered.state.unique()), clusters))
    truth = clustered.groupby("unit").state.first()
    np.testing.assert_array_equal(clusters, truth.loc[cat(blocks, "ids")].to_numpy())
    ids = cat(blocks, "ids")
    for c in np.unique(clusters):  # units sorted within their cluster
        assert np.all(np.diff(ids[clusters == c]) > 0)


def test_clustered_panel_identical_across_layouts_and_sources(clustered):
    kw = dict(cluster="state", rng_block_size=4)
    ref = signature(load(clustered, npartitions=1, **kw))
    shuffled = clustered.sample(frac=1, random_state=9)
    for src, npart in ((clustered, 7), (shuffled, 3), (dd.from_pandas(shuffled, npartitions=5, sort=False), 7)):
        p = load(src, npartitions=npart, **kw)
        check_layout(p, 4)
        assert_same(ref, signature(p))


def test_string_clusters(clustered):
    df = clustered.assign(state=clustered.state.map(lambda s: f"s{s:03d}"))
    ref = signature(load(clustered, cluster="state", npartitions=3, rng_block_size=4))
    assert_same(ref, signature(load(df, cluster="state", npartitions=3, rng_block_size=4)))


# ----------------------------------------------------------------------------- regressions (dask route)
def test_time_varying_covariate_in_one_partition_only(small_panel):
    """Covariates vary within a single unit: every block must hold them as (n, T, p), whichever
    partition that unit lands in (the dask route used to mix (n, p) and (n, T, p) blocks)."""
    df = small_panel.copy()
    df.loc[(df.unit == 250) & (df.time == 3), "bmi"] += 1.0
    df = df[~((df.unit == 17) & (df.time == 2))]  # an unobserved cell: NaN covariates there
    kw = dict(covariates=["age", "bmi"], rng_block_size=16, allow_unbalanced_panel=True)
    ref = signature(load(df, npartitions=1, **kw))
    assert ref["x"].shape == (300, 5, 2)
    row = np.flatnonzero(ref["ids"] == 17)[0]
    assert np.isnan(ref["x"][row, 1]).all() and not np.isnan(ref["x"][row, [0, 2, 3, 4]]).any()
    shuffled = df.sample(frac=1, random_state=4)
    for parts, npart in ((4, 1), (4, 7), (1, 3)):
        assert_same(ref, signature(load(dd.from_pandas(shuffled, npartitions=parts, sort=False),
                                        npartitions=npart, **kw)))


def test_categorical_ids_in_a_shuffled_dask_frame(small_panel):
    """Categories in an order unlike their values: the shuffle must range-partition by value."""
    ref = signature(load(small_panel, npartitions=3, rng_block_size=16))
    df = small_panel.assign(unit=small_panel.unit.map(lambda u: f"u{u:04d}"))
    cats = np.random.default_rng(0).permutation(df.unit.unique())
    df["unit"] = pd.Categorical(df.unit, categories=cats)
    ddf = dd.from_pandas(df.sample(frac=1, random_state=6), npartitions=4, sort=False)
    for npart in (3, 7):
        p = load(ddf, npartitions=npart, rng_block_size=16)
        check_layout(p, 16)
        sig = signature(p)
        assert sig.pop("ids").tolist() == sorted(df.unit.astype(str).unique())
        assert_same({k: v for k, v in ref.items() if k != "ids"}, sig)


def test_default_partition_count_rounds_up_to_the_partition_multiple(small_panel):
    """300 units in 19 RNG blocks of 16, 4 blocks per partition by default: 5 partitions, rounded up
    to a multiple of ``partition-multiple`` (at most one per RNG block); the same panel either way."""
    kw = dict(covariates=["age"], rng_block_size=16)
    ref = signature(load(small_panel, npartitions=1, **kw))
    for multiple, want in ((1, 5), (2, 6), (4, 8), (7, 7), (32, 19)):
        with dask.config.set({"dte_dask.partition-units": 64, "dte_dask.partition-multiple": multiple}):
            p = load(small_panel, **kw)
        assert p.npartitions == want, multiple
        check_layout(p, 16)
        assert_same(ref, signature(p))
    with dask.config.set({"dte_dask.partition-units": 64, "dte_dask.partition-multiple": 4}):
        assert load(small_panel, npartitions=3, **kw).npartitions == 3  # an explicit count is kept


def test_a_job_lays_its_panel_out_for_the_cluster_threads():
    from dte_dask.jobs.runner import _cluster_threads, load_job_panel
    from dte_dask.jobs.spec import parse_job

    job = parse_job({"name": "layout", "data": {"source": "simulate", "simulate": {"units": 2000, "periods": 4, "seed": 1},
                                                "unit": "unit", "time": "time", "outcome": "y", "group": "group"},
                     "estimators": [{"kind": "att_gt"}], "output": "unused"})
    with dask.config.set({"dte_dask.rng-block-size": 64, "dte_dask.partition-units": 256}):  # 32 blocks, 8 partitions
        assert load_job_panel(job).npartitions == 8
        assert load_job_panel(job, threads=3).npartitions == 9
        assert load_job_panel(job, threads=64).npartitions == 32

    class _Client:
        def scheduler_info(self):
            return {"address": "tcp://x", "workers": {"a": {"nthreads": 2}, "b": {"nthreads": 3}}}
    assert _cluster_threads(_Client()) == 5
    assert _cluster_threads(object()) is None
