"""NUMA topology reading, worker plans and CPU pinning of real LocalCluster workers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from dte_dask.cluster import numa
from dte_dask.cluster.numa import (
    PinCPUPlugin,
    Topology,
    TopologyError,
    WorkerPlan,
    format_cpulist,
    parse_cpulist,
    pin_local_cluster,
    plan_workers,
    read_topology,
    worker_affinity,
)

GIB = 1 << 30


def make_sysfs(root: Path, cpulists: dict[int, str], mem_kb: dict[int, int] | None = None) -> Path:
    """Write a fake ``/sys/devices/system/node`` tree (plus the non-node entries Linux has)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "online").write_text(f"0-{max(cpulists)}\n")
    (root / "power").mkdir(exist_ok=True)
    for node, cpulist in cpulists.items():
        d = root / f"node{node}"
        d.mkdir()
        (d / "cpulist").write_text(cpulist + "\n")
        if mem_kb and node in mem_kb:
            (d / "meminfo").write_text(
                f"Node {node} MemTotal:       {mem_kb[node]} kB\n"
                f"Node {node} MemFree:        {mem_kb[node] // 2} kB\n")
    return root


@pytest.fixture
def sysfs_2node(tmp_path: Path) -> Path:
    return make_sysfs(tmp_path / "node", {0: "0-3,8-11", 1: "4-7,12-15"},
                      mem_kb={0: 16 * 1024 * 1024, 1: 16 * 1024 * 1024})


@pytest.fixture
def sysfs_4node(tmp_path: Path) -> Path:
    return make_sysfs(tmp_path / "node", {i: f"{8 * i}-{8 * i + 7}" for i in range(4)})


# ------------------------------------------------------------------------------ cpulists
@pytest.mark.parametrize("text, cpus", [
    ("0-3,8-11", (0, 1, 2, 3, 8, 9, 10, 11)),
    ("5", (5,)),
    ("0,2,4-5\n", (0, 2, 4, 5)),
    ("", ()),
    ("\n", ()),
])
def test_parse_cpulist(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpulist(text) == cpus


@pytest.mark.parametrize("cpus, text", [
    ([0, 1, 2, 3, 8, 9, 10, 11], "0-3,8-11"), ([5], "5"), ([], ""), ([3, 1, 2, 2], "1-3"),
])
def test_format_cpulist_roundtrip(cpus: list[int], text: str) -> None:
    assert format_cpulist(cpus) == text
    assert parse_cpulist(text) == tuple(sorted(set(cpus)))


@pytest.mark.parametrize("bad", ["0-3,x", "3-1", "0--2", "a", "1,,2"])
def test_malformed_cpulist_names_the_file(tmp_path: Path, bad: str) -> None:
    root = make_sysfs(tmp_path / "node", {0: "0-1", 1: bad})
    with pytest.raises(TopologyError) as info:
        read_topology(root, total_memory=GIB)
    msg = str(info.value)
    assert str(root / "node1" / "cpulist") in msg
    assert repr(bad) in msg
    assert isinstance(info.value, ValueError)


# ------------------------------------------------------------------------------ topology
def test_read_topology_2node(sysfs_2node: Path) -> None:
    topo = read_topology(sysfs_2node, total_memory=32 * GIB)
    assert topo.source == "sysfs"
    assert topo.n_nodes == 2
    assert topo.nodes[0].cpus == (0, 1, 2, 3, 8, 9, 10, 11)
    assert topo.nodes[1].cpus == (4, 5, 6, 7, 12, 13, 14, 15)
    assert topo.nodes[0].memory_bytes == 16 * GIB
    assert topo.n_cpus == 16
    assert topo.total_memory == 32 * GIB


def test_read_topology_4node_no_meminfo(sysfs_4node: Path) -> None:
    topo = read_topology(sysfs_4node, total_memory=64 * GIB)
    assert [n.id for n in topo.nodes] == [0, 1, 2, 3]
    assert all(len(n.cpus) == 8 and n.memory_bytes is None for n in topo.nodes)


def test_read_topology_sorts_nodes_numerically(tmp_path: Path) -> None:
    root = make_sysfs(tmp_path / "node", {10: "2-3", 2: "0-1"})
    assert [n.id for n in read_topology(root, total_memory=GIB).nodes] == [2, 10]


def test_missing_sysfs_falls_back_to_affinity(tmp_path: Path) -> None:
    topo = read_topology(tmp_path / "does-not-exist", total_memory=GIB)
    assert topo.source == "affinity"
    assert topo.n_nodes == 1
    assert set(topo.nodes[0].cpus) == set(os.sched_getaffinity(0))


def test_empty_sysfs_dir_falls_back(tmp_path: Path) -> None:
    (tmp_path / "node").mkdir()
    assert read_topology(tmp_path / "node", total_memory=GIB).source == "affinity"


def test_restrict_to_affinity(tmp_path: Path) -> None:
    allowed = sorted(os.sched_getaffinity(0))
    root = make_sysfs(tmp_path / "node", {0: format_cpulist(allowed), 1: "100000-100003"})
    topo = read_topology(root, total_memory=GIB, restrict_to_affinity=True)
    assert topo.nodes[0].cpus == tuple(allowed)
    assert topo.nodes[1].cpus == ()            # kept, but has no usable CPUs
    assert [n.id for n in topo.cpu_nodes] == [0]


def test_real_machine_topology() -> None:
    topo = read_topology()
    assert topo.n_cpus >= 1 and topo.total_memory > 0
    assert set(topo.cpus) <= set(os.sched_getaffinity(0))


# ------------------------------------------------------------------------------ plans
def test_default_plan_one_worker_per_node(sysfs_2node: Path) -> None:
    plans = plan_workers(read_topology(sysfs_2node, total_memory=20 * GIB))
    assert [p.nodes for p in plans] == [(0,), (1,)]
    assert [p.name for p in plans] == ["0", "1"]
    assert plans[0].cpulist == "0-3,8-11" and plans[1].cpulist == "4-7,12-15"
    assert [p.nthreads for p in plans] == [8, 8]
    assert all(p.memory_limit == int(20 * GIB * 0.9 / 2) for p in plans)
    assert plans[1].numactl_prefix == "numactl --cpunodebind=1 --membind=1"
    assert plans[1].node == 1


def test_fewer_workers_than_nodes_get_whole_node_groups(sysfs_4node: Path) -> None:
    plans = plan_workers(read_topology(sysfs_4node, total_memory=64 * GIB), n_workers=2)
    assert [p.nodes for p in plans] == [(0, 1), (2, 3)]
    assert plans[0].cpus == tuple(range(16)) and plans[1].cpus == tuple(range(16, 32))
    assert [p.nthreads for p in plans] == [16, 16]
    assert plans[0].node is None
    assert plans[0].numactl_prefix == "numactl --cpunodebind=0,1 --membind=0,1"


def test_three_workers_on_four_nodes(sysfs_4node: Path) -> None:
    plans = plan_workers(read_topology(sysfs_4node, total_memory=GIB), n_workers=3)
    assert [p.nodes for p in plans] == [(0, 1), (2,), (3,)]


def test_workers_sharing_a_node_split_its_cpus(tmp_path: Path) -> None:
    root = make_sysfs(tmp_path / "node", {0: "0-7"})
    plans = plan_workers(read_topology(root, total_memory=8 * GIB), n_workers=2)
    assert [p.cpus for p in plans] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert [p.nthreads for p in plans] == [4, 4]
    assert plans[0].numactl_prefix == "numactl --physcpubind=0-3 --membind=0"
    assert plans[1].numactl_prefix == "numactl --physcpubind=4-7 --membind=0"


def test_more_workers_than_nodes_round_robin(sysfs_2node: Path) -> None:
    plans = plan_workers(read_topology(sysfs_2node, total_memory=GIB), n_workers=5)
    assert [p.nodes for p in plans] == [(0,), (0,), (0,), (1,), (1,)]
    # node 0 (8 CPUs) split 3/3/2, node 1 split 4/4; slices are disjoint and cover the node
    assert [len(p.cpus) for p in plans] == [3, 3, 2, 4, 4]
    node0 = [c for p in plans[:3] for c in p.cpus]
    assert sorted(node0) == [0, 1, 2, 3, 8, 9, 10, 11] and len(set(node0)) == 8


def test_plan_overrides(sysfs_2node: Path) -> None:
    plans = plan_workers(read_topology(sysfs_2node, total_memory=GIB),
                         threads_per_worker=2, memory_limit="3GiB")
    assert [p.nthreads for p in plans] == [2, 2]
    assert all(p.memory_limit == 3 * GIB for p in plans)
    assert plan_workers(read_topology(sysfs_2node, total_memory=GIB),
                        memory_limit=123)[0].memory_limit == 123


def test_plan_errors(tmp_path: Path) -> None:
    topo = read_topology(make_sysfs(tmp_path / "node", {0: "0-1"}), total_memory=GIB)
    with pytest.raises(TopologyError, match="only 2 CPU"):
        plan_workers(topo, n_workers=3)
    with pytest.raises(TopologyError, match="n_workers"):
        plan_workers(topo, n_workers=0)
    with pytest.raises(TopologyError, match="threads_per_worker"):
        plan_workers(topo, threads_per_worker=0)
    with pytest.raises(TopologyError, match="no node with CPUs"):
        plan_workers(Topology(nodes=(numa.NumaNode(0, ()),), total_memory=GIB))


def test_plan_to_dict(sysfs_2node: Path) -> None:
    d = plan_workers(read_topology(sysfs_2node, total_memory=GIB))[0].to_dict()
    assert d["name"] == "0" and d["cpus"] == "0-3,8-11" and d["nodes"] == [0]
    assert d["numactl_prefix"].startswith("numactl ")


def test_numactl_available_matches_which(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(numa.shutil, "which", lambda name: None)
    assert numa.numactl_available() is False
    monkeypatch.setattr(numa.shutil, "which", lambda name: "/x/numactl")
    assert numa.numactl_available() is True


# ------------------------------------------------------------------------------ pinning
def test_pin_all_threads_rejects_empty() -> None:
    with pytest.raises(TopologyError, match="empty"):
        numa.pin_all_threads([])


def test_worker_affinity_in_this_process() -> None:
    rep = worker_affinity()
    assert rep["pid"] == os.getpid()
    assert set(rep["process"]) == set(os.sched_getaffinity(0))
    assert rep["threads"]


class _FakeWorker:
    name = "7"
    address = "tcp://fake:1"


def test_plugin_skips_unplanned_worker() -> None:
    plugin = PinCPUPlugin({"0": [0]})
    plugin.setup(_FakeWorker())          # no plan for "7": must not touch this process
    assert plugin.pinned is None


two_cpus = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or not {0, 1} <= set(os.sched_getaffinity(0)),
    reason="needs Linux and CPUs 0 and 1 in this process's affinity")


@two_cpus
def test_local_cluster_workers_pinned_to_plan() -> None:
    """Real processes: worker 0 -> CPU {0}, worker 1 -> CPU {1}, every thread checked."""
    from distributed import Client, LocalCluster

    plans = [WorkerPlan(index=0, nodes=(0,), cpus=(0,), nthreads=1, memory_limit=GIB,
                        whole_nodes=False),
             WorkerPlan(index=1, nodes=(0,), cpus=(1,), nthreads=1, memory_limit=GIB,
                        whole_nodes=False)]
    before = set(os.sched_getaffinity(0))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, memory_limit=GIB) as cluster, \
            Client(cluster) as client:
        # run a task first so the executor threads exist before pinning (the trap to avoid)
        client.gather(client.map(lambda i: i, range(4), pure=False))
        reports = pin_local_cluster(client, plans)
        assert set(reports) == {"0", "1"}
        after = client.run(worker_affinity)
        names = client.run(numa._worker_name)
        by_name = {names[addr]: rep for addr, rep in after.items()}
        for name, want in (("0", [0]), ("1", [1])):
            rep = by_name[name]
            assert rep["process"] == want
            assert len(rep["threads"]) > 1
            assert all(cpus == want for cpus in rep["threads"].values()), rep["threads"]
        # executor threads (where tasks run) are pinned too
        seen = client.run(lambda: sorted(os.sched_getaffinity(0)))
        assert sorted(map(tuple, seen.values())) == [(0,), (1,)]
        on_task = {tuple(client.submit(lambda: sorted(os.sched_getaffinity(0)), pure=False,
                                       workers=[addr]).result()) for addr in after}
        assert on_task == {(0,), (1,)}
        # a worker whose name has no plan is refused before anything is pinned
        with pytest.raises(TopologyError, match="no plan"):
            pin_local_cluster(client, plans[:1])
    assert set(os.sched_getaffinity(0)) == before     # the test process itself untouched


@two_cpus
def test_plugin_at_cluster_start() -> None:
    """``LocalCluster(plugins={PinCPUPlugin(...)})`` pins workers before any task runs."""
    from distributed import Client, LocalCluster

    plugin = PinCPUPlugin({0: [1], 1: [0]})     # reversed on purpose; int names accepted
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, memory_limit=GIB, plugins={plugin}) as cluster, \
            Client(cluster) as client:
        names = client.run(numa._worker_name)
        reports = client.run(worker_affinity)
        for addr, rep in reports.items():
            want = [1] if names[addr] == "0" else [0]
            assert all(cpus == want for cpus in rep["threads"].values()), (names[addr], rep)
