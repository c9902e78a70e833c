"""File sources confined to the service's data roots, decided lexically before any file is touched.

A job's ``data.source`` (a parquet/CSV file, a folder or a glob) is checked in this order:

1. the text alone: no NUL, no URL, no ``~``, no ``..`` component;
2. the path, normalised (``posixpath.normpath``; relative sources are joined to each root in
   turn), must lie lexically inside a root. Nothing outside the roots is ever opened, listed,
   globbed or resolved, so ``/``, ``/usr`` or ``/proc`` are refused at once;
3. only then the filesystem, inside the root: a glob is expanded with ``root_dir`` = the root, a
   folder is walked (bounded, without following links), and every file named (the folder, each
   file and the glob's fixed prefix) is resolved and must still be inside a root: a symlink that
   points out is refused.

Object-store URLs (``s3://bucket/prefix/...``) are accepted only under the service's allowed
bucket prefixes (``dte-dask serve --allow-bucket s3://bucket/prefix/``), by the same rules: the
text first (scheme and bucket as configured, no ``..``, ``//``, ``%``-escapes, ``~`` or
backslash after the prefix), then the object store, inside the prefix only, with the service's
own storage options (endpoint, profile; credentials from its environment): a job body cannot
point the service at another endpoint.

Every refusal of a file source gives the same status and message, whether the path exists,
lies outside the roots, or points out through a symlink: the service is no oracle for which
files exist on the host.
"""
from __future__ import annotations

import glob
import os
import posixpath
import re
from pathlib import Path, PurePosixPath

from dte_dask.service.validate import BUILTIN_SOURCES, SpecProblem

_GLOB = re.compile(r"[*?\[]")
MAX_SCAN = 100_000  # files checked under a folder source or matched by a glob
_LOC = ["data", "source"]


def _refuse() -> SpecProblem:
    return SpecProblem.one(_LOC, "must name an existing file, folder or glob inside the service's data roots "
                                 "(relative to a root; no '..' or ~) or under one of its allowed bucket "
                                 "prefixes", "path_not_allowed")


def _too_many() -> SpecProblem:
    return SpecProblem.one(_LOC, f"names more than {MAX_SCAN} files; point at fewer", "too_many_files")


def _lexically_inside(path: str, root: Path) -> str | None:
    """``path`` relative to ``root`` ('.' for the root itself) if it lies inside, else None."""
    r = os.fspath(root)
    if path == r:
        return "."
    prefix = r if r.endswith("/") else r + "/"
    return path[len(prefix):] if path.startswith(prefix) else None


def _real_inside(path: str, roots: tuple[Path, ...]) -> bool:
    real = Path(os.path.realpath(path))
    return any(real == r or real.is_relative_to(r) for r in roots)


def normalise_bucket_prefix(prefix: str) -> str:
    """``S3://Bucket/data`` -> ``s3://Bucket/data/``; raises ValueError for anything but a plain prefix."""
    scheme, sep, rest = prefix.partition("://")
    if not sep or not scheme.isalnum() or not rest or rest.startswith("/"):
        raise ValueError(f"bucket prefix {prefix!r} must look like s3://bucket/ or s3://bucket/folder/")
    rest = rest if rest.endswith("/") else rest + "/"
    if _unsafe(rest) or _GLOB.search(rest):
        raise ValueError(f"bucket prefix {prefix!r} must not hold '..', '//', '%', '~', '\\' or glob characters")
    return f"{scheme.lower()}://{rest}"


def _unsafe(rest: str) -> bool:
    """Characters and segments refused after a bucket prefix (``//`` counts only past the scheme)."""
    return (any(c in rest for c in ("%", "\\", "\x00", "~")) or "//" in rest
            or ".." in PurePosixPath(rest).parts)


def confine_url(source: str, buckets: tuple[str, ...], storage_options: dict | None = None) -> str:
    """An object-store URL under one of ``buckets`` (normalised prefixes) that names existing objects."""
    scheme, sep, rest = source.partition("://")
    url = f"{scheme.lower()}://{rest}"
    prefix = next((b for b in buckets if url.startswith(b) or url + "/" == b), None)
    if prefix is None or _unsafe(rest):
        raise _refuse()
    from dte_dask import storage
    from dte_dask.exceptions import DteDaskError

    try:
        src = storage.resolve(url, storage_options)
    except (DteDaskError, OSError, ValueError):
        raise _refuse() from None  # missing, or refused by the store: one answer
    if not all(f.startswith(prefix) or f + "/" == prefix for f in src.files):
        raise _refuse()
    return url


def confine_source(source: str, roots: tuple[Path, ...], buckets: tuple[str, ...] = (),
                   storage_options: dict | None = None) -> str:
    """The absolute path (or glob, or object-store URL) of a file source, checked to lie inside
    ``roots`` (or under a prefix of ``buckets``, read with the service's ``storage_options``).

    ``mpdta`` and ``simulate`` come back unchanged. A relative source is looked up in each root
    in turn (the first where it exists wins). Raises :class:`SpecProblem` at ``data.source``,
    with one message for every refused path.
    """
    if source in BUILTIN_SOURCES:
        return source
    if not roots and not buckets:
        raise SpecProblem.one(_LOC, "file sources are disabled on this service (it has no data roots); "
                                    "use 'mpdta' or 'simulate'", "path_not_allowed")
    if isinstance(source, str) and "://" in source and "\x00" not in source:
        if not buckets:
            raise _refuse()
        return confine_url(source, buckets, storage_options)
    if not roots:
        raise _refuse()
    if (not isinstance(source, str) or not source or "\x00" in source or "://" in source
            or source.startswith("~") or "\\" in source or ".." in PurePosixPath(source).parts):
        raise _refuse()
    if source.startswith("/"):
        candidates = [(root, rel) for root in roots
                      if (rel := _lexically_inside(posixpath.normpath(source), root)) is not None]
    else:
        candidates = [(root, posixpath.normpath(source)) for root in roots]
    for root, rel in candidates:
        if _exists_inside(root, rel, roots):
            return posixpath.normpath(posixpath.join(os.fspath(root), rel))
    raise _refuse()


def _exists_inside(root: Path, rel: str, roots: tuple[Path, ...]) -> bool:
    """Whether ``root/rel`` names something that exists and stays inside ``roots`` (links resolved)."""
    full = posixpath.join(os.fspath(root), rel)
    parts = PurePosixPath(rel).parts
    first_glob = next((i for i, p in enumerate(parts) if _GLOB.search(p)), None)
    if first_glob is not None:
        fixed = posixpath.join(os.fspath(root), *parts[:first_glob])
        if not _real_inside(fixed, roots):
            return False  # the fixed part leaves the roots through a link: nothing is listed there
        matches = []
        for m in glob.iglob(rel, root_dir=os.fspath(root)):
            if len(matches) >= MAX_SCAN:
                raise _too_many()
            matches.append(posixpath.join(os.fspath(root), m))
        return bool(matches) and all(_real_inside(m, roots) for m in matches)
    if not os.path.lexists(full) or not _real_inside(full, roots):
        return False
    if os.path.isdir(full):
        seen = 0
        for d, dirs, files in os.walk(full, followlinks=False):
            for name in (*files, *dirs):
                seen += 1
                if seen > MAX_SCAN:
                    raise _too_many()
                if not _real_inside(os.path.join(d, name), roots):
                    return False
        return True
    return os.path.exists(full)
