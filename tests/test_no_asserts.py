"""No `assert` statement carries a check in layerkit/: `python -O` strips them, and a check that can
vanish is no check. Checks raise ContractError, LayerkitError subclasses or ValueError explicitly."""

from __future__ import annotations

import ast

import pytest
from conftest import ROOT

FILES = sorted((ROOT / "layerkit").rglob("*.py"))


def asserts_in(source: str) -> list[int]:
    """The line of every assert statement in ``source``."""
    return [node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Assert)]


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_no_assert_statements(path):
    assert asserts_in(path.read_text(encoding="utf-8")) == []


def test_an_assert_is_found():
    assert asserts_in("def f(c):\n    assert c is not None\n    return c\n") == [2]
