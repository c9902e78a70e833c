"""Writing a simulated panel as partitioned parquet (local or object storage): :func:`write_panel`."""
from __future__ import annotations

import contextlib
import json
import os
import time as _time
from collections.abc import Mapping
from typing import Any

import numpy as np

from dte_dask.exceptions import SpecError
from dte_dask.simulate.design import SIM_DEFAULTS, SIM_OPTIONS, Design, resolve_design
from dte_dask.simulate.generate import (
    columns_of,
    options_of,
    partition_blocks,
    simulate_partition,
    truth_of,
)

# ----------------------------------------------------------------------------- writing

_OWN_FILES = ("_truth.csv", "_dte_dask.json")


def _write_partition(index: int, blocks: tuple[int, int], design: Design, out_dir: str, fs: Any = None) -> dict:
    """Simulate one partition and write it as ``part-{index:05d}.parquet``, one row group.

    ``fs``: the fsspec filesystem of an object-store ``out_dir`` (then a single PUT, atomic there).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    df = simulate_partition(blocks, design)
    units = df["unit"].to_numpy()
    first = np.r_[True, units[1:] != units[:-1]] if len(units) else np.zeros(0, bool)
    gs, counts = np.unique(df["group"].to_numpy()[first], return_counts=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    del df
    name = f"part-{index:05d}.parquet"
    if fs is not None:
        with fs.open(f"{out_dir}/{name}", "wb") as fh:
            pq.write_table(table, fh, row_group_size=max(table.num_rows, 1))
    else:
        tmp = os.path.join(out_dir, f"_tmp-{name}")
        pq.write_table(table, tmp, row_group_size=max(table.num_rows, 1))
        os.replace(tmp, os.path.join(out_dir, name))
    return {"file": name, "rows": int(table.num_rows), "unit_min": int(units[0]),
            "unit_max": int(units[-1]),
            "cohort_counts": {int(g): int(c) for g, c in zip(gs, counts)}}


class _LocalDir:
    """``os`` calls on a local output directory (the object-store twin is :class:`_FsDir`)."""

    fs = None

    def __init__(self, path: str) -> None:
        self.path = path

    def makedirs(self) -> None:
        os.makedirs(self.path, exist_ok=True)

    def listdir(self) -> list[str]:
        return sorted(os.listdir(self.path))

    def remove(self, name: str) -> None:
        os.remove(os.path.join(self.path, name))

    def open(self, name: str, mode: str, **kw: Any) -> Any:
        return open(os.path.join(self.path, name), mode, **kw)

    def errors(self) -> Any:
        return contextlib.nullcontext()


class _FsDir:
    """An output "directory" (prefix) in object storage, through fsspec."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None) -> None:
        from dte_dask import storage

        self.url = url.rstrip("/")
        self.fs, path = storage.filesystem(self.url, storage_options)
        self.path = path.rstrip("/")
        b = storage.bucket(self.fs, self.path)
        if b is not None:
            with self.errors():
                if not storage.bucket_exists(self.fs, b):
                    raise storage.missing(self.url, self.fs)

    def makedirs(self) -> None:
        pass  # object stores have no directories: a prefix exists once an object is under it

    def listdir(self) -> list[str]:
        with self.errors():
            if not self.fs.exists(self.path):
                return []
            if not self.fs.isdir(self.path):
                raise SpecError(f"output {self.url!r} is an object, not a prefix")
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path, detail=False, refresh=True))

    def remove(self, name: str) -> None:
        with self.errors():
            self.fs.rm(f"{self.path}/{name}")

    def open(self, name: str, mode: str, **kw: Any) -> Any:
        return self.fs.open(f"{self.path}/{name}", mode, **kw)

    def errors(self) -> Any:
        from dte_dask import storage

        return storage.errors(self.url, self.fs, action="writing")


def _prepare_dir(out_dir: str | _LocalDir | _FsDir, overwrite: bool) -> None:
    target = _LocalDir(out_dir) if isinstance(out_dir, str) else out_dir
    out_dir = getattr(target, "url", target.path)
    target.makedirs()
    existing = target.listdir()
    if not existing:
        return
    if not overwrite:
        raise SpecError(
            f"output directory {out_dir!r} is not empty ({len(existing)} entries); "
            "pass overwrite=True (CLI: --overwrite) to replace a previous simulation"
        )
    for f in existing:
        if (f.startswith(("part-", "_tmp-part-")) and f.endswith(".parquet")) or f in _OWN_FILES:
            target.remove(f)
    left = target.listdir()
    if left:
        raise SpecError(
            f"output directory {out_dir!r} holds files that write_panel did not write: "
            f"{sorted(left)[:5]}; choose an empty directory"
        )


def write_panel(
    out_dir: str | os.PathLike,
    n_units: int,
    n_periods: int | None = None,
    *,
    overwrite: bool = False,
    scheduler: Any = None,
    num_workers: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Simulate a panel and write it as a parquet directory, one file per partition.

    Each partition is simulated and written inside its own dask task, so the driver never holds
    more than small per-file statistics. Layout of ``out_dir``::

        part-00000.parquet ...  whole units, a contiguous sorted unit range per file, rows sorted
                                by (unit, time), a single row group per file
        _truth.csv              the truth table (group, time, event_time, att)
        _dte_dask.json          columns, n_units, n_periods, seed, options, files with unit ranges,
                                "partitioned_by": "unit"

    The underscore-prefixed side files are ignored by parquet dataset discovery.
    ``dask.dataframe.read_parquet(out_dir)`` returns one partition per file in file order: with a
    single row group per file the default ``split_row_groups="infer"`` cannot split a file and
    files are never aggregated (``aggregate_files`` is off). Caveat: when only a *subset* of columns
    is read, dask-expr may fuse neighbouring files into one partition (``FusedIO``); partitions
    then still hold whole, consecutive unit ranges. For an exact file = partition mapping whatever
    the columns, use ``dask.dataframe.from_map(pandas.read_parquet, files, columns=...)``.

    Parameters
    ----------
    out_dir : str or path
        Target directory; created if missing. Must be empty unless ``overwrite``. An object-store
        URL (``"s3://bucket/prefix"``, any fsspec URL) gets the same objects under that prefix;
        its bucket must exist.
    n_units, n_periods, **options
        As for :func:`simulate_panel` (``cohorts``, ``seed``, ``npartitions``, ``preset``...).
    overwrite : bool, default False
        Replace the files of an earlier simulation in ``out_dir`` (other files make it fail).
    scheduler, num_workers : optional
        Passed to ``dask.compute`` (default: the current scheduler, threads without a Client).
        Peak memory is about ``num_workers`` partitions in flight (~0.6 GiB each for 262k units x
        24 periods, data plus parquet encoding).
    storage_options : mapping, optional
        Options of the fsspec filesystem of a URL ``out_dir`` (``endpoint_url``, ``profile``...);
        credentials from the environment or a profile, as for :func:`dte_dask.load_panel`.

    Returns
    -------
    dict
        The metadata written to ``_dte_dask.json`` plus ``out_dir``, ``n_rows``,
        ``cohort_counts`` ({group: units}) and ``seconds``.
    """
    import dask

    start = _time.perf_counter()
    unknown = set(options) - set(SIM_OPTIONS)
    if unknown:
        raise SpecError(f"unknown simulation options: {sorted(unknown)}")
    npartitions = options.pop("npartitions", None)
    preset = options.get("preset")
    d = resolve_design(n_units, n_periods, **{**SIM_DEFAULTS, **options})
    parts = partition_blocks(d.n_units, npartitions)
    from dte_dask import storage

    out = os.fspath(out_dir)
    target = _FsDir(out, storage_options) if storage.is_url(out) else _LocalDir(out)
    _prepare_dir(target, overwrite)
    tasks = [dask.delayed(_write_partition, pure=True)(i, blk, d, target.path, target.fs)
             for i, blk in enumerate(parts)]
    kw: dict[str, Any] = {}
    if scheduler is not None:
        kw["scheduler"] = scheduler
    if num_workers is not None:
        kw["num_workers"] = num_workers
    with target.errors():
        stats = list(dask.compute(*tasks, **kw))
        truth = truth_of(d)
        with target.open("_truth.csv", "w", newline="") as fh:
            truth.to_csv(fh, index=False)
    counts: dict[int, int] = {}
    for s in stats:
        for g, c in s.pop("cohort_counts").items():
            counts[g] = counts.get(g, 0) + c
    meta = {
        "format": "dte_dask.simulate/1", "columns": columns_of(d), "n_units": d.n_units,
        "n_periods": d.n_periods, "seed": d.seed, "partitioned_by": "unit",
        "sorted_by": ["unit", "time"], "options": options_of(d, len(parts), preset),
        "n_rows": sum(s["rows"] for s in stats),
        "cohort_counts": {str(g): counts[g] for g in sorted(counts)}, "files": stats,
    }
    with target.errors(), target.open("_dte_dask.json", "w") as fh:
        json.dump(meta, fh, indent=2)
    return {**meta, "out_dir": out, "cohort_counts": dict(sorted(counts.items())),
            "seconds": _time.perf_counter() - start}


