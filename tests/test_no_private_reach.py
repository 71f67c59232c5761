"""Tests go through public behaviour: no test file reaches a layerkit module's private names.

tests/test_architecture.py refuses ``from layerkit.x import _y``; this also catches the other
spellings of the same reach-in, which a text match on import lines cannot see:
``layerkit.x._y``, ``m._y`` after ``import layerkit.x as m`` or ``from layerkit import x``,
``import layerkit.x._y``, and ``monkeypatch.setattr(m, "_y", ...)`` / ``setattr("layerkit.x._y", ...)``.
"""

from __future__ import annotations

import ast
import functools
import warnings
import importlib.util
from pathlib import Path

import pytest

from conftest import ROOT

#: test files that may still reach in: none now, as every test goes through public names; an entry
#: here that is no longer needed fails the test below, so the set cannot go stale
PENDING: set[str] = set()


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@functools.lru_cache(maxsize=None)
def _is_layerkit_module(dotted: str) -> bool:
    if dotted != "layerkit" and not dotted.startswith("layerkit."):
        return False
    try:
        with warnings.catch_warnings():  # finding layerkit.builder.x imports the deprecated layerkit.builder
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.util.find_spec(dotted) is not None
    except (ImportError, ValueError):
        return False


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of names and attributes, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _scope_nodes(scope: ast.AST):
    """The nodes of one scope: everything below ``scope`` except the bodies of nested functions."""
    todo = list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            todo.extend(ast.iter_child_nodes(node))


def _stored_names(scope: ast.AST) -> set[str]:
    """Names a function binds itself (arguments, assignments, ``with ... as``, loop targets)."""
    names = {a.arg for a in ast.walk(scope.args) if isinstance(a, ast.arg)} if hasattr(scope, "args") else set()
    return names | {n.id for n in _scope_nodes(scope) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def private_reaches(source: str, where: str = "<test>") -> list[str]:
    """Every place in ``source`` that names a private member of a layerkit module, as ``where:line: name``."""
    found: list[str] = []

    def hit(node: ast.AST, name: str) -> None:
        found.append(f"{where}:{getattr(node, 'lineno', 0)}: {name}")

    def imports(scope: ast.AST) -> dict[str, str]:
        """Local name -> the layerkit module an import statement of this scope binds it to."""
        bound: dict[str, str] = {}
        for node in _scope_nodes(scope):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("layerkit"):
                        if any(_is_private(part) for part in alias.name.split(".")):
                            hit(node, alias.name)
                        bound[alias.asname or "layerkit"] = alias.name if alias.asname else "layerkit"
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.startswith("layerkit"):
                if any(_is_private(part) for part in node.module.split(".")):
                    hit(node, node.module)
                for alias in node.names:
                    if _is_private(alias.name):
                        hit(node, f"{node.module}.{alias.name}")
                    elif _is_layerkit_module(f"{node.module}.{alias.name}"):
                        bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        return bound

    def check(scope: ast.AST, outer: dict[str, str]) -> None:
        shadowed = _stored_names(scope) if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)) else set()
        modules = {k: v for k, v in outer.items() if k not in shadowed} | imports(scope)

        def module_of(expr: ast.expr) -> str | None:
            dotted = _dotted(expr)
            if dotted is None:
                return None
            head, _, rest = dotted.partition(".")
            if head not in modules:
                return None
            full = modules[head] + ("." + rest if rest else "")
            return full if _is_layerkit_module(full) else None

        for node in _scope_nodes(scope):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                check(node, modules)
            elif isinstance(node, ast.Attribute) and _is_private(node.attr):
                owner = module_of(node.value)
                if owner is not None:
                    hit(node, f"{owner}.{node.attr}")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("setattr", "delattr") and node.args:
                # monkeypatch.setattr(module, "_name", value) and monkeypatch.setattr("pkg.module._name", value)
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    owner_name, _, attr = first.value.rpartition(".")
                    if _is_private(attr) and _is_layerkit_module(owner_name):
                        hit(node, first.value)
                elif len(node.args) > 1 and isinstance(node.args[1], ast.Constant) \
                        and isinstance(node.args[1].value, str) and _is_private(node.args[1].value):
                    owner = module_of(first)
                    if owner is not None:
                        hit(node, f"{owner}.{node.args[1].value}")

    check(ast.parse(source), {})
    return sorted(set(found))


def _test_files() -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("*.py"))


@pytest.mark.parametrize("path", _test_files())
def test_tests_use_public_names_only(path):
    found = private_reaches((ROOT / path).read_text(encoding="utf-8"), path)
    if path in PENDING:
        assert found, f"{path} no longer reaches in: remove it from PENDING in {__file__}"
    else:
        assert not found, "private names of layerkit modules (test public behaviour instead):\n" + "\n".join(found)


def test_pending_names_existing_files():
    assert {p for p in PENDING if not Path(ROOT / p).is_file()} == set()


@pytest.mark.parametrize("source, name", [
    ("import layerkit.layers.conv as conv\nconv._im2col(1)\n", "layerkit.layers.conv._im2col"),
    ("from layerkit.layers import conv\nx = conv._CACHE\n", "layerkit.layers.conv._CACHE"),
    ("import layerkit.layers.conv\nlayerkit.layers.conv._im2col(1)\n", "layerkit.layers.conv._im2col"),
    ("from layerkit.layers.conv import _im2col\n", "layerkit.layers.conv._im2col"),
    ("import layerkit.data._hidden\n", "layerkit.data._hidden"),
    ("def test(monkeypatch):\n    monkeypatch.setattr('layerkit.data.idx._open', None)\n",
     "layerkit.data.idx._open"),
    ("from layerkit.data import idx\ndef test(monkeypatch):\n    monkeypatch.setattr(idx, '_open', None)\n",
     "layerkit.data.idx._open"),
    ("def test():\n    import layerkit.data.idx as idx\n    idx._open(1)\n", "layerkit.data.idx._open"),
])
def test_the_check_finds_each_spelling_of_a_reach_in(source, name):
    assert [hit.split(": ", 1)[1] for hit in private_reaches(source)] == [name]


def test_a_local_name_shadows_a_module_only_in_its_own_function():
    source = ("import layerkit.parallel.processes as sp\n"
              "def uses_an_object(make):\n    with make() as sp:\n        sp._procs[0].kill()\n"
              "def uses_the_module():\n    return sp._available\n")
    assert [hit.split(": ", 1)[1] for hit in private_reaches(source)] == ["layerkit.parallel.processes._available"]


def test_the_check_leaves_public_and_non_layerkit_names_alone():
    source = ("import numpy as np\nfrom layerkit.layers import conv\nfrom layerkit.nn.layer import Layer\n"
              "np._NoValue\nconv.Conv2D\nconv.__name__\nLayer._private_looking\nobj = object()\nobj._x\n")
    assert private_reaches(source) == []
