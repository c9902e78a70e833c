"""Cluster profiles: schema, precedence, job scripts, TLS files, and small local clusters.

Nothing here needs Slurm or sshd (``SLURMCluster.job_script()`` is generated without
submitting); the real-cluster runs are in ``test_real_clusters.py``.
"""
from __future__ import annotations

import filecmp
import os
import shutil
import ssl
import subprocess
from pathlib import Path

import dask.config
import pytest
import yaml

from dte_dask.cluster import env, slurm, ssh
from dte_dask.cluster.env import remote_env
from dte_dask.cluster.profiles import (
    PACKAGE_PROFILE_DIR,
    backend,
    connect,
    expand_env,
    expected_workers,
    find_profile,
    make_cluster,
    resolve_profile,
)
from dte_dask.cluster.slurm import slurm_numactl
from dte_dask.cluster.ssh import ssh_numa_remote_python
from dte_dask.cluster.schema import ProfileError, profile_json_schema, validate_profile
from dte_dask.cluster.security import (
    cert_paths,
    cryptography_available,
    generate_certificates,
    make_security,
)

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "cluster_configs"
SHIPPED = ["local", "ssh", "slurm", "slurm-numa"]


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("tls")
    generate_certificates(d)
    return os.fspath(d)


def _jobqueue():
    return pytest.importorskip("dask_jobqueue", reason="dask-jobqueue not installed "
                               "(pip install 'dte_dask[slurm]')")


# --------------------------------------------------------------------------------------------
# shipped profiles
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_validates(name: str) -> None:
    r = resolve_profile(name)
    assert r.name == name
    assert r.kind == yaml.safe_load(Path(r.source).read_text())["kind"]
    # the raw file (without env expansion or defaults) validates too
    validate_profile(expand_env(yaml.safe_load(Path(r.source).read_text())), where=name)


@pytest.mark.parametrize("name", SHIPPED)
def test_package_copy_matches_repository(name: str) -> None:
    packaged = PACKAGE_PROFILE_DIR / f"{name}.yaml"
    assert packaged.is_file(), f"{packaged} missing (package data)"
    if REPO_CONFIGS.is_dir():
        assert filecmp.cmp(packaged, REPO_CONFIGS / f"{name}.yaml", shallow=False), (
            f"cluster_configs/{name}.yaml and dte_dask/cluster/profiles/{name}.yaml differ")


def test_installed_package_finds_profiles_without_repo(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./cluster_configs here
    for name in SHIPPED:
        assert find_profile(name) == PACKAGE_PROFILE_DIR / f"{name}.yaml"


def test_search_path_config_wins(tmp_path, monkeypatch) -> None:
    (tmp_path / "local.yaml").write_text("kind: local\ndescription: mine\n")
    with dask.config.set({"dte_dask.cluster.search-path": [os.fspath(tmp_path)]}):
        r = resolve_profile("local")
    assert r.source == os.fspath(tmp_path / "local.yaml")
    assert r.spec.description == "mine"


def test_security_is_on_for_ssh_and_slurm_profiles() -> None:
    assert not resolve_profile("local").spec.security.tls
    for name in ("ssh", "slurm", "slurm-numa"):
        assert resolve_profile(name).spec.security.tls, name


def test_json_schema_export() -> None:
    schema = profile_json_schema()
    text = repr(schema)
    for key in ("hosts", "job_extra_directives", "dashboard_address", "numactl"):
        assert key in text


# --------------------------------------------------------------------------------------------
# unknown keys and bad values
# --------------------------------------------------------------------------------------------
def test_unknown_top_level_key_is_named(tmp_path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("kind: local\nworkers: 3\n")
    with pytest.raises(ProfileError, match=r"unknown key\(s\): workers") as exc:
        resolve_profile(p)
    assert "bad.yaml" in str(exc.value)


def test_unknown_nested_keys_are_all_named(tmp_path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({
        "kind": "ssh",
        "cluster": {"hosts": ["a", "b"], "worker_options": {"nthread": 2},
                    "connect_options": {"prot": 22}, "numactl": "auto", "bogus": 1},
    }))
    with pytest.raises(ProfileError) as exc:
        resolve_profile(p)
    msg = str(exc.value)
    for key in ("cluster.worker_options.nthread", "cluster.connect_options.prot", "cluster.bogus"):
        assert key in msg


def test_unknown_override_is_named() -> None:
    with pytest.raises(ProfileError, match=r"unknown key\(s\): cluster.n_wrokers"):
        resolve_profile("local", n_wrokers=2)


def test_bad_values_are_reported() -> None:
    with pytest.raises(ProfileError, match="cluster.n_workers"):
        resolve_profile("local", n_workers=-1)
    with pytest.raises(ProfileError, match="cluster.walltime"):
        resolve_profile("slurm", walltime="ten minutes")
    with pytest.raises(ProfileError, match="cluster.hosts"):
        resolve_profile("ssh", hosts=["only-a-scheduler"])
    with pytest.raises(ProfileError, match="'kind' must be one of"):
        resolve_profile({"kind": "kubernetes"})


def test_missing_profile_lists_available() -> None:
    with pytest.raises(ProfileError, match=r"no cluster profile named 'nope'.*slurm-numa"):
        resolve_profile("nope")
    with pytest.raises(ProfileError, match="does not exist"):
        resolve_profile("missing/file.yaml")


def test_invalid_yaml(tmp_path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("kind: local\ncluster: [unclosed\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        resolve_profile(p)


def test_yaml_is_read_safely(tmp_path) -> None:
    p = tmp_path / "evil.yaml"
    p.write_text("kind: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        resolve_profile(p)


# --------------------------------------------------------------------------------------------
# precedence: argument > profile > dask.config default
# --------------------------------------------------------------------------------------------
def test_precedence_wait_timeout(tmp_path) -> None:
    with_key = tmp_path / "with.yaml"
    with_key.write_text("kind: local\nwait_timeout: 22\n")
    without = tmp_path / "without.yaml"
    without.write_text("kind: local\n")
    assert resolve_profile(without).spec.wait_timeout == 120  # package default
    with dask.config.set({"dte_dask.cluster.wait-timeout": 11}):
        assert resolve_profile(without).spec.wait_timeout == 11
        assert resolve_profile(with_key).spec.wait_timeout == 22
        assert resolve_profile(with_key, wait_timeout=33).spec.wait_timeout == 33


def test_precedence_cluster_keys(tmp_path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text("kind: local\ncluster:\n  threads_per_worker: 2\n")
    with dask.config.set({"dte_dask.cluster.defaults.local": {"threads-per-worker": 1,
                                                              "n_workers": 5}}):
        r = resolve_profile(p)
        assert r.spec.cluster.threads_per_worker == 2  # profile > config
        assert r.spec.cluster.n_workers == 5           # config fills what the profile leaves
        r = resolve_profile(p, threads_per_worker=3, cluster={"n_workers": 4})
        assert r.spec.cluster.threads_per_worker == 3  # argument > profile
        assert r.spec.cluster.n_workers == 4           # argument > config


def test_config_default_profile_name() -> None:
    assert resolve_profile().name == "local"
    with dask.config.set({"dte_dask.cluster.profile": "slurm"}):
        assert resolve_profile().name == "slurm"


def test_dict_overrides_merge_key_by_key() -> None:
    r = resolve_profile("ssh", connect_options={"port": 2200}, security=False)
    assert r.spec.cluster.connect_options.port == 2200
    assert r.spec.cluster.worker_options.nthreads == 1  # untouched sibling keys stay
    assert not r.spec.security.tls


def test_security_object_override_is_used_as_is(tls_dir) -> None:
    sec = make_security({"tls": True, "directory": tls_dir})
    r = resolve_profile("slurm", security=sec)
    assert r.security is sec


# --------------------------------------------------------------------------------------------
# environment variables in profiles
# --------------------------------------------------------------------------------------------
def test_expand_env() -> None:
    env = {"A": "1", "B": "x"}
    tree = {"a": "${A}", "b": ["pre-${B}-post", "${C:-dflt}", "${C:-}"], "c": "$${A}", "d": 5}
    assert expand_env(tree, environ=env) == {"a": "1", "b": ["pre-x-post", "dflt", ""],
                                             "c": "${A}", "d": 5}
    with pytest.raises(ProfileError, match=r"b\[0\] uses \$\{NOPE\}"):
        expand_env({"b": ["${NOPE}"]}, environ=env)


def test_ssh_profile_takes_env(monkeypatch) -> None:
    monkeypatch.setenv("LOCAL_SSHD_HOST", "10.1.2.3")
    monkeypatch.setenv("LOCAL_SSHD_PORT", "2299")
    monkeypatch.setenv("LOCAL_SSHD_USER", "ci")
    monkeypatch.setenv("LOCAL_SSHD_KEY", "/k/id")
    monkeypatch.setenv("LOCAL_SSHD_KNOWN_HOSTS", "/k/known")
    c = resolve_profile("ssh").spec.cluster
    assert c.hosts == ["10.1.2.3"] * 3
    assert c.connect_options.model_dump(exclude_unset=True) == {
        "port": 2299, "username": "ci", "client_keys": ["/k/id"], "known_hosts": "/k/known"}
    for var in ("LOCAL_SSHD_USER", "LOCAL_SSHD_KEY", "LOCAL_SSHD_KNOWN_HOSTS"):
        monkeypatch.delenv(var)
    # empty values mean "not set": asyncssh then uses ~/.ssh (known_hosts is NOT disabled)
    assert resolve_profile("ssh").spec.cluster.connect_options.model_dump(
        exclude_unset=True) == {"port": 2299}


# --------------------------------------------------------------------------------------------
# slurm job scripts (no Slurm needed)
# --------------------------------------------------------------------------------------------
def test_slurm_numa_job_script(tmp_path, tls_dir, monkeypatch) -> None:
    _jobqueue()
    monkeypatch.setenv("OPENBLAS_DTE_TEST", "a b")
    cluster = make_cluster("slurm-numa", log_directory=os.fspath(tmp_path / "logs"),
                           security={"tls": True, "directory": tls_dir},
                           scheduler_options={"dashboard_address": "127.0.0.1:0"})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH -n 1", "#SBATCH --cpus-per-task=1", "#SBATCH --mem=2G",
                 "#SBATCH -t 00:10:00", "#SBATCH --nodes=1",
                 "#SBATCH --distribution=block:block",
                 f"#SBATCH -o {tmp_path / 'logs'}/dask-worker-%J.out"):
        assert line in script, (line, script)
    worker = [ln for ln in script.splitlines() if "distributed.cli.dask_worker" in ln]
    assert len(worker) == 1
    assert worker[0].startswith("numactl --cpunodebind=$DTE_DASK_NUMA_NODES "
                                "--membind=$DTE_DASK_NUMA_NODES ")
    assert "DTE_DASK_NUMA_NODES=$(numactl --show" in script
    # TLS: the worker gets the CA/cert/key and talks tls:// to the scheduler
    assert " tls://" in worker[0]
    assert f"--tls-ca-file {cert_paths(tls_dir).ca_file}" in worker[0]
    assert f"--tls-cert {cert_paths(tls_dir).cert}" in worker[0]
    # forward_env: OPENBLAS_* of this process is exported (quoted) for the workers
    assert "export OPENBLAS_DTE_TEST='a b'" in script
    # dte_dask.cluster.worker-env (glibc's mmap threshold) under the profile's own variables
    assert "export MALLOC_MMAP_THRESHOLD_=4194304" in script
    # the numactl prologue runs before the worker
    assert script.index("DTE_DASK_NUMA_NODES=$(") < script.index("distributed.cli.dask_worker")


def test_slurm_job_script_plain_and_overrides(tmp_path) -> None:
    _jobqueue()
    cluster = make_cluster("slurm", security=False, cores=4, memory="8GB", processes=2,
                           queue="short", account="proj", walltime="01:00:00",
                           job_extra_directives=["--exclusive"],
                           log_directory=os.fspath(tmp_path),
                           scheduler_options={"dashboard_address": "127.0.0.1:0"})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH -p short", "#SBATCH -A proj", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --mem=8G", "#SBATCH -t 01:00:00", "#SBATCH --exclusive"):
        assert line in script, (line, script)
    assert "numactl" not in script
    assert "--nworkers 2" in script
    assert "--tls-" not in script and " tcp://" in script


def test_slurm_numactl_modes() -> None:
    assert slurm_numactl("never", "auto", "py") == ("py", [])
    py, lines = slurm_numactl("always", "0,1", "py")
    assert py == "numactl --cpunodebind=0,1 --membind=0,1 py" and lines == []
    py, lines = slurm_numactl("auto", "1", "py")
    assert py == "$DTE_DASK_NUMACTL py"
    assert lines == ['if command -v numactl >/dev/null 2>&1; then DTE_DASK_NUMACTL="numactl '
                     '--cpunodebind=1 --membind=1"; else DTE_DASK_NUMACTL=""; fi']


@pytest.mark.skipif(shutil.which("numactl") is None, reason="numactl not installed")
def test_slurm_numa_nodes_line_runs_here() -> None:
    """The job-script line that picks the NUMA node(s) yields a list numactl accepts."""
    line = slurm.NODES_FROM_JOB
    out = subprocess.run(["bash", "-c", f"{line}; echo $DTE_DASK_NUMA_NODES"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out and all(p.isdigit() for p in out.split(","))
    subprocess.run(["numactl", f"--cpunodebind={out}", f"--membind={out}", "true"], check=True)


def test_every_kind_has_a_backend() -> None:
    from dte_dask.cluster.schema import KINDS

    for kind in KINDS:
        mod = backend(kind)
        assert all(callable(getattr(mod, f)) for f in ("start", "expected_workers", "scale", "timeout_hint"))
    with pytest.raises(ProfileError, match="unknown profile kind 'k8s'"):
        backend("k8s")


def test_expected_workers() -> None:
    assert expected_workers(resolve_profile("slurm", jobs=3, processes=2)) == 6
    assert expected_workers(resolve_profile("ssh", worker_options={"n_workers": 2})) == 4
    assert expected_workers(resolve_profile("local", n_workers=3)) == 3
    assert expected_workers(resolve_profile("local", n_workers=3, wait_for_workers=1)) == 1


# --------------------------------------------------------------------------------------------
# ssh numactl prefixes (no sshd needed)
# --------------------------------------------------------------------------------------------
def test_ssh_numa_remote_python() -> None:
    hosts = ["head", "n1", "n1", "n1", "n2", "n3"]
    probe = {"n1": (True, [0, 1]), "n2": (False, []), "n3": (True, [])}
    out = ssh_numa_remote_python(hosts, ["py"] * 6, probe, "auto")
    assert out == ["py",
                   "numactl --cpunodebind=0 --membind=0 py",
                   "numactl --cpunodebind=1 --membind=1 py",
                   "numactl --cpunodebind=0 --membind=0 py",
                   "py", "py"]
    with pytest.raises(ProfileError, match="host 'n2' has no numactl"):
        ssh_numa_remote_python(hosts, ["py"] * 6, probe, "always")


def test_remote_env() -> None:
    environ = {"OPENBLAS_CORETYPE": "Haswell", "OMP_X": "1", "HOME": "/h"}
    assert remote_env({"A": "1"}, ["OPENBLAS_*"], environ=environ) == {
        "OPENBLAS_CORETYPE": "Haswell", "A": "1"}
    assert remote_env({"OPENBLAS_CORETYPE": "Zen"}, ["OPENBLAS_*"], environ=environ) == {
        "OPENBLAS_CORETYPE": "Zen"}  # explicit env wins
    # base lies under both (dte_dask.cluster.worker-env)
    assert remote_env({"A": "1"}, ["OPENBLAS_*"], environ=environ,
                      base={"A": "0", "M": "4", "OPENBLAS_CORETYPE": "x"}) == {
        "A": "1", "M": "4", "OPENBLAS_CORETYPE": "Haswell"}
    assert env.env_prefix({"A": "x y", "B": "2"}) == "env A='x y' B=2 "
    assert env.env_prefix({}) == ""
    with pytest.raises(ProfileError, match="invalid environment variable"):
        remote_env({"BAD-NAME": "1"}, [], environ={})


def test_probe_parser() -> None:
    assert ssh.parse_probe("numactl=yes\nnode=1\nnode=0\n") == (True, [0, 1])
    assert ssh.parse_probe("numactl=no\n") == (False, [])


def test_probe_command_runs_here() -> None:
    out = subprocess.run(["sh", "-c", ssh.PROBE_CMD], capture_output=True, text=True,
                         check=True).stdout
    has, nodes = ssh.parse_probe(out)
    assert has == (shutil.which("numactl") is not None)
    if os.path.isdir("/sys/devices/system/node/node0"):
        assert 0 in nodes


# --------------------------------------------------------------------------------------------
# TLS files
# --------------------------------------------------------------------------------------------
BACKENDS = ["openssl"] + (["cryptography"] if cryptography_available() else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_generate_certificates(tmp_path, backend) -> None:
    if backend == "openssl" and shutil.which("openssl") is None:
        pytest.skip("openssl command not installed")
    paths = generate_certificates(tmp_path / "tls", hostnames=["node7", "10.9.8.7"],
                                  backend=backend)
    assert paths.exist()
    assert oct(os.stat(paths.key).st_mode & 0o777) == "0o600"
    assert oct(os.stat(paths.ca_key).st_mode & 0o777) == "0o600"
    # mutual TLS contexts as distributed builds them accept the files
    for purpose in (ssl.Purpose.SERVER_AUTH, ssl.Purpose.CLIENT_AUTH):
        ctx = ssl.create_default_context(purpose, cafile=paths.ca_file)
        ctx.load_cert_chain(paths.cert, paths.key)
    if shutil.which("openssl"):
        out = subprocess.run(["openssl", "verify", "-CAfile", paths.ca_file, paths.cert],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        text = subprocess.run(["openssl", "x509", "-in", paths.cert, "-noout", "-text"],
                              capture_output=True, text=True, check=True).stdout
        assert "DNS:node7" in text and "IP Address:10.9.8.7" in text
        assert "IP Address:127.0.0.1" in text
    # existing files are kept unless overwrite=True
    before = Path(paths.cert).read_bytes()
    assert generate_certificates(tmp_path / "tls", backend=backend) == paths
    assert Path(paths.cert).read_bytes() == before
    generate_certificates(tmp_path / "tls", backend=backend, overwrite=True)
    assert Path(paths.cert).read_bytes() != before


def test_make_security(tmp_path) -> None:
    assert make_security(None) is None
    assert make_security({"tls": False}) is None
    sec = make_security({"tls": True, "directory": os.fspath(tmp_path / "gen")})
    assert sec.require_encryption
    assert sec.tls_ca_file == cert_paths(tmp_path / "gen").ca_file
    assert sec.tls_worker_cert == sec.tls_scheduler_cert == sec.tls_client_cert
    with pytest.raises(ProfileError, match="dte-dask certs"):
        make_security({"tls": True, "directory": os.fspath(tmp_path / "none"),
                       "generate": False})


def test_tls_directory_default_from_config(tmp_path) -> None:
    with dask.config.set({"dte_dask.cluster.tls-directory": os.fspath(tmp_path / "cfg")}):
        sec = make_security(True)
    assert sec.tls_ca_file == os.fspath(tmp_path / "cfg" / "ca.pem")


def test_certs_cli(tmp_path) -> None:
    from click.testing import CliRunner

    from dte_dask.cli.certs import command

    runner = CliRunner()
    res = runner.invoke(command, ["--dir", os.fspath(tmp_path / "c"), "--hostname", "h1"])
    assert res.exit_code == 0, res.output
    assert "wrote TLS CA" in res.output and cert_paths(tmp_path / "c").exist()
    res = runner.invoke(command, ["--dir", os.fspath(tmp_path / "c")])
    assert res.exit_code == 0 and "already exist" in res.output
    res = runner.invoke(command, ["--dir", os.fspath(tmp_path / "c"), "--force",
                                  "--days", "2"])
    assert res.exit_code == 0 and "wrote TLS CA" in res.output


# --------------------------------------------------------------------------------------------
# local clusters (small, real)
# --------------------------------------------------------------------------------------------
def test_local_profile_binds_dashboard_to_loopback() -> None:
    spec = resolve_profile("local").spec
    host, _, port = spec.cluster.dashboard_address.rpartition(":")
    assert host == "127.0.0.1" and spec.cluster.host == "127.0.0.1"
    # same host, any free port (don't grab 8787 from whoever runs next to us)
    with connect("local", n_workers=1, threads_per_worker=1,
                 dashboard_address=f"{host}:0") as client:
        http = client.cluster.scheduler.http_server
        bound = {s.getsockname()[0] for s in http._sockets.values()}
        assert bound == {"127.0.0.1"}
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert client.submit(sum, [1, 2, 3]).result() == 6


def _start_environ() -> dict[str, str]:
    """The environment this process started with (not os.environ's later changes)."""
    raw = Path(f"/proc/{os.getpid()}/environ").read_bytes()
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def test_local_profile_env_reaches_the_workers() -> None:
    from dte_dask.cluster.local import worker_env

    with dask.config.set({"dte_dask.cluster.worker-env": {"DTE_DASK_TEST_BASE": "1", "DTE_DASK_TEST_ENV": "0"}}):
        with connect("local", n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0",
                     env={"DTE_DASK_TEST_ENV": "42"}) as client:
            # read in the worker: the config's, then the profile's, there when the process started
            seen = client.run(lambda: (os.environ.get("DTE_DASK_TEST_BASE"), os.environ.get("DTE_DASK_TEST_ENV"),
                                       _start_environ().get("DTE_DASK_TEST_ENV")))
            assert list(seen.values()) == [("1", "42", "42")]
    for k in ("DTE_DASK_TEST_BASE", "DTE_DASK_TEST_ENV"):  # the nanny, as distributed's does, set them here too
        os.environ.pop(k, None)
        threads = resolve_profile("local", processes=False).spec.cluster
        assert worker_env(threads) == {}  # threads share this process's environment
    # the shipped default: glibc's mmap threshold for the workers' temporaries
    assert worker_env(resolve_profile("local").spec.cluster)["MALLOC_MMAP_THRESHOLD_"] == "4194304"
    with pytest.raises(ProfileError, match="env needs processes: true"):
        resolve_profile("local", processes=False, env={"A": "1"})


def test_local_profile_uses_numa_plan() -> None:
    """Left to the plan, each NUMA node's CPUs are split into processes and threads as Dask's own
    LocalCluster splits a machine."""
    from distributed.deploy.utils import nprocesses_nthreads

    from dte_dask.cluster.local import default_workers
    from dte_dask.cluster.numa import plan_workers, read_topology

    topology = read_topology()
    nodes = topology.cpu_nodes
    assert default_workers(topology) == len(nodes) * nprocesses_nthreads(min(len(n.cpus) for n in nodes))[0]
    plans = plan_workers(topology, n_workers=default_workers(topology))
    with connect("local", dashboard_address="127.0.0.1:0") as client:
        info = client.scheduler_info()["workers"]
        assert len(info) == len(plans)
        assert sorted(w["nthreads"] for w in info.values()) == sorted(
            min(p.nthreads for p in plans) for _ in plans)


def test_local_tls_cluster(tls_dir) -> None:
    from distributed import Client

    with connect("local", n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0",
                 security={"tls": True, "directory": tls_dir}) as client:
        addr = client.scheduler.address
        assert addr.startswith("tls://127.0.0.1:")
        assert client.submit(lambda x: x + 1, 1).result() == 2
        # plain TCP to the TLS scheduler is refused
        with pytest.raises((OSError, TimeoutError)):
            Client(addr.replace("tls://", "tcp://"), timeout="2s", set_as_default=False)


def test_connect_closes_everything() -> None:
    from distributed.client import _get_global_client

    with connect("local", n_workers=1, threads_per_worker=1, processes=False,
                 dashboard_address="127.0.0.1:0") as client:
        assert _get_global_client() is client
        cluster = client.cluster
    assert client.status == "closed"
    assert cluster.status.name == "closed"
    assert _get_global_client() is None


def test_resolving_creates_no_client() -> None:
    from distributed.client import _get_global_client

    assert _get_global_client() is None
    for name in SHIPPED:
        resolve_profile(name)
    assert _get_global_client() is None


def test_ssh_unreachable_host_fails_early_with_a_clear_error() -> None:
    pytest.importorskip("asyncssh")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ProfileError, match=rf"cannot log in to 127.0.0.1:{port} over SSH"):
        make_cluster("ssh", hosts=["127.0.0.1"] * 2, connect_options={"port": port},
                     security=False)


def test_slurm_cluster_survives_a_dask_config_reset(tmp_path) -> None:
    """A reset of dask.config (dask.config.refresh(), distributed's test harness) drops
    dask-jobqueue's defaults; the slurm backend puts them back instead of KeyError: 'jobqueue'."""
    pytest.importorskip("dask_jobqueue")
    saved = {k: v for k, v in dask.config.config.items()}
    try:
        dask.config.config.pop("jobqueue", None)
        cluster = make_cluster("slurm", security=False, log_directory=str(tmp_path / "logs"))
        try:
            assert "#SBATCH" in cluster.job_script()
        finally:
            cluster.close()
    finally:
        dask.config.config.clear()
        dask.config.config.update(saved)
