"""The package's layering, checked on its source (an AST walk of every module of dte_dask), so that it
stays true. Imports inside functions count as much as module-level ones.

(a) ``dte_dask.core`` imports only numpy, scipy, the standard library and ``dte_dask.core`` itself;
    numba only in ``core/jit.py``, the one place kernels are compiled (on first use).
    The errors and warnings core raises are defined in ``core/errors.py`` and re-exported by
    ``dte_dask.exceptions``; the block type is ``core/blocks.py`` (``panel/blocks.py`` keeps the
    pandas builder and Dask's ``sizeof`` registration); label formatting is ``core/labels.py``.
(b) No import cycle between the package's top-level units (subpackages such as ``graph`` or
    ``inference``, and top-level modules such as ``results`` or ``exceptions``).
(c) No private name crosses modules: no ``from dte_dask.x import _name`` outside ``dte_dask.x``, no
    ``module._name`` on an imported dte_dask module, and a private module (``checks/_engine.py``)
    is imported only from inside its own package.
(d) ``graph/`` is wiring only: it imports none of core's estimator-formula or nuisance-fit modules
    (it reaches them through the kernel interface, ``core.kernels`` / ``core.routes``, and the
    within-unit OLS steps, ``core.within`` / ``core.ols``) and contains no linear algebra (no ``@``,
    no einsum / solve / inverse / decomposition / dot / log / exp calls).
(e) One ``guarded_solve`` (``core/regression.py``) and one date formatter (``core/labels.plain``):
    a function that tests for ``datetime64`` / ``Timestamp`` and turns it into text.

Temporary allow-lists (``TEMPORARY_*``) hold what belongs to the result-protocol work on branch
``h/proto`` (results, estimators, plotting, report, checks presentation, jobs, service, cli), which
removes it; an entry that no longer occurs fails the test, so the lists only shrink.
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

import dte_dask

PKG = Path(dte_dask.__file__).resolve().parent
ROOT = "dte_dask"
CORE_ALLOWED = {"numpy", "scipy", "__future__"} | set(sys.stdlib_module_names)
CORE_JIT = {f"{ROOT}.core.jit": {"numba"}}  # the compiler, imported by its one gateway

# h/proto removes these (results <-> estimators via results -> estimators.aggregate and
# regression_results; cli <-> service via service.__main__ -> cli.serve): (importer unit, imported unit)
TEMPORARY_CYCLE_EDGES: set[tuple[str, str]] = set()
# h/proto owns these modules: (importer, module imported from, private name)
TEMPORARY_PRIVATE: set[tuple[str, str, str]] = set()
# h/proto's presentation modules still format dates themselves (use core.labels.plain)
TEMPORARY_DATE_FORMATTERS: set[str] = set()

GRAPH_FORBIDDEN_CORE = {f"{ROOT}.core.{m}" for m in
                        ("logit", "regression", "twobytwo", "covariates", "rcs", "rcs_covariates", "moments")}
NUMERIC_MODULES = {"np", "numpy", "linalg", "scipy", "la", "special"}  # roots of calls into numeric libraries
ALGEBRA_CALLS = {"einsum", "solve", "lstsq", "inv", "pinv", "cho_factor", "cho_solve", "cholesky", "qr", "svd",
                 "eigh", "dot", "vdot", "matmul", "outer", "tensordot", "log", "exp", "expit", "logaddexp",
                 "guarded_solve", "solve_dropping_collinear", "solve_triangular"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the module imported (or imported from)
    names: tuple[str, ...]  # names taken by ``from target import ...`` (empty for ``import target``)
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    return (PKG / rel).with_suffix(".py").is_file() or (PKG / rel / "__init__.py").is_file()


def _parse() -> dict[str, tuple[Path, ast.Module]]:
    return {_module_name(p): (p, ast.parse(p.read_text(encoding="utf-8"), str(p))) for p in sorted(PKG.rglob("*.py"))}


MODULES = _parse()


def _imports(module: str, tree: ast.Module, is_pkg: bool) -> list[Import]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [Import(module, a.name, (), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append(Import(module, target, tuple(a.name for a in node.names), node.lineno))
    return out


IMPORTS = [i for m, (p, t) in MODULES.items() for i in _imports(m, t, p.name == "__init__.py")]


def _targets(imp: Import) -> list[str]:
    """The dte_dask modules an import reaches (``from pkg import submodule`` reaches the submodule)."""
    if imp.target != ROOT and not imp.target.startswith(ROOT + "."):
        return []
    subs = [f"{imp.target}.{n}" for n in imp.names if _is_module(f"{imp.target}.{n}")]
    return subs or [imp.target]


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<root>"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# ----------------------------------------------------------------------------- (a)
def core_violations() -> list[str]:
    bad = []
    for imp in IMPORTS:
        if not imp.module.startswith(f"{ROOT}.core"):
            continue
        top = imp.target.split(".")[0]
        if top == ROOT:
            if not all(t == f"{ROOT}.core" or t.startswith(f"{ROOT}.core.") for t in _targets(imp)):
                bad.append(f"{imp.module}:{imp.line} imports {imp.target}")
        elif top not in CORE_ALLOWED and top not in CORE_JIT.get(imp.module, ()):
            bad.append(f"{imp.module}:{imp.line} imports {imp.target}")
    return bad


def test_core_imports_only_numpy_scipy_stdlib_and_core():
    assert any(i.module.startswith(f"{ROOT}.core.") for i in IMPORTS)  # the walk sees core
    assert core_violations() == []


# ----------------------------------------------------------------------------- (b)
def unit_edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for imp in IMPORTS:
        for t in _targets(imp):
            a, b = _unit(imp.module), _unit(t)
            if a != b:
                edges[(a, b)].append(f"{imp.module}:{imp.line} -> {t}")
    return edges


def cycles(edges) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_packages():
    edges = unit_edges()
    assert ("graph", "core") in edges and ("estimators", "graph") in edges  # the walk sees the layers
    stale = TEMPORARY_CYCLE_EDGES - set(edges)
    assert not stale, f"allow-listed edges no longer exist, remove them from TEMPORARY_CYCLE_EDGES: {stale}"
    kept = {e: w for e, w in edges.items() if e not in TEMPORARY_CYCLE_EDGES}
    found = cycles(kept)
    detail = {c: [w[0] for (a, b), w in kept.items() if a in c and b in c] for c in map(tuple, found)}
    assert found == [], f"import cycles between packages: {detail}"


# ----------------------------------------------------------------------------- (c)
def private_violations() -> set[tuple[str, str, str]]:
    bad = set()
    for imp in IMPORTS:
        if not imp.target.startswith(ROOT):
            continue
        for n in imp.names:
            if _private(n) and imp.target != imp.module and not _is_module(f"{imp.target}.{n}"):
                bad.add((imp.module, imp.target, n))
        for t in _targets(imp):
            parts = t.split(".")
            for i, part in enumerate(parts):
                if _private(part) and part != "__main__":
                    pkg = ".".join(parts[:i])
                    if not (imp.module == pkg or imp.module.startswith(pkg + ".")):
                        bad.add((imp.module, t, "<private module>"))
    for module, (_, tree) in MODULES.items():  # module._name on an imported dte_dask module
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith(ROOT + ".") and a.asname:
                        aliases[a.asname] = a.name
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(ROOT):
                for a in node.names:
                    if _is_module(f"{node.module}.{a.name}"):
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and _private(node.attr)):
                bad.add((module, aliases[node.value.id], node.attr))
    return bad


def test_no_private_names_cross_modules():
    found = private_violations()
    stale = TEMPORARY_PRIVATE - found
    assert not stale, f"allow-listed private imports no longer occur, remove them from TEMPORARY_PRIVATE: {stale}"
    assert sorted(found - TEMPORARY_PRIVATE) == []


# ----------------------------------------------------------------------------- (d)
def _algebra_call(f: ast.expr) -> bool:
    """A bare function (``guarded_solve(...)``) or a numeric library's (``np.linalg.solve(...)``);
    a kernel's own methods (``kernel.solve(sums)``) are the interface graph/ is meant to call."""
    if isinstance(f, ast.Name):
        return f.id in ALGEBRA_CALLS
    if not isinstance(f, ast.Attribute) or f.attr not in ALGEBRA_CALLS:
        return False
    root = f.value
    while isinstance(root, ast.Attribute):
        root = root.value
    return isinstance(root, ast.Name) and root.id in NUMERIC_MODULES


def graph_violations() -> list[str]:
    bad = []
    for imp in IMPORTS:
        if imp.module.startswith(f"{ROOT}.graph"):
            bad += [f"{imp.module}:{imp.line} imports {t}" for t in _targets(imp) if t in GRAPH_FORBIDDEN_CORE]
    for module, (_, tree) in MODULES.items():
        if not module.startswith(f"{ROOT}.graph"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.BinOp, ast.AugAssign)) and isinstance(node.op, ast.MatMult):
                bad.append(f"{module}:{node.lineno} matrix product")
            elif isinstance(node, ast.Call) and _algebra_call(node.func):
                bad.append(f"{module}:{node.lineno} calls {ast.unparse(node.func)}")
    return bad


def test_graph_only_wires():
    assert any(m.startswith(f"{ROOT}.graph.") for m in MODULES)
    assert graph_violations() == []


# ----------------------------------------------------------------------------- (e)
def functions_named(name: str) -> list[str]:
    return [f"{m}.{n.name}" for m, (_, t) in MODULES.items() for n in ast.walk(t)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name]


TEXT_CALLS = {"datetime_as_string", "strftime", "isoformat", "date"}


def _tests_date(test: ast.expr) -> bool:
    """``isinstance(x, <datetime64 / Timestamp ...>)`` in an ``if`` test."""
    return any(isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id == "isinstance"
               and len(c.args) == 2 and {"datetime64", "Timestamp"} & _names(c.args[1]) for c in ast.walk(test))


def _names(node: ast.AST) -> set[str]:
    return {n.attr if isinstance(n, ast.Attribute) else n.id for n in ast.walk(node)
            if isinstance(n, (ast.Attribute, ast.Name))}


def date_formatters() -> set[str]:
    """Functions with a branch ``if isinstance(x, <date type>):`` that turns something into text."""
    out = set()
    for m, (_, t) in MODULES.items():
        for fn in ast.walk(t):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for branch in (n for n in ast.walk(fn) if isinstance(n, ast.If) and _tests_date(n.test)):
                calls = [c for stmt in branch.body for c in ast.walk(stmt) if isinstance(c, ast.Call)]
                if any((isinstance(c.func, ast.Name) and c.func.id == "str") or
                       (isinstance(c.func, ast.Attribute) and c.func.attr in TEXT_CALLS) for c in calls):
                    out.add(f"{m}.{fn.name}")
    return out


def test_one_guarded_solve_and_one_date_formatter():
    assert functions_named("guarded_solve") == [f"{ROOT}.core.regression.guarded_solve"]
    found = date_formatters()
    stale = TEMPORARY_DATE_FORMATTERS - found
    assert not stale, f"allow-listed date formatters are gone, remove them from TEMPORARY_DATE_FORMATTERS: {stale}"
    assert found - TEMPORARY_DATE_FORMATTERS == {f"{ROOT}.core.labels.plain"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_over_600_lines(module):
    path, _ = MODULES[module]
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 600
