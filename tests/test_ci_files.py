"""The install is reproducible: CI runs README command (2) verbatim in a fresh virtual environment,
and every dependency the project declares is pinned in ``constraints.txt`` at a version that
satisfies the declaration (so a fresh machine resolves exactly what CI tested)."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no bash block with the two commands"
    return [ln.strip() for ln in block.group(1).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt: {line!r} is not pinned with =="
        key = canonicalize_name(name)
        assert key not in pins, f"constraints.txt pins {name} twice"
        pins[key] = Version(version)
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return reqs


def test_readme_has_the_two_commands_with_the_lock_file() -> None:
    cmds = _readme_commands()
    assert len(cmds) >= 2
    assert cmds[0].startswith("python -m pip install -c constraints.txt -e .") and "dte-dask demo" in cmds[0]
    assert cmds[1] == 'python -m pip install -c constraints.txt -e ".[test]" && python -m pytest -q'


def test_ci_runs_readme_test_command_verbatim_in_a_fresh_venv() -> None:
    run = (ROOT / ".ci" / "run").read_text()
    lines = [ln.strip() for ln in run.splitlines()]
    assert _readme_commands()[1] in lines, "CI must run README command (2) exactly"
    venv_at = next(i for i, ln in enumerate(lines) if "-m venv" in ln)
    remove_at = next(i for i, ln in enumerate(lines) if ln.startswith("rm -rf") and "VENV" in ln)
    activate_at = next(i for i, ln in enumerate(lines) if ln.startswith("source") and "activate" in ln)
    assert remove_at < venv_at < activate_at < lines.index(_readme_commands()[1])


@pytest.mark.parametrize("req", _declared(), ids=str)
def test_every_declared_dependency_is_pinned_compatibly(req: Requirement) -> None:
    pins = _pins()
    key = canonicalize_name(req.name)
    assert key in pins, f"{req.name} is declared in pyproject.toml but not pinned in constraints.txt"
    assert req.specifier.contains(pins[key], prereleases=True), \
        f"constraints.txt pins {req.name}=={pins[key]}, outside the declared {req.specifier}"
