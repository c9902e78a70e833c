"""The issue-6 benchmark helpers: the truth check of run_medical.py and the scaling model."""
from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import pandas as pd
import pytest

BENCH = pathlib.Path(__file__).parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        import run_medical
        import scaling_model
        import scaling_run
        import taskstream

        yield run_medical, scaling_model, taskstream, scaling_run
    finally:
        sys.path.remove(str(BENCH))


def test_true_dynamic_is_the_cohort_size_weighted_truth(bench, tmp_path):
    run_medical, _, _, _ = bench
    (tmp_path / "_dte_dask.json").write_text(json.dumps({"cohort_counts": {"0": 50, "2": 10, "3": 30}}))
    pd.DataFrame({"group": [2, 2, 2, 3, 3, 3], "time": [1, 2, 3, 1, 2, 3], "event_time": [-1, 0, 1, -2, -1, 0],
                  "att": [0.0, 1.0, 2.0, 0.0, 0.0, 3.0]}).to_csv(tmp_path / "_truth.csv", index=False)
    truth = run_medical.true_dynamic(tmp_path)
    assert truth.loc[0] == pytest.approx((10 * 1.0 + 30 * 3.0) / 40)
    assert truth.loc[1] == pytest.approx(2.0)  # only cohort 2 reaches e = 1
    assert truth.loc[-2] == 0.0

    est = tmp_path / "out" / "estimators"
    est.mkdir(parents=True)
    pd.DataFrame({"event_time": [-2, -1, 0, 1], "estimate": [0.1, 0.0, 2.4, 2.1],
                  "band_lower": [-0.2, -0.1, 2.45, 1.5], "band_upper": [0.2, 0.1, 2.6, 2.5]}).to_csv(
        est / "att_gt.dynamic.csv", index=False)
    tab = run_medical.truth_check(tmp_path, tmp_path / "out")
    assert tab["inside"].tolist() == [True, True, True, True]
    assert tab.loc[0, "truth"] == pytest.approx(2.5)


def test_the_job_s_cpu_time_is_split_into_user_and_kernel_time(bench, tmp_path):
    run_medical = bench[0]
    busy = "import numpy as np, time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\nnp.ones(2**23).sum()"
    res = run_medical.run_sampled([sys.executable, "-c", busy], env=None, interval=0.05, scratch=tmp_path,
                                  timeout=60, log_file=tmp_path / "log")
    assert res["returncode"] == 0
    assert res["user_s"] > 0 and res["sys_s"] >= 0 and res["minor_faults"] > 0
    assert res["cpu_s"] == pytest.approx(res["user_s"] + res["sys_s"]) and res["cpu_s"] >= 0.3  # the busy loop's CPU


def test_fresh_memory_rate_measures_a_new_process(bench):
    rate = bench[0].fresh_memory_rate(16)
    assert rate["mib"] == 16 and rate["first_gib_s"] > 0 and rate["again_gib_s"] > 0


def _pass(prefixes, wall, gap=0.01, latency=0.0):
    tasks = sum(d["tasks"] for d in prefixes.values())
    compute = sum(d["compute"] for d in prefixes.values())
    return {"gap": gap, "latency": latency, "wall": wall, "tasks": tasks, "compute": compute, "prefixes": prefixes}


def test_model_replays_a_single_threaded_reference(bench):
    _, scaling, _, _ = bench
    # 4 partitions of 250k units, one map task each (1 s) and a 1-task reduction; wall = compute exactly
    ref = {"partitions": 4, "units": 1_000_000,
           "passes": [_pass({"k": {"tasks": 4, "compute": 4.0, "max": 1.0, "nbytes": 0.0},
                             "k-sum": {"tasks": 1, "compute": 0.0, "max": 0.0, "nbytes": 1e3}}, wall=4.0)]}
    costs = {"k": (0.0, 1.0 / 250_000)}
    kw = {"units": 1_000_000, "bandwidth": 1e12, "hop": 0.0, "sched": 0.0}
    one = scaling.predict(ref, costs, partitions=4, slots=1, cores=1, **kw)
    assert one == pytest.approx(4.0 + 0.01)
    assert scaling.predict(ref, costs, partitions=4, slots=2, cores=2, **kw) == pytest.approx(2.0 + 0.01)
    # oversubscribed: 4 slots on 2 cores take as long as 2 slots
    assert scaling.predict(ref, costs, partitions=4, slots=4, cores=2, **kw) == pytest.approx(2.0 + 0.01)
    # a fixed cost per task makes small partitions pay: 16 partitions x (0.1 + 0.25) s on 16 cores
    costs = {"k": (0.1, 1.0 / 250_000)}
    assert scaling.predict(ref, costs, partitions=16, slots=16, cores=16, **kw) == pytest.approx(0.1 + 0.25 + 0.01)
    # the scheduler's time per task bounds the pass from below
    slow = scaling.predict(ref, {"k": (0.0, 1e-9)}, partitions=100, slots=100, cores=100,
                           units=1_000_000, bandwidth=1e12, hop=0.0, sched=0.01)
    assert slow >= 100 * 0.01
    assert scaling.default_partitions(2_800_000) == 11
    assert scaling.default_partitions(10_000) == 1


def test_fit_costs_separates_fixed_and_per_unit_time(bench):
    _, scaling, _, _ = bench
    rows = []
    for units, parts in ((10_000, 1), (1_000_000, 4)):
        u = units / parts
        t = 0.05 + 2e-6 * u
        rows.append({"step": "s", "periods": 24, "config": "1x1", "units": units, "partitions": parts,
                     "passes": [_pass({"k": {"tasks": parts, "compute": parts * t, "max": t, "nbytes": 0.0}},
                                      wall=parts * t)]})
    c, w = scaling.fit_costs(rows, "s", 24)["k"]
    assert c == pytest.approx(0.05)
    assert w == pytest.approx(2e-6)


def test_passes_group_tasks_by_graph_submission(bench):
    _, _, taskstream, scaling_run = bench
    tok = "0123456789abcdef" * 2  # dask tokens: 32 hex digits
    records = [
        {"key": f"attgt-stats-{tok}-0", "startstops": ({"action": "compute", "start": 10.1, "stop": 10.5},), "nbytes": 8},
        {"key": f"attgt-stats-{tok}-1", "startstops": ({"action": "compute", "start": 10.5, "stop": 10.9},), "nbytes": 8},
        {"key": f"attgt-influence-{tok}-0", "startstops": ({"action": "compute", "start": 11.2, "stop": 12.0},), "nbytes": 16},
    ]
    tasks = taskstream.flatten(records)
    assert set(tasks["prefix"]) == {"attgt-stats", "attgt-influence"}
    passes = scaling_run.passes(tasks, [(10.0, 3), (11.0, 1)], 9.9, 12.2)
    assert [p["tasks"] for p in passes] == [2, 1]
    assert passes[0]["wall"] == pytest.approx(0.9)
    assert passes[1]["gap"] == pytest.approx(0.1)
    assert passes[1]["tail"] == pytest.approx(0.2)
    assert np.isclose(passes[0]["prefixes"]["attgt-stats"]["compute"], 0.8)


def test_the_read_floor_is_the_fastest_of_its_reads(bench, tmp_path):
    """A single slow read (this VM pages pyarrow's buffers in at the host's rate) would make the
    job's ratio look met: the floor is the fastest of several reads, each of the same rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for i in range(2):
        pq.write_table(pa.table({"unit": np.arange(1000) + 1000 * i, "y": np.ones(1000), "z": np.zeros(1000)}),
                       tmp_path / f"part-{i}.parquet")
    floor = bench[0].read_floor(tmp_path, ["unit", "y"], cold=True, repeats=3)
    assert len(floor["reads_s"]) == 3 and floor["read_s"] == min(floor["reads_s"])
    assert floor["rows"] == 2000 and floor["columns"] == ["unit", "y"] and floor["cold"]
    assert 2000 * 16 <= floor["arrow_bytes"] < 2000 * 24  # the two columns asked for, not the third
