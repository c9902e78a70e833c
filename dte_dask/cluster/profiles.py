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

Each kind is deployed by its own module (:data:`BACKENDS`: :mod:`dte_dask.cluster.local`,
:mod:`dte_dask.cluster.ssh`, :mod:`dte_dask.cluster.slurm`), which starts the cluster, counts the
workers it should bring and scales it; a new kind is a schema entry plus one such module.

Nothing here starts a cluster on import; :func:`connect` is the only place a ``Client`` is
created, and it closes both the client and the cluster on exit.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import os
import re
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
    ProfileError,
    validate_profile,
)

logger = logging.getLogger(__name__)

__all__ = [
    "PACKAGE_PROFILE_DIR", "ResolvedProfile", "profile_search_path", "available_profiles",
    "find_profile", "load_profile_file", "expand_env", "resolve_profile", "make_cluster",
    "expected_workers", "start_workers", "connect", "backend", "BACKENDS",
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
BACKENDS = {"local": "dte_dask.cluster.local", "ssh": "dte_dask.cluster.ssh", "slurm": "dte_dask.cluster.slurm"}
"""Profile kind -> the module that deploys it; each has ``start(resolved, security)``,
``expected_workers(cluster_section)``, ``scale(cluster, spec)`` and ``timeout_hint(spec)``."""


def backend(kind: str) -> Any:
    """The deployment module of a profile kind."""
    try:
        return importlib.import_module(BACKENDS[kind])
    except KeyError:
        raise ProfileError(f"unknown profile kind {kind!r}; known: {sorted(BACKENDS)}") from None


def expected_workers(resolved: ResolvedProfile) -> int:
    """Workers :func:`connect` waits for: ``wait_for_workers``, else ``adapt.minimum`` for an
    adaptive profile, else all the profile starts."""
    spec = resolved.spec
    if spec.wait_for_workers is not None:
        return int(spec.wait_for_workers)
    if spec.adapt is not None:
        return int(spec.adapt.minimum)
    return backend(resolved.kind).expected_workers(spec.cluster)


def start_workers(cluster: Any, resolved: ResolvedProfile) -> None:
    """Bring up the profile's workers: ``cluster.adapt(...)`` for an adaptive profile, else the
    backend's fixed scale (Slurm: submit ``jobs``)."""
    spec = resolved.spec
    if spec.adapt is None:
        backend(resolved.kind).scale(cluster, spec)
        return
    a = spec.adapt
    logger.info("adaptive scaling between %d and %d workers", a.minimum, a.maximum)
    cluster.adapt(minimum=a.minimum, maximum=a.maximum, interval=a.interval, wait_count=a.wait_count,
                  target_duration=a.target_duration)


def _security_for(resolved: ResolvedProfile) -> Any:
    if resolved.security is not None:
        return resolved.security
    from dte_dask.cluster.security import make_security

    return make_security(resolved.spec.security)


def make_cluster(profile_or_path: str | os.PathLike[str] | Mapping[str, Any] | ResolvedProfile
                 | None = None, **overrides: Any) -> Any:
    """Create (start) the cluster object of a profile, without a Client and without scaling.

    Useful to inspect it (``make_cluster("slurm-numa").job_script()``); call ``close()`` on it.
    :func:`connect` is the usual entry point.
    """
    resolved = (profile_or_path if isinstance(profile_or_path, ResolvedProfile)
                else resolve_profile(profile_or_path, **overrides))
    security = _security_for(resolved)
    return backend(resolved.kind).start(resolved, security)


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
        ``client.cluster`` is the cluster. Slurm jobs are submitted (``scale(jobs=...)``), or
        with ``adapt`` the cluster scales itself between its minimum and maximum, and
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
    deploy = backend(resolved.kind)
    cluster = make_cluster(resolved)
    try:
        start_workers(cluster, resolved)
        client = Client(cluster)
        try:
            n = expected_workers(resolved)
            if n:
                try:
                    client.wait_for_workers(n, timeout=spec.wait_timeout)
                except TimeoutError as exc:
                    have = len(client.scheduler_info().get("workers", {}))
                    hint = deploy.timeout_hint(spec)
                    raise TimeoutError(
                        f"cluster profile {resolved.name!r}: {have} of {n} workers joined "
                        f"within {spec.wait_timeout:g} s{hint}") from exc
            yield client
        finally:
            client.close()
    finally:
        cluster.close()
