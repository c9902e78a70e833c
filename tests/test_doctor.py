"""``dte_dask.doctor`` and the ``dte-dask doctor`` command."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from dte_dask import doctor
from dte_dask.cli import main
from dte_dask.cluster import local as local_module
from dte_dask.cluster import numa

GIB = 1 << 30
TOP_KEYS = {"platform", "cpu", "numa", "memory", "blas", "versions", "recommendation", "notes"}


def make_sysfs(root: Path, cpulists: dict[int, str]) -> Path:
    root.mkdir(parents=True)
    for node, cpulist in cpulists.items():
        (root / f"node{node}").mkdir()
        (root / f"node{node}" / "cpulist").write_text(cpulist + "\n")
        (root / f"node{node}" / "meminfo").write_text(f"Node {node} MemTotal: 8388608 kB\n")
    return root


@pytest.fixture
def two_nodes(tmp_path: Path) -> Path:
    return make_sysfs(tmp_path / "node", {0: "0-3", 1: "4-7"})


def test_collect_two_nodes_splits_each_node_as_dask_does(two_nodes: Path) -> None:
    info = doctor.collect(two_nodes, total_memory=16 * GIB)
    assert TOP_KEYS <= set(info)
    assert info["numa"]["n_nodes"] == 2 and info["numa"]["source"] == "sysfs"
    assert [n["cpus"] for n in info["numa"]["nodes"]] == ["0-3", "4-7"]
    assert info["numa"]["nodes"][0]["memory_bytes"] == 8 * GIB
    rec = info["recommendation"]
    # Dask's split of 4 CPUs: 4 processes of 1 thread, on each node
    assert rec["n_workers"] == 8 and rec["workers_per_node"] == 4
    assert rec["threads_per_worker"] == 1
    assert rec["memory_limit_bytes"] == int(16 * GIB * 0.9 / 8)
    assert [w["cpus"] for w in rec["workers"]] == [str(i) for i in range(8)]
    assert rec["workers"][5]["numactl_prefix"] == "numactl --physcpubind=5 --membind=1"
    assert rec["partition_units"] == doctor.recommend_partition_units(
        rec["memory_limit_bytes"], 1, 24)
    json.dumps(info)  # serialisable


def test_big_nodes_are_split(tmp_path: Path) -> None:
    root = make_sysfs(tmp_path / "node", {0: "0-15", 1: "16-31"})
    rec = doctor.collect(root, total_memory=64 * GIB)["recommendation"]
    assert rec["workers_per_node"] == 4 and rec["n_workers"] == 8  # Dask's split of 16 CPUs: 4 x 4
    assert rec["threads_per_worker"] == 4
    assert [w["cpus"] for w in rec["workers"]] == ["0-3", "4-7", "8-11", "12-15", "16-19", "20-23", "24-27", "28-31"]
    assert rec["workers"][0]["numactl_prefix"] == "numactl --physcpubind=0-3 --membind=0"
    capped = doctor.recommend_layout(numa.read_topology(root), max_threads_per_worker=8)
    assert capped["workers_per_node"] == 2 and [w["cpus"] for w in capped["workers"]][:2] == ["0-7", "8-15"]


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 6, 8, 12, 16, 64])
def test_default_workers_is_dasks_split_of_each_node(tmp_path: Path, cpus: int) -> None:
    from distributed.deploy.utils import nprocesses_nthreads

    root = make_sysfs(tmp_path / "node", {0: f"0-{cpus - 1}", 1: f"{cpus}-{2 * cpus - 1}"})
    topology = numa.read_topology(root)
    assert local_module.default_workers(topology) == 2 * nprocesses_nthreads(cpus)[0]
    plans = numa.plan_workers(topology, n_workers=local_module.default_workers(topology))
    assert {p.nthreads for p in plans} == {nprocesses_nthreads(cpus)[1]}


def test_missing_sysfs_means_one_node(tmp_path: Path) -> None:
    info = doctor.collect(tmp_path / "nothing", total_memory=4 * GIB)
    assert info["numa"]["source"] == "affinity" and info["numa"]["n_nodes"] == 1
    from distributed.deploy.utils import nprocesses_nthreads

    cpus = len(numa.read_topology(tmp_path / "nothing").cpu_nodes[0].cpus)
    assert info["recommendation"]["n_workers"] == nprocesses_nthreads(cpus)[0]
    assert (info["recommendation"]["pinning"] == "none") == (info["recommendation"]["n_workers"] == 1)
    assert any("no NUMA information" in n for n in info["notes"])


def test_real_machine_collect() -> None:
    info = doctor.collect()
    assert info["cpu"]["logical_cores"] >= 1
    assert info["memory"]["total_bytes"] > 0
    assert info["versions"]["numpy"] and info["versions"]["dask"]
    assert info["recommendation"]["n_workers"] >= 1
    assert "Recommended layout" in doctor.format_report(info)


def test_numactl_note(two_nodes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(numa.shutil, "which", lambda name: None)
    info = doctor.collect(two_nodes, total_memory=GIB)
    assert info["recommendation"]["pinning"] == "sched_setaffinity"
    assert any("numactl not found" in n for n in info["notes"])
    monkeypatch.setattr(numa.shutil, "which", lambda name: "/usr/bin/numactl")
    info = doctor.collect(two_nodes, total_memory=GIB)
    assert info["recommendation"]["pinning"] == "numactl" and info["numa"]["numactl"] is True


# ------------------------------------------------------------------------------ partition rule
def test_partition_units_rule() -> None:
    block = 4096
    # memory-bound: 4 GiB / 4 / (4 threads * 24 * 8 * 6) = 233,016 -> 229,376
    assert doctor.recommend_partition_units(4 * GIB, 4, 24, block) == 229_376
    # cap-bound: 128 MiB / (24 * 8) = 699,050 -> 696,320
    assert doctor.recommend_partition_units(100 * GIB, 8, 24, block) == 696_320
    # never below one block
    assert doctor.recommend_partition_units(1 << 20, 16, 24, block) == block
    # more periods or threads -> fewer units; more memory -> more
    u = doctor.recommend_partition_units(2 * GIB, 2, 24, block)
    assert doctor.recommend_partition_units(2 * GIB, 2, 48, block) < u
    assert doctor.recommend_partition_units(2 * GIB, 4, 24, block) < u
    assert doctor.recommend_partition_units(1 * GIB, 2, 24, block) < u
    for args in [(3 * GIB, 3, 17), (GIB, 1, 5), (7 * GIB, 5, 100)]:
        units = doctor.recommend_partition_units(*args, block=block)
        assert units % block == 0
        mem, threads, t = args
        assert units == block or units * t * 8 * 6 * threads <= mem / 4


def test_partition_units_default_block_from_config() -> None:
    import dask.config

    with dask.config.set({"dte_dask.rng-block-size": 1000}):
        assert doctor.recommend_partition_units(4 * GIB, 4, 24) % 1000 == 0


# ------------------------------------------------------------------------------ BLAS
def test_blas_fallback_without_threadpoolctl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import fails
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    info = doctor.blas_info()
    assert info["source"] == "numpy.show_config"
    assert info["env"]["OMP_NUM_THREADS"] == "3"
    assert isinstance(info["libraries"], list)
    assert info["worker_env"].get("OMP_NUM_THREADS") == "1"   # dask nanny default


def test_blas_with_threadpoolctl(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("threadpoolctl")
    fake.threadpool_info = lambda: [{"user_api": "blas", "internal_api": "openblas",
                                     "version": "0.3.x", "num_threads": 4, "filepath": "/x"}]
    monkeypatch.setitem(sys.modules, "threadpoolctl", fake)
    info = doctor.blas_info()
    assert info["source"] == "threadpoolctl"
    assert info["libraries"][0]["num_threads"] == 4
    assert "filepath" not in info["libraries"][0]


# ------------------------------------------------------------------------------ CLI
def test_cli_json(two_nodes: Path) -> None:
    result = CliRunner().invoke(main, ["doctor", "--json", "--sysfs-root", str(two_nodes)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert TOP_KEYS <= set(info)
    assert {"architecture", "physical_cores", "logical_cores"} <= set(info["cpu"])
    assert {"total_bytes", "available_bytes"} <= set(info["memory"])
    assert {"python", "dask", "distributed", "numpy", "pandas", "pyarrow"} <= set(info["versions"])
    assert {"n_workers", "workers_per_node", "threads_per_worker", "memory_limit_bytes",
            "partition_units"} <= set(info["recommendation"])
    assert info["recommendation"]["n_workers"] == 8


def test_cli_text(two_nodes: Path) -> None:
    result = CliRunner().invoke(main, ["doctor", "--sysfs-root", str(two_nodes),
                                       "--periods", "12"])
    assert result.exit_code == 0, result.output
    assert "Recommended layout" in result.output
    assert "workers          8 (4 per NUMA node)" in result.output
    assert "T=12 periods" in result.output
    assert "node 1" in result.output


def test_cli_malformed_sysfs_is_a_clean_error(tmp_path: Path) -> None:
    root = make_sysfs(tmp_path / "node", {0: "0-3", 1: "4-x"})
    result = CliRunner().invoke(main, ["doctor", "--sysfs-root", str(root)])
    assert result.exit_code == 1
    assert "node1" in result.output and "cpulist" in result.output
    assert "Traceback" not in result.output


def test_cli_group_resolves_doctor() -> None:
    import click

    from dte_dask.cli import doctor as cli_doctor

    cmd = main.get_command(click.Context(main), "doctor")
    assert cmd is cli_doctor.command and isinstance(cmd, click.Command)
    result = CliRunner().invoke(main, ["doctor", "--help"])
    assert result.exit_code == 0 and "--sysfs-root" in result.output
