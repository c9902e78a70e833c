"""Package defaults under ``dask.config["dte_dask"]``.

Defaults ship in ``dte_dask.yaml``; users override them with dask's usual mechanisms (a YAML file in
``~/.config/dask/``, ``DASK_DTE_DASK__RNG_BLOCK_SIZE=...``, or ``dask.config.set``). Nothing is
written to disk.
"""
from __future__ import annotations

import pathlib
from typing import Any

import dask.config
import yaml

_DEFAULTS_FILE = pathlib.Path(__file__).with_name("dte_dask.yaml")

with _DEFAULTS_FILE.open() as _f:
    DEFAULTS: dict[str, Any] = yaml.safe_load(_f)

dask.config.update_defaults(DEFAULTS)


def _default(key: str) -> Any:
    node: Any = DEFAULTS["dte_dask"]
    for part in key.split("."):
        node = node[part]
    return node


def get(key: str, override: Any = None) -> Any:
    """Return ``override`` if given, else ``dask.config["dte_dask.<key>"]``.

    Falls back to the shipped default when the key is missing or None (e.g. after a test harness
    or a user reset dask's configuration; no shipped default is None).
    """
    if override is not None:
        return override
    value = dask.config.get(f"dte_dask.{key}", default=None)
    return _default(key) if value is None else value
