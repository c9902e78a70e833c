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
                                 "(relative to a root; no '..', ~ or URL)", "path_not_allowed")


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


def confine_source(source: str, roots: tuple[Path, ...]) -> str:
    """The absolute path (or glob) of a file source, checked to lie inside ``roots``.

    ``mpdta`` and ``simulate`` come back unchanged. A relative source is looked up in each root
    in turn (the first where it exists wins). Raises :class:`SpecProblem` at ``data.source``,
    with one message for every refused path.
    """
    if source in BUILTIN_SOURCES:
        return source
    if not roots:
        raise SpecProblem.one(_LOC, "file sources are disabled on this service (it has no data roots); "
                                    "use 'mpdta' or 'simulate'", "path_not_allowed")
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
