"""CI, the README and pre-commit run the same checks: .ci/run runs the README's test command as
written, then ruff and mypy, and the pre-commit hooks run those same two commands."""

from __future__ import annotations

import re

from conftest import ROOT


def readme_test_commands(readme: str) -> list[str]:
    """The README's test command: its code lines that make the venv, install the test extra and run pytest."""
    found = [line.strip() for line in readme.splitlines()
             if line.startswith("python3 -m venv") and ".[test" in line and "-m pytest" in line]
    assert found, "the README shows no test command"
    return found


def hook_entries(config: str) -> list[str]:
    """The ``entry:`` command of every hook in a pre-commit config (text, no YAML parser needed)."""
    return [m.strip().strip("'\"") for m in re.findall(r"^\s*entry:\s*(.+)$", config, flags=re.M)]


def missing_from_ci(ci: str, readme: str, config: str) -> list[str]:
    """The commands the README or pre-commit runs that are not a line of .ci/run."""
    lines = {line.strip() for line in ci.splitlines()}
    wanted = [*readme_test_commands(readme), *hook_entries(config)]
    return [command for command in wanted if command not in lines]


def test_ci_runs_the_readme_command_and_the_hooks():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    config = (ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8")
    assert sorted(hook_entries(config)) == [".venv/bin/mypy", ".venv/bin/ruff check ."]
    assert missing_from_ci(ci, readme, config) == []


def test_the_test_extra_installs_the_checkers():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    (extra,) = re.findall(r"^test = \[(.*?)\]", pyproject, flags=re.M | re.S)
    assert re.search(r'"ruff>=', extra) and re.search(r'"mypy>=', extra), extra


def test_a_command_missing_from_ci_is_named():
    readme = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest -q\n"
    config = "repos:\n  - repo: local\n    hooks:\n      - id: ruff\n        entry: .venv/bin/ruff check .\n"
    ci = "set -e\n" + readme
    assert missing_from_ci(ci, readme, config) == [".venv/bin/ruff check ."]
    changed = readme.replace("-q", "-x")  # the README's command edited but not .ci/run
    assert missing_from_ci(ci + ".venv/bin/ruff check .\n", changed, config) == [changed.strip()]
