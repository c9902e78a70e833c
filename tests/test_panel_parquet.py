"""The fast loading paths: local parquet read with pyarrow (no dask frame), and the pivot of a
unit-major pandas frame by reshape. Both must give exactly the blocks of the general routes."""
from __future__ import annotations

import dataclasses
import pathlib

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dte_dask import load_panel
from dte_dask.exceptions import MissingColumnError, MissingValuesError, PanelError
from dte_dask.panel import parquet
from dte_dask.panel.blocks import stack_arrays
from dte_dask.panel.spec import PanelSpec
from dte_dask.simulate import write_panel

KW = dict(unit="unit", time="time", outcome="y", group="group")
FIELDS = ("ids", "rank", "g", "w", "cluster", "y", "x")

pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.reset_index")


def blocks(panel):
    return dask.compute(*panel.blocks)


def assert_identical(a, b) -> None:
    """Same partitions, same arrays: values, dtypes and memory order (which sums depend on; a
    partition may be a view into a larger block, so strides themselves may differ)."""
    ba, bb = blocks(a), blocks(b)
    assert len(ba) == len(bb)
    assert a.summaries == b.summaries
    for x, y in zip(ba, bb):
        for f in FIELDS:
            u, v = getattr(x, f), getattr(y, f)
            if u is None:
                assert v is None, f
                continue
            assert u.dtype == v.dtype and np.argsort(u.strides).tolist() == np.argsort(v.strides).tolist(), f
            np.testing.assert_array_equal(u, v, err_msg=f)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("panel-parquet")
    write_panel(root / "sim", 3000, 6, npartitions=3, seed=2)
    pdf = pd.read_parquet(root / "sim").sort_values(["unit", "time"], ignore_index=True)
    # disjoint unit ranges per file, rows shuffled inside each file, several row groups per file
    shuf = root / "shuf"
    shuf.mkdir()
    for i, part in enumerate(np.array_split(pdf.unit.unique(), 2)):
        rows = pdf[pdf.unit.isin(part)].sample(frac=1, random_state=i)
        pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), shuf / f"{1 - i}.parquet", row_group_size=2500)
    # units spread over both files: only a shuffle puts each unit in one partition
    over = root / "overlap"
    over.mkdir()
    mixed = pdf.sample(frac=1, random_state=5)
    for i, rows in enumerate(np.array_split(np.arange(len(mixed)), 2)):
        mixed.iloc[rows].to_parquet(over / f"part-{i}.parquet", index=False)
    keep = np.sort(np.random.default_rng(0).choice(len(pdf), len(pdf) - 200, replace=False))
    pdf.iloc[keep].to_parquet(root / "unbalanced.parquet", index=False, row_group_size=4000)
    pdf.assign(time=pdf.time.astype(float).where(pdf.index != 7)).to_parquet(root / "time_nan.parquet", index=False)
    return {"root": root, "pdf": pdf}


def _spy(monkeypatch, owner, name: str) -> list:
    """The calls to ``owner.name`` from now on (the function still runs)."""
    calls = []
    original = getattr(owner, name)

    def spy(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)
    monkeypatch.setattr(owner, name, spy)
    return calls


def _spy_dask_reader(monkeypatch) -> list:
    return _spy(monkeypatch, dd, "read_parquet")


@pytest.mark.parametrize("kw", [dict(covariates=["age", "female"], rng_block_size=64, npartitions=5),
                                dict(group=None, treatment="treat", rng_block_size=256)])
def test_sorted_and_shuffled_files_read_with_pyarrow_equal_pandas(files, monkeypatch, kw):
    ref = load_panel(files["pdf"], **{**KW, **kw})
    calls = _spy_dask_reader(monkeypatch)
    for src in (files["root"] / "sim", str(files["root"] / "sim" / "part-*.parquet"), files["root"] / "shuf"):
        assert_identical(ref, load_panel(src, **{**KW, **kw}))
    assert not calls  # planned from the footers, read with pyarrow


def test_plan_orders_pieces_by_unit_range_and_refuses_overlaps(files):
    spec = PanelSpec(**KW)
    plan = parquet.plan(parquet.local_files(files["root"] / "shuf"), spec, spec.columns)
    assert [p.path.rsplit("/", 1)[-1] for p in plan.pieces] == ["1.parquet", "0.parquet"]
    assert plan.pieces[0].row_groups == (0, 1, 2, 3) and plan.pieces[0].hi < plan.pieces[1].lo
    assert parquet.plan(parquet.local_files(files["root"] / "overlap"), spec, spec.columns) is None
    assert parquet.plan(parquet.local_files(files["root"] / "sim"), PanelSpec(**{**KW, "unit": "nope"}), ["nope"]) is None


def test_overlapping_files_take_the_dask_route(files, monkeypatch):
    ref = load_panel(files["pdf"], **KW, rng_block_size=64, npartitions=3)
    calls = _spy_dask_reader(monkeypatch)
    assert_identical(ref, load_panel(files["root"] / "overlap", **KW, rng_block_size=64, npartitions=3))
    assert calls


def test_unbalanced_file_equals_pandas(files):
    pdf = pd.read_parquet(files["root"] / "unbalanced.parquet")
    for allow in (True, False):
        with pytest.warns(Warning) if not allow else _nothing():
            a = load_panel(pdf, **KW, allow_unbalanced_panel=allow, rng_block_size=128)
        with pytest.warns(Warning) if not allow else _nothing():
            b = load_panel(files["root"] / "unbalanced.parquet", **KW, allow_unbalanced_panel=allow, rng_block_size=128)
        assert_identical(a, b)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_errors_of_the_pyarrow_route(files):
    with pytest.raises(PanelError, match=r"column 'time' \(time\) has 1 missing values"):
        load_panel(files["root"] / "time_nan.parquet", **KW)
    with pytest.raises(MissingColumnError, match=r"'nope' \(covariate\) not found"):
        load_panel(files["root"] / "sim", **KW, covariates=["nope"])
    bad = files["root"] / "y_nan.parquet"
    files["pdf"].assign(y=files["pdf"].y.where(files["pdf"].index != 13)).to_parquet(bad, index=False)
    with pytest.raises(MissingValuesError, match=r"column 'y' \(outcome\) has 1 missing values, e\.g\. \(unit, period\) \[\(3, 2\)\]"):
        load_panel(bad, **KW)


def test_unit_major_reshape_equals_the_scatter(files):
    """A balanced frame sorted by (unit, time) is pivoted by reshape; any other row order by
    scatter: the same blocks, with covariates (constant and varying), weights and clusters."""
    pdf = files["pdf"].assign(w=lambda d: 1.0 + d.unit % 3, state=lambda d: d.unit % 17,
                              xv=lambda d: d.age + 0.1 * d.time)
    for kw in (dict(covariates=["age"]), dict(covariates=["age", "xv"], weights="w"), dict(cluster="state"),
               dict(group=None, treatment="treat")):
        a = load_panel(pdf, **{**KW, **kw}, rng_block_size=64)
        b = load_panel(pdf.sample(frac=1, random_state=3), **{**KW, **kw}, rng_block_size=64)
        assert_identical(a, b)


def test_stack_keeps_the_layout_of_its_parts():
    """Row slices of column-major blocks stack column-major (as a partition that is a view of one
    block is); a one-row part has both layouts and follows the others; anything else stacks as
    ``np.concatenate`` does."""
    rng = np.random.default_rng(0)
    F = np.asfortranarray(rng.normal(size=(40, 5)))
    C = np.ascontiguousarray(F)
    for parts, column_major in (([F[3:10], F[20:40]], True), ([F[3:4], F[5:9]], True), ([F[5:9], F[3:4], F[0:1]], True),
                                ([C[3:4], F[5:9]], True), ([C[3:10], C[2:5]], False), ([F[2:9], C[1:3]], False),
                                ([F[3:4], F[0:1]], False), ([np.ones((4, 3, 2)), np.zeros((2, 3, 2))], False),
                                ([F[:, 0], F[:, 1]], False)):
        want, got = np.concatenate(parts), stack_arrays(list(parts))
        assert want.dtype == got.dtype
        np.testing.assert_array_equal(want, got)
        if column_major:
            assert got.flags.f_contiguous and not got.flags.c_contiguous
        else:
            assert want.strides == got.strides


def test_pieces_are_cut_only_between_units(files, monkeypatch, tmp_path):
    """Row groups that split a unit stay in one piece; pieces of one file then pivot separately."""
    path = tmp_path / "one.parquet"
    pq.write_table(pa.Table.from_pandas(files["pdf"], preserve_index=False), path, row_group_size=1000)  # 1000/6: units straddle
    monkeypatch.setattr(parquet, "PIECE_ROWS", 4000)
    spec = PanelSpec(**KW)
    pieces = parquet.plan([str(path)], spec, spec.columns).pieces
    assert len(pieces) > 2 and all(a.hi < b.lo for a, b in zip(pieces[:-1], pieces[1:]))
    calls = _spy_dask_reader(monkeypatch)
    assert_identical(load_panel(files["pdf"], **KW, rng_block_size=64), load_panel(path, **KW, rng_block_size=64))
    assert not calls


@pytest.fixture(scope="module")
def varying(files):
    """Sorted, balanced, with weights, and a covariate that varies in time only for the last units
    (early batches pivot to (n, p) covariates, late ones to (n, T, p))."""
    pdf = files["pdf"]
    late = pdf.unit >= pdf.unit.quantile(0.9)
    path = files["root"] / "varying.parquet"
    pdf.assign(w=1.0 + pdf.unit % 3, xv=pdf.age + np.where(late, 0.1 * pdf.time, 0.0)).to_parquet(path, index=False, row_group_size=5000)
    return path


@pytest.mark.parametrize("rows", [7, 60, 1001])
def test_streamed_batches_equal_the_whole_read(files, varying, monkeypatch, rows):
    """Blocks built batch by batch (units straddling batches carried over) are the blocks of the
    whole piece read at once, for sorted, unbalanced and row-shuffled files (the last fall back to the
    whole read)."""
    cases = [(files["root"] / "sim", dict(covariates=["age", "female"])),
             (files["root"] / "unbalanced.parquet", dict(allow_unbalanced_panel=True)),
             (files["root"] / "shuf", dict(covariates=["age"])),
             (varying, dict(covariates=["age", "xv"], weights="w")),
             (files["root"] / "sim", dict(group=None, treatment="treat"))]
    for src, kw in cases:
        monkeypatch.setattr(parquet, "STREAM_ROWS", 1 << 30)
        whole = load_panel(src, **{**KW, **kw}, rng_block_size=64, npartitions=4)
        monkeypatch.setattr(parquet, "STREAM_ROWS", rows)
        assert_identical(whole, load_panel(src, **{**KW, **kw}, rng_block_size=64, npartitions=4))


def test_streaming_falls_back_to_the_whole_read_only_when_units_interleave(files, monkeypatch):
    monkeypatch.setattr(parquet, "STREAM_ROWS", 60)
    spec = PanelSpec(**KW)
    periods = parquet.PeriodMap.from_values(pd.Series(np.arange(1, 7)), "time")
    sorted_piece = parquet.plan(parquet.local_files(files["root"] / "sim"), spec, spec.columns).pieces[0]
    shuffled_piece = parquet.plan(parquet.local_files(files["root"] / "shuf"), spec, spec.columns).pieces[0]
    block = parquet._streamed_block(sorted_piece, spec.columns, spec, periods)
    n = sorted_piece.rows // 6
    assert block is not None and block.n == n and np.all(np.diff(block.ids) > 0) and np.array_equal(block.rank, np.arange(n))
    assert parquet._streamed_block(shuffled_piece, spec.columns, spec, periods) is None


def test_errors_of_a_late_batch_name_its_units(files, monkeypatch, tmp_path):
    monkeypatch.setattr(parquet, "STREAM_ROWS", 60)
    pdf = files["pdf"]
    bad = tmp_path / "late_nan.parquet"
    row = len(pdf) - 20  # in the last file's last batches
    unit, period = pdf.unit[row], pdf.time[row]
    pdf.assign(y=pdf.y.where(pdf.index != row)).to_parquet(bad, index=False)
    with pytest.raises(MissingValuesError, match=rf"column 'y' \(outcome\) has 1 missing values, e\.g\. \(unit, period\) \[\({unit}, {period}\)\]"):
        load_panel(bad, **KW)
    dup = tmp_path / "late_dup.parquet"
    pd.concat([pdf, pdf.iloc[[row]]]).sort_values(["unit", "time"], kind="stable").to_parquet(dup, index=False)
    with pytest.raises(PanelError, match=rf"duplicate rows.*\({unit}, {period}\)"):
        load_panel(dup, **KW)


def test_covariates_varying_in_some_pieces_only_equal_pandas(varying, monkeypatch):
    """Pieces (and batches) whose covariates are constant take the (n, T, p) layout of the others: the
    same values and memory order as the whole frame pivoted at once."""
    kw = {**KW, "covariates": ["age", "xv"], "weights": "w", "rng_block_size": 64, "npartitions": 4}
    ref = load_panel(pd.read_parquet(varying), **kw)
    monkeypatch.setattr(parquet, "PIECE_ROWS", 4000)
    for rows in (60, 1 << 30):
        monkeypatch.setattr(parquet, "STREAM_ROWS", rows)
        assert_identical(ref, load_panel(varying, **kw))


def test_mpdta_from_parquet_in_batches_gives_r_did_attgt(tmp_path, monkeypatch):
    """The county panel of R ``did`` written to parquet and read 7 rows at a time (units of 5 years
    straddle every batch): the pandas route's blocks, and R ``did``'s ATT(g,t) with covariates."""
    from dte_dask import att_gt
    from dte_dask.datasets import load_mpdta

    df = load_mpdta()
    path = tmp_path / "mpdta.parquet"
    df.to_parquet(path, index=False, row_group_size=600)
    kw = {"unit": "countyreal", "time": "year", "outcome": "lemp", "group": "first_treat", "covariates": ["lpop"]}
    monkeypatch.setattr(parquet, "STREAM_ROWS", 7)
    panel = load_panel(path, **kw)
    assert_identical(load_panel(df, **kw), panel)
    cells = att_gt(panel, control_group="never_treated", est_method="dr", bootstrap=False).to_frame()
    ref = pd.read_csv(pathlib.Path(__file__).parent / "reference" / "mpdta_nt_x_attgt.csv")  # R did, xformla = ~lpop
    np.testing.assert_allclose(cells["estimate"], ref["att"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(cells["se"], ref["se"], rtol=1e-8)


def _spy_scan(monkeypatch) -> list:
    return _spy(monkeypatch, parquet, "scan_times")


def _periods_equal(a, b) -> None:
    assert a.periods.kind == b.periods.kind and a.periods.column == b.periods.column
    np.testing.assert_array_equal(a.periods.labels, b.periods.labels)
    assert a.periods.labels.dtype == b.periods.labels.dtype


@pytest.mark.parametrize("rows", [60, 1 << 30])
def test_periods_of_the_first_unit_spare_the_scan_only_when_every_piece_confirms_them(files, tmp_path, monkeypatch, rows):
    """The first unit's periods are the panel's when every row of every piece has one of them: no
    scan of the time column. A later period (in any piece), a first unit missing one, or a missing
    label refutes them: the scan runs and the panel (periods, blocks, errors) is the pandas route's."""
    monkeypatch.setattr(parquet, "STREAM_ROWS", rows)
    monkeypatch.setattr(parquet, "PIECE_ROWS", 4000)
    pdf = files["pdf"]
    first = pdf.unit == pdf.unit.min()
    late = pdf.unit > pdf.unit.quantile(0.8)
    cases = {  # name: (frame, whether the guess holds)
        "balanced": (pdf, True),
        "unbalanced, first unit whole": (pdf[~((pdf.unit % 7 == 3) & (pdf.time == 4))], True),
        "first unit misses a period": (pdf[~(first & (pdf.time == 6))], False),
        "a late period in the last pieces": (pd.concat([pdf, pdf[late & (pdf.time == 6)].assign(time=7)]).sort_values(["unit", "time"], kind="stable"), False),
    }
    for name, (frame, holds) in cases.items():
        path = tmp_path / f"{abs(hash(name))}.parquet"
        frame.to_parquet(path, index=False, row_group_size=3000)
        calls = _spy_scan(monkeypatch)
        ref = load_panel(frame.reset_index(drop=True), **KW, allow_unbalanced_panel=True, rng_block_size=64)
        got = load_panel(path, **KW, allow_unbalanced_panel=True, rng_block_size=64)
        assert_identical(ref, got)
        _periods_equal(ref, got)
        assert (not calls) == holds, name
    bad = tmp_path / "late_time_nan.parquet"
    pdf.assign(time=pdf.time.astype(float).where(pdf.index != len(pdf) - 3)).to_parquet(bad, index=False)
    with pytest.raises(PanelError, match=r"column 'time' \(time\) has 1 missing values"):
        load_panel(bad, **KW)


def test_each_raw_piece_goes_once_its_partitions_are_built(files, monkeypatch):
    """The client holds no raw block of a piece while the partitions are built from them: the
    scheduler releases each once the partitions cut from it are (its memory then serves the next
    ones), not all of them after the last."""
    import time

    from distributed import Client, LocalCluster
    from distributed.diagnostics.plugin import SchedulerPlugin

    from dte_dask.panel import load as load_module

    class Transitions(SchedulerPlugin):
        def __init__(self):
            self.log = []

        def transition(self, key, start, finish, *args, **kwargs):
            self.log.append((str(key), start, finish))

    assemble = load_module.assemble_partition

    def slow_assemble(*args, **kwargs):  # time for the client's releases to reach the scheduler
        time.sleep(0.15)
        return assemble(*args, **kwargs)

    monkeypatch.setattr(load_module, "assemble_partition", slow_assemble)
    kw = {**KW, "rng_block_size": 50, "npartitions": 6}
    with dask.config.set(scheduler=None), LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                                       dashboard_address=None) as lc, Client(lc):
        plugin = Transitions()
        lc.scheduler.add_plugin(plugin)
        panel = load_panel(files["root"] / "shuf", **kw)  # two files: two raw blocks
        log = list(plugin.log)
        assert panel.npartitions == 6
        assert_identical(load_panel(files["pdf"], **kw), panel)
    built = [i for i, (k, a, b) in enumerate(log) if k.startswith("panel-layout-") and b == "memory"]
    gone = [i for i, (k, a, b) in enumerate(log) if k.startswith("panel-block-") and a == "memory"]
    assert len(built) == 6 and gone
    assert min(gone) < max(built)  # a raw piece went before the last partition was built


def test_a_part_cut_in_another_process_keeps_the_outcomes_column_major(files):
    """A slice of a column-major array travels between processes as a row-major copy; the partition
    built from it is laid out as one built in place (same arrays, same layout as pandas')."""
    from dte_dask.panel.blocks import assemble_partition, cut_block

    block = load_panel(files["pdf"], **{**KW, "npartitions": 1}).blocks[0].compute()
    assert block.y.strides[0] < block.y.strides[1]
    n = block.n
    local = [cut_block(block, 0, 0, n // 3), cut_block(block, 0, n // 3, n)]
    moved = [local[0], dataclasses.replace(local[1], y=np.ascontiguousarray(local[1].y))]  # as unpickled
    for parts in (local, moved, moved[1:]):
        out = assemble_partition(parts)
        assert out.y.strides[0] < out.y.strides[1]
        np.testing.assert_array_equal(out.y, np.concatenate([p.y for p in parts]))


def test_two_worker_processes_build_the_same_partitions(files):
    from distributed import Client, LocalCluster

    kw = {**KW, "covariates": ["age", "female"], "rng_block_size": 50, "npartitions": 5}
    ref = load_panel(files["pdf"], **kw)
    with dask.config.set(scheduler=None), LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                                       dashboard_address=None) as lc, Client(lc):
        assert_identical(ref, load_panel(files["root"] / "shuf", **kw))


def test_quotas_share_the_partitions_by_threads():
    from dte_dask.panel.placement import quotas

    assert quotas([1, 1], 12) == [6, 6]
    assert quotas([1, 1], 11) == [6, 5]  # the odd one to the first worker
    assert quotas([2, 1], 7) == [5, 2]  # shares 4.67 / 2.33: the larger remainder first
    assert quotas([1, 1, 1], 2) == [1, 1, 0]
    assert quotas([4, 4, 8], 10) == [3, 2, 5]  # 2.5 / 2.5 / 5: the tie to the earlier worker
    for threads, n in [([1, 2, 3], 17), ([5], 3), ([1] * 7, 30)]:
        assert sum(quotas(threads, n)) == n


def test_partitions_and_pieces_spread_in_runs_over_the_workers(files, monkeypatch, tmp_path):
    """With two workers, the partitions are built half on each, in two runs in entity order, and
    the raw pieces are read the same way (the scheduler alone had split the medical panel's 12
    partitions 7 / 5, so that each estimator pass waited on one worker). Without a distributed
    client nothing is placed."""
    from distributed import Client, LocalCluster, futures_of

    from dte_dask.panel import placement

    assert placement.spread(4) is None  # dask's synchronous scheduler: no workers to place on
    kw = {**KW, "covariates": ["age", "female"], "rng_block_size": 50, "npartitions": 6}
    src = tmp_path / "groups.parquet"
    files["pdf"].to_parquet(src, index=False, row_group_size=3000)
    monkeypatch.setattr(parquet, "PIECE_ROWS", 4000)  # pieces of two row groups: 3 pieces
    ref = load_panel(src, **kw)
    pieces = []
    spread = placement.spread

    def spy(n):
        out = spread(n)
        pieces.append(out)
        return out
    monkeypatch.setattr("dte_dask.panel.load.spread", spy)
    with dask.config.set(scheduler=None), LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                                       dashboard_address=None) as lc, Client(lc) as client:
        panel = load_panel(src, **kw)
        held = client.who_has([f for b in panel.blocks for f in futures_of(b)])
        workers = sorted(client.scheduler_info()["workers"])
        assert [list(held[b.key]) for b in panel.blocks] == [[workers[0]]] * 3 + [[workers[1]]] * 3
        n = len(pieces[0])  # the raw pieces, then the partitions
        assert n == 3 and pieces[0] == [workers[0]] * 2 + [workers[1]]
        assert pieces[1] == [workers[0]] * 3 + [workers[1]] * 3
        assert_identical(ref, panel)
        # a Dask DataFrame's partitions are placed the same way (its pieces: where the frame computed them)
        frame = load_panel(dd.from_pandas(files["pdf"], npartitions=3, sort=False), **kw)
        held = client.who_has([f for b in frame.blocks for f in futures_of(b)])
        assert [list(held[b.key]) for b in frame.blocks] == [[workers[0]]] * 3 + [[workers[1]]] * 3


def test_workers_load_and_fit_without_importing_dask_dataframe(files):
    """A worker process runs a parquet panel's load and the estimators' passes without importing
    Dask DataFrame (about 0.3 s of every worker's first task, on the job's critical path): the
    worker-side steps live in modules that do not import the loader."""
    from distributed import Client, LocalCluster

    import dte_dask

    kw = {**KW, "covariates": ["age", "female"], "npartitions": 2}
    with dask.config.set(scheduler=None), LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                                       dashboard_address=None) as lc, Client(lc) as client:
        panel = load_panel(files["root"] / "sim", **kw)
        dte_dask.att_gt(panel, est_method="dr", bootstrap=True, n_boot=19, seed=1)
        dte_dask.event_study(panel, window=(-2, 2), bootstrap=True, n_boot=19, seed=1)
        dte_dask.stacked_did(panel, window=(-1, 1), bootstrap=True, n_boot=19, seed=1)

        def imported() -> bool:  # defined here, sent by value: this test module imports Dask DataFrame
            import sys

            return "dask.dataframe" in sys.modules

        assert list(client.run(imported).values()) == [False]
