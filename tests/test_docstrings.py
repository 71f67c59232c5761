"""Every public class in layerkit/ says what it is: a module-level class whose name does not start
with an underscore has a docstring (read from the source with ast, so nothing is imported)."""

from __future__ import annotations

import ast

import pytest

from conftest import ROOT

PACKAGE = ROOT / "layerkit"

#: files whose public classes may still lack docstrings: none now, as every public class has one; an
#: entry here that is no longer needed fails the test below, so the set cannot go stale
PENDING: set[str] = set()


def undocumented_classes(source: str) -> list[str]:
    """The public module-level classes of ``source`` that have no docstring."""
    tree = ast.parse(source)
    return [node.name for node in tree.body
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_") and ast.get_docstring(node) is None]


def _modules() -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("module", _modules())
def test_public_classes_have_docstrings(module):
    missing = undocumented_classes((ROOT / module).read_text(encoding="utf-8"))
    if module in PENDING:
        assert missing, f"{module} documents all its classes now: remove it from PENDING in {__file__}"
    else:
        assert not missing, f"{module}: public classes without a docstring: {', '.join(missing)}"


def test_pending_names_existing_files():
    assert {m for m in PENDING if not (ROOT / m).is_file()} == set()


def test_the_check_finds_an_undocumented_class():
    source = '''
class Documented:
    """Says what it is."""

class Undocumented:
    x = 1

class _Private:
    pass

def function():
    class Inner:
        pass
'''
    assert undocumented_classes(source) == ["Undocumented"]
    # a string that is not the first statement is not a docstring
    assert undocumented_classes('class Late:\n    x = 1\n    "too late"\n') == ["Late"]
