"""Cluster deployment: profiles and :func:`connect`, TLS, NUMA topology and worker pinning.

``from dte_dask.cluster import connect`` is cheap: the submodules load on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "connect": "dte_dask.cluster.profiles",
    "make_cluster": "dte_dask.cluster.profiles",
    "resolve_profile": "dte_dask.cluster.profiles",
    "available_profiles": "dte_dask.cluster.profiles",
    "ProfileError": "dte_dask.cluster.schema",
    "generate_certificates": "dte_dask.cluster.security",
    "make_security": "dte_dask.cluster.security",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dte_dask.cluster' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | {"numa", "profiles", "schema", "security"})
