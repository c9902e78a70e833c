"""Cluster profiles: YAML files describing a Dask deployment, and :func:`connect`.

A *profile* (``cluster_configs/<name>.yaml``; copies ship in ``dte_dask/cluster/profiles/``)
names a deployment kind and its options::

    kind: slurm
    security: {tls: true}
    cluster:
      cores: 1
      memory: 2GB
      jobs: 2

Settings are merged, the later winning, from

1. package defaults in ``dask.config`` (``dte_dask.cluster.wait-timeout`` and
   ``dte_dask.cluster.defaults.<kind>.<key>``, overridable the dask way:
   ``~/.config/dask/*.yaml``, ``DASK_DTE_DASK__...`` environment variables, ``dask.config.set``),
2. the profile file,
3. keyword arguments of :func:`connect` / :func:`resolve_profile` (``n_workers=4``;
   dictionaries are merged key by key, e.g. ``connect_options={"port": 2222}``),

and the result is validated by :mod:`dte_dask.cluster.schema` (unknown keys are errors).

Profile files are read with ``yaml.safe_load``; in string values ``${VAR}`` is replaced by the
environment variable ``VAR`` (an error if unset), ``${VAR:-default}`` falls back to
``default``, and ``$${...}`` stays a literal ``${...}``. Names resolve to ``<name>.yaml`` in,
first to last: the directories of ``dte_dask.cluster.search-path``, ``./cluster_configs``, the
packaged profiles.

Nothing here starts a cluster on import; :func:`connect` is the only place a ``Client`` is
created, and it closes both the client and the cluster on exit.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import fnmatch
import logging
import os
import re
import shlex
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.config
import yaml

from dte_dask import config as _config  # noqa: F401  (registers the dte_dask defaults)
from dte_dask.cluster.schema import (
    KINDS,
    TOP_LEVEL_KEYS,
    LocalProfile,
    ProfileError,
    SlurmProfile,
    SSHProfile,
    validate_profile,
)

logger = logging.getLogger(__name__)

__all__ = [
    "PACKAGE_PROFILE_DIR", "ResolvedProfile", "profile_search_path", "available_profiles",
    "find_profile", "load_profile_file", "expand_env", "resolve_profile", "make_cluster",
    "expected_workers", "connect", "ssh_numa_remote_python", "slurm_numactl", "remote_env",
]

PACKAGE_PROFILE_DIR = Path(__file__).with_name("profiles")
"""Profiles shipped inside the package (copies of the repository's ``cluster_configs``)."""

_ENV_RE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_PATH_SUFFIXES = (".yaml", ".yml")


# --------------------------------------------------------------------------------------------
# finding and reading profiles
# --------------------------------------------------------------------------------------------
def profile_search_path() -> list[Path]:
    """Directories searched for ``<name>.yaml``, first match wins."""
    extra = dask.config.get("dte_dask.cluster.search-path", default=None) or []
    if isinstance(extra, str):
        extra = [p for p in extra.split(os.pathsep) if p]
    dirs = [Path(os.path.expanduser(str(p))) for p in extra]
    dirs.append(Path.cwd() / "cluster_configs")
    dirs.append(PACKAGE_PROFILE_DIR)
    return dirs


def available_profiles() -> dict[str, Path]:
    """Profile name -> file, over the whole search path (earlier directories win)."""
    found: dict[str, Path] = {}
    for d in profile_search_path():
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if p.suffix in _PATH_SUFFIXES and p.is_file():
                found.setdefault(p.stem, p)
    return found


def find_profile(name_or_path: str | os.PathLike[str]) -> Path:
    """The file of a profile given by name (``"slurm"``) or path (``"my/cluster.yaml"``).

    Raises
    ------
    ProfileError
        If no such file exists (the message lists the directories searched and the names
        available).
    """
    text = os.fspath(name_or_path)
    looks_like_path = (isinstance(name_or_path, os.PathLike) or os.sep in text
                       or text.endswith(_PATH_SUFFIXES))
    if looks_like_path:
        p = Path(os.path.expanduser(text))
        if p.is_file():
            return p
        raise ProfileError(f"cluster profile file {text!r} does not exist")
    for d in profile_search_path():
        for suffix in _PATH_SUFFIXES:
            p = d / f"{text}{suffix}"
            if p.is_file():
                return p
    raise ProfileError(
        f"no cluster profile named {text!r}; searched "
        f"{[os.fspath(d) for d in profile_search_path()]}; available: "
        f"{sorted(available_profiles())}")


def expand_env(value: Any, where: str = "<profile>", environ: Mapping[str, str] | None = None
               ) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a YAML tree.

    A string that is exactly one ``${...}`` keeps the substituted text as a string (pydantic
    turns ``"2222"`` into an int where the schema wants one). ``$${`` is a literal ``${``.

    Raises
    ------
    ProfileError
        If a ``${VAR}`` without default names an unset variable.
    """
    env = os.environ if environ is None else environ

    def sub(s: str, path: str) -> str:
        def repl(m: re.Match[str]) -> str:
            if m.group(0) == "$${":
                return "${"
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ProfileError(f"{where}: {path} uses ${{{name}}} but the environment variable "
                               f"{name} is not set (write ${{{name}:-default}} for a fallback)")
        return _ENV_RE.sub(repl, s)

    def walk(v: Any, path: str) -> Any:
        if isinstance(v, str):
            return sub(v, path)
        if isinstance(v, dict):
            return {k: walk(x, f"{path}.{k}" if path else str(k)) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x, f"{path}[{i}]") for i, x in enumerate(v)]
        return v

    return walk(value, "")


def load_profile_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a profile file (``yaml.safe_load``) and expand environment variables.

    Raises
    ------
    ProfileError
        If the file is not valid YAML or not a mapping.
    """
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"cluster profile {os.fspath(p)} is not valid YAML: {exc}") from None
    except OSError as exc:
        raise ProfileError(f"cannot read cluster profile {os.fspath(p)}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError(f"cluster profile {os.fspath(p)} must be a mapping, "
                           f"got {type(data).__name__}")
    return expand_env(data, where=os.fspath(p))


# --------------------------------------------------------------------------------------------
# merging
# --------------------------------------------------------------------------------------------
def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _underscore_keys(d: Any) -> Any:
    """dask.config spells keys with hyphens; profiles use the Python (underscore) names."""
    if isinstance(d, Mapping):
        return {str(k).replace("-", "_"): _underscore_keys(v) for k, v in d.items()}
    return d


def _config_defaults(kind: str) -> dict[str, Any]:
    cfg = dask.config.get("dte_dask.cluster", default={}) or {}
    out: dict[str, Any] = {}
    timeout = cfg.get("wait-timeout", cfg.get("wait_timeout"))
    if timeout is not None:
        out["wait_timeout"] = timeout
    defaults = (cfg.get("defaults") or {}).get(kind) or {}
    if defaults:
        out["cluster"] = _underscore_keys(defaults)
    return out


def _nest_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword overrides -> profile shape: profile-level keys stay, the rest go to ``cluster``."""
    top: dict[str, Any] = {}
    cluster: dict[str, Any] = {}
    for k, v in overrides.items():
        if k == "cluster":
            if not isinstance(v, Mapping):
                raise ProfileError(f"override cluster= must be a mapping, got {type(v).__name__}")
            cluster = _deep_merge(cluster, v)
        elif k in TOP_LEVEL_KEYS:
            top[k] = v
        else:
            cluster[k] = v
    if cluster:
        top["cluster"] = cluster
    return top


@dataclass(frozen=True)
class ResolvedProfile:
    """A validated profile and where it came from.

    Attributes
    ----------
    name : str
        Profile name (file stem), ``"<inline>"`` for a mapping.
    source : str or None
        The file read, ``None`` for an inline mapping.
    spec : LocalProfile | SSHProfile | SlurmProfile
        The validated settings (defaults < profile < overrides).
    security : distributed.security.Security or None
        Set only when a ``Security`` object was passed as an override (used as is).
    """

    name: str
    source: str | None
    spec: Any
    security: Any = field(default=None, compare=False)

    @property
    def kind(self) -> str:
        """``"local"``, ``"ssh"`` or ``"slurm"``."""
        return str(self.spec.kind)


def resolve_profile(profile_or_path: str | os.PathLike[str] | Mapping[str, Any] | None = None,
                    **overrides: Any) -> ResolvedProfile:
    """Merge package defaults, a profile and keyword overrides, and validate the result.

    Parameters
    ----------
    profile_or_path : str, path or mapping, optional
        Profile name, file, or an inline profile mapping. Default:
        ``dask.config["dte_dask.cluster.profile"]`` (``local``).
    **overrides
        Profile-level keys (``kind``, ``security``, ``wait_timeout``, ``wait_for_workers``,
        ``description``) or keys of the ``cluster`` section (``n_workers=2``,
        ``hosts=[...]``). ``security`` may be a bool, a mapping or a ready
        ``distributed.security.Security`` object.

    Returns
    -------
    ResolvedProfile

    Raises
    ------
    ProfileError
        Profile not found, invalid YAML, or a key/value the schema rejects.
    """
    security_obj = None
    overrides = dict(overrides)
    sec = overrides.get("security")
    if sec is not None and not isinstance(sec, (bool, Mapping)):
        from distributed.security import Security

        if not isinstance(sec, Security):
            raise ProfileError(f"security= must be a bool, a mapping or a "
                               f"distributed.security.Security, got {type(sec).__name__}")
        security_obj = overrides.pop("security")
    elif isinstance(sec, bool):
        overrides["security"] = {"tls": sec}

    if profile_or_path is None:
        profile_or_path = dask.config.get("dte_dask.cluster.profile", default="local") or "local"
    if isinstance(profile_or_path, Mapping):
        name, source = "<inline>", None
        raw = expand_env(dict(profile_or_path), where="<inline profile>")
    else:
        path = find_profile(profile_or_path)
        name, source = path.stem, os.fspath(path)
        raw = load_profile_file(path)

    over = _nest_overrides(overrides)
    kind = over.get("kind", raw.get("kind"))
    if kind not in KINDS:
        raise ProfileError(f"invalid cluster profile {source or name}: 'kind' must be one of "
                           f"{list(KINDS)}, got {kind!r}")
    merged = _deep_merge(_deep_merge(_config_defaults(kind), raw), over)
    where = f"{name!r} ({source})" if source else repr(name)
    spec = validate_profile(merged, where=where)
    return ResolvedProfile(name=name, source=source, spec=spec, security=security_obj)


# --------------------------------------------------------------------------------------------
# building clusters
# --------------------------------------------------------------------------------------------
def expected_workers(resolved: ResolvedProfile) -> int:
    """Workers :func:`connect` waits for: ``wait_for_workers`` or all the profile starts."""
    spec = resolved.spec
    if spec.wait_for_workers is not None:
        return int(spec.wait_for_workers)
    c = spec.cluster
    if isinstance(spec, LocalProfile):
        return int(c.n_workers) if c.n_workers else len(_local_layout(c)[0] or [None])
    if isinstance(spec, SSHProfile):
        return (len(c.hosts) - 1) * int(c.worker_options.n_workers or 1)
    if isinstance(spec, SlurmProfile):
        return int(c.jobs) * int(c.processes)
    raise ProfileError(f"unknown profile kind {spec.kind!r}")  # pragma: no cover


def _security_for(resolved: ResolvedProfile) -> Any:
    if resolved.security is not None:
        return resolved.security
    from dte_dask.cluster.security import make_security

    return make_security(resolved.spec.security)


def _security_config(sec: Any) -> dict[str, Any]:
    """``dask.config`` equivalent of a Security object (inherited by remote SSH processes)."""
    cfg: dict[str, Any] = {"distributed.comm.require-encryption": bool(sec.require_encryption)}
    if sec.tls_ca_file:
        cfg["distributed.comm.tls.ca-file"] = sec.tls_ca_file
    for role in ("scheduler", "worker", "client"):
        cert = getattr(sec, f"tls_{role}_cert", None)
        key = getattr(sec, f"tls_{role}_key", None)
        if cert:
            cfg[f"distributed.comm.tls.{role}.cert"] = cert
        if key:
            cfg[f"distributed.comm.tls.{role}.key"] = key
    for name in ("ca-file", "scheduler.cert", "worker.cert", "client.cert"):
        v = cfg.get(f"distributed.comm.tls.{name}")
        if isinstance(v, str) and "-----BEGIN" in v:
            logger.warning("TLS material held in memory is handed to remote SSH processes "
                           "through their command line; prefer certificate files")
            break
    return cfg


def _local_layout(c: Any) -> tuple[list[Any] | None, int | None, Any]:
    """NUMA plans, threads per worker and memory limit for a LocalSpec."""
    from dte_dask.cluster.numa import TopologyError, plan_workers, read_topology

    try:
        plans = plan_workers(read_topology(), n_workers=c.n_workers,
                             threads_per_worker=c.threads_per_worker,
                             memory_limit=c.memory_limit)
    except TopologyError as exc:
        if c.pin_cpus:
            raise ProfileError(f"pin_cpus: true but the workers do not fit the NUMA "
                               f"topology: {exc}") from None
        logger.info("no NUMA plan for this layout (%s); using LocalCluster defaults", exc)
        return None, c.threads_per_worker, c.memory_limit
    threads = c.threads_per_worker or max(1, min(p.nthreads for p in plans))
    memory = c.memory_limit if c.memory_limit is not None else plans[0].memory_limit
    return plans, threads, memory


def _make_local(resolved: ResolvedProfile, security: Any) -> Any:
    from distributed import LocalCluster

    c = resolved.spec.cluster
    plans, threads, memory = _local_layout(c)
    n_workers = c.n_workers or (len(plans) if plans else None)
    kwargs: dict[str, Any] = {
        "n_workers": n_workers,
        "threads_per_worker": threads,
        "processes": c.processes,
        "host": c.host,
        "scheduler_port": c.scheduler_port,
        "dashboard_address": c.dashboard_address,
    }
    if not c.processes and security is None:
        # threads only: distributed uses the inproc:// transport, which has no host or port
        del kwargs["host"], kwargs["scheduler_port"]
    if memory is not None:
        kwargs["memory_limit"] = memory
    if c.local_directory:
        kwargs["local_directory"] = os.path.expanduser(c.local_directory)
    if security is not None:
        kwargs["security"] = security
        kwargs["protocol"] = "tls://"
    if c.pin_cpus and plans:
        from dte_dask.cluster.numa import PinCPUPlugin

        kwargs["plugins"] = {PinCPUPlugin.from_plans(plans)}
    logger.info("starting LocalCluster %s", {k: v for k, v in kwargs.items() if k != "security"})
    return LocalCluster(**kwargs)


# --- ssh ---------------------------------------------------------------------------------------

def remote_env(env: Mapping[str, str], forward_env: list[str] | tuple[str, ...],
               environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables to set in remote processes: ``forward_env`` matches of this process's
    environment (glob patterns such as ``OPENBLAS_*``), then ``env`` (which wins).

    Raises
    ------
    ProfileError
        If a variable name is not a valid shell identifier.
    """
    source = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for pattern in forward_env:
        for name in sorted(source):
            if fnmatch.fnmatchcase(name, pattern):
                out[name] = source[name]
    out.update({str(k): str(v) for k, v in env.items()})
    bad = [k for k in out if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
    if bad:
        raise ProfileError(f"invalid environment variable name(s) {bad}")
    return out


def _env_prefix(env: Mapping[str, str]) -> str:
    """``env A=1 B=2 `` (shell-quoted), or ``""``."""
    if not env:
        return ""
    return "env " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " "

_PROBE_CMD = (
    "if command -v numactl >/dev/null 2>&1; then echo numactl=yes; else echo numactl=no; fi; "
    "for d in /sys/devices/system/node/node[0-9]*; do "
    "[ -r \"$d/cpulist\" ] && [ -n \"$(tr -d '[:space:]' < \"$d/cpulist\")\" ] "
    "&& echo \"node=${d##*node}\"; done; true"
)


def _parse_probe(text: str) -> tuple[bool, list[int]]:
    has = "numactl=yes" in text
    nodes = sorted(int(line[5:]) for line in text.splitlines()
                   if line.startswith("node=") and line[5:].strip().isdigit())
    return has, nodes


def _probe_hosts(hosts: list[str], options: list[dict[str, Any]]
                 ) -> dict[str, tuple[bool, list[int]]]:
    """``{host: (numactl on PATH, NUMA nodes with CPUs)}`` over SSH, one connection per host."""
    import asyncssh

    async def one(host: str, opts: dict[str, Any]) -> tuple[str, tuple[bool, list[int]]]:
        try:
            async with asyncssh.connect(host, **opts) as conn:
                r = await conn.run(_PROBE_CMD, check=False)
        except (OSError, asyncssh.Error) as exc:
            port = opts.get("port", 22)
            raise ProfileError(f"cannot log in to {host}:{port} over SSH to look for numactl "
                               f"({type(exc).__name__}: {exc}); check connect_options, or "
                               "set numactl: never") from exc
        return host, _parse_probe(str(r.stdout or ""))

    async def all_hosts() -> dict[str, tuple[bool, list[int]]]:
        seen: dict[str, dict[str, Any]] = {}
        for h, o in zip(hosts, options, strict=False):
            seen.setdefault(h, o)
        res = await asyncio.gather(*(one(h, o) for h, o in seen.items()))
        return dict(res)

    # a fresh event loop in a helper thread: callers may already be inside one
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, all_hosts()).result()


def ssh_numa_remote_python(hosts: list[str], remote_python: list[str],
                           probe: Mapping[str, tuple[bool, list[int]]], mode: str) -> list[str]:
    """Per-host ``remote_python`` with a numactl prefix for the worker entries.

    ``hosts[0]`` (the scheduler) is left alone. The k-th worker entry of a host is bound to
    that host's k-th NUMA node (round robin) with ``numactl --cpunodebind=N --membind=N``.

    Raises
    ------
    ProfileError
        ``mode="always"`` and a worker host has no numactl.
    """
    out = [remote_python[0]]
    seen: dict[str, int] = {}
    for host, py in zip(hosts[1:], remote_python[1:], strict=False):
        has, nodes = probe.get(host, (False, []))
        if mode == "always" and not has:
            raise ProfileError(f"numactl: always, but host {host!r} has no numactl on PATH "
                               "(apt-get install numactl, or use numactl: auto)")
        if has and nodes:
            k = seen.get(host, 0)
            seen[host] = k + 1
            node = nodes[k % len(nodes)]
            out.append(f"numactl --cpunodebind={node} --membind={node} {py}")
        else:
            out.append(py)
    return out


def _expand_connect(opts: dict[str, Any]) -> dict[str, Any]:
    out = dict(opts)
    for k in ("client_keys", "config"):
        if out.get(k):
            out[k] = [os.path.expanduser(p) for p in out[k]]
    for k in ("known_hosts", "agent_path"):
        if isinstance(out.get(k), str):
            out[k] = os.path.expanduser(out[k])
    return out


def _make_ssh(resolved: ResolvedProfile, security: Any) -> Any:
    try:
        import asyncssh  # noqa: F401
        from distributed.deploy.ssh import SSHCluster
    except ImportError as exc:
        raise ProfileError("SSH profiles need asyncssh: pip install 'dte_dask[ssh]' "
                           f"(or asyncssh) ({exc})") from None
    c = resolved.spec.cluster
    hosts = list(c.hosts)
    if isinstance(c.connect_options, list):
        connect = [_expand_connect(o.model_dump(exclude_unset=True)) for o in c.connect_options]
    else:
        connect = [_expand_connect(c.connect_options.model_dump(exclude_unset=True))] * len(hosts)
    if isinstance(c.remote_python, list):
        pythons = list(c.remote_python)
    else:
        pythons = [c.remote_python or sys.executable] * len(hosts)
    if c.numactl != "never":
        probe = _probe_hosts(hosts[1:], connect[1:])
        pythons = ssh_numa_remote_python(hosts, pythons, probe, c.numactl)
    prefix = _env_prefix(remote_env(c.env, c.forward_env))
    pythons = [prefix + py for py in pythons]
    worker_options = c.worker_options.model_dump(exclude_none=True)
    scheduler_options = c.scheduler_options.model_dump(exclude_none=True)
    if security is not None:
        scheduler_options.setdefault("protocol", "tls")
    logger.info("starting SSHCluster hosts=%s remote_python=%s", hosts, pythons)
    cfg = _security_config(security) if security is not None else {}
    # the remote scheduler and workers inherit this process's dask config
    # (DASK_INTERNAL_INHERIT_CONFIG), which is how they learn the TLS files
    with dask.config.set(cfg):
        return SSHCluster(
            hosts,
            connect_options=connect,
            worker_options=worker_options,
            scheduler_options=scheduler_options,
            worker_class=c.worker_class,
            remote_python=pythons,
            security=security,
        )


# --- slurm -------------------------------------------------------------------------------------
_NODES_FROM_JOB = ("DTE_DASK_NUMA_NODES=$(numactl --show 2>/dev/null | awk '/^nodebind:/ "
                   "{$1=\"\"; sub(/^ +/, \"\"); sub(/ +$/, \"\"); gsub(/ +/, \",\"); print}'); "
                   "DTE_DASK_NUMA_NODES=${DTE_DASK_NUMA_NODES:-0}")


def slurm_numactl(mode: str, numa_nodes: str, python: str) -> tuple[str, list[str]]:
    """``(python, extra prologue lines)`` putting numactl in front of a Slurm worker.

    ``always``: ``numactl --cpunodebind=N --membind=N python``; ``auto``: the same only if the
    compute node has numactl (decided by a prologue line); ``never``: unchanged. With
    ``numa_nodes="auto"`` N is computed in the job from the CPUs the job may use.
    """
    if mode == "never":
        return python, []
    lines: list[str] = []
    if numa_nodes == "auto":
        nodes = "$DTE_DASK_NUMA_NODES"
        lines.append(_NODES_FROM_JOB if mode == "always" else
                     f"if command -v numactl >/dev/null 2>&1; then {_NODES_FROM_JOB}; fi")
    else:
        nodes = numa_nodes
    prefix = f"numactl --cpunodebind={nodes} --membind={nodes}"
    if mode == "always":
        return f"{prefix} {python}", lines
    lines.append(f"if command -v numactl >/dev/null 2>&1; then DTE_DASK_NUMACTL=\"{prefix}\"; "
                 "else DTE_DASK_NUMACTL=\"\"; fi")
    return f"$DTE_DASK_NUMACTL {python}", lines


def _make_slurm(resolved: ResolvedProfile, security: Any) -> Any:
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:
        raise ProfileError("Slurm profiles need dask-jobqueue: pip install 'dte_dask[slurm]' "
                           f"(or dask-jobqueue) ({exc})") from None
    c = resolved.spec.cluster
    kwargs = c.model_dump(exclude={"jobs", "numactl", "numa_nodes", "scheduler_options",
                                   "python", "job_script_prologue", "env", "forward_env"},
                          exclude_none=True)
    for k in ("local_directory", "log_directory", "shared_temp_directory"):
        if k in kwargs:
            kwargs[k] = os.path.expanduser(kwargs[k])
    python = c.python or shlex.quote(sys.executable)
    python, extra_lines = slurm_numactl(c.numactl, c.numa_nodes, python)
    kwargs["python"] = python
    exports = [f"export {k}={shlex.quote(v)}"
               for k, v in remote_env(c.env, c.forward_env).items()]
    kwargs["job_script_prologue"] = exports + list(c.job_script_prologue) + extra_lines
    scheduler_options = c.scheduler_options.model_dump(exclude_none=True)
    scheduler_options.pop("protocol", None)  # jobqueue picks tls:// when security is given
    kwargs["scheduler_options"] = scheduler_options
    if security is not None:
        kwargs["security"] = security
    logger.info("starting SLURMCluster %s", {k: v for k, v in kwargs.items() if k != "security"})
    return SLURMCluster(**kwargs)


def make_cluster(profile_or_path: str | os.PathLike[str] | Mapping[str, Any] | ResolvedProfile
                 | None = None, **overrides: Any) -> Any:
    """Create (start) the cluster object of a profile, without a Client and without scaling.

    Useful to inspect it (``make_cluster("slurm-numa").job_script()``); call ``close()`` on it.
    :func:`connect` is the usual entry point.
    """
    resolved = (profile_or_path if isinstance(profile_or_path, ResolvedProfile)
                else resolve_profile(profile_or_path, **overrides))
    security = _security_for(resolved)
    kind = resolved.kind
    if kind == "local":
        return _make_local(resolved, security)
    if kind == "ssh":
        return _make_ssh(resolved, security)
    if kind == "slurm":
        return _make_slurm(resolved, security)
    raise ProfileError(f"unknown profile kind {kind!r}")  # pragma: no cover


@contextlib.contextmanager
def connect(profile_or_path: str | os.PathLike[str] | Mapping[str, Any] | None = None,
            **overrides: Any) -> Iterator[Any]:
    """Start the cluster of a profile and yield a connected ``distributed.Client``.

    Parameters
    ----------
    profile_or_path : str, path or mapping, optional
        Profile name (``"local"``, ``"ssh"``, ``"slurm"``, ``"slurm-numa"``), file or inline
        mapping; default ``dask.config["dte_dask.cluster.profile"]``.
    **overrides
        Win over the profile, which wins over ``dask.config`` defaults (see
        :func:`resolve_profile`).

    Yields
    ------
    distributed.Client
        Set as the default scheduler while the block runs (so ``dte_dask.att_gt`` uses it);
        ``client.cluster`` is the cluster. Slurm jobs are submitted (``scale(jobs=...)``) and
        the expected workers awaited before the block starts.

    Raises
    ------
    ProfileError
        Invalid profile or missing optional dependency.
    TimeoutError
        The workers did not all join within ``wait_timeout`` seconds.

    Examples
    --------
    >>> with connect("local", n_workers=2) as client:          # doctest: +SKIP
    ...     res = dte_dask.att_gt(df, outcome="lemp", ...)
    """
    from distributed import Client

    resolved = resolve_profile(profile_or_path, **overrides)
    spec = resolved.spec
    cluster = make_cluster(resolved)
    try:
        if isinstance(spec, SlurmProfile) and spec.cluster.jobs:
            cluster.scale(jobs=spec.cluster.jobs)
        client = Client(cluster)
        try:
            n = expected_workers(resolved)
            if n:
                try:
                    client.wait_for_workers(n, timeout=spec.wait_timeout)
                except TimeoutError as exc:
                    have = len(client.scheduler_info().get("workers", {}))
                    hint = ""
                    if isinstance(spec, SlurmProfile):
                        hint = ("; check `squeue` (jobs pending for resources?) and the job "
                                f"logs in {spec.cluster.log_directory or 'the submit directory'}")
                    raise TimeoutError(
                        f"cluster profile {resolved.name!r}: {have} of {n} workers joined "
                        f"within {spec.wait_timeout:g} s{hint}") from exc
            yield client
        finally:
            client.close()
    finally:
        cluster.close()
