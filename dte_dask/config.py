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


def get(key: str, override: Any = None) -> Any:
    """Return ``override`` if given, else ``dask.config["dte_dask.<key>"]``."""
    if override is not None:
        return override
    return dask.config.get(f"dte_dask.{key}")
