"""pytest plugin (entry point ``pytest11``: ``layerkit``), loaded by pytest automatically.

It adds, for projects that want fixtures rather than the one-line helper
(:func:`layerkit.testing.layer_conformance_tests`):

* the ``layerkit_plugin`` ini option / ``@pytest.mark.layerkit_plugin("name")`` marker: which
  plugin's layers a test covers (entry-point or distribution name);
* the ``layer_check`` fixture: a test that asks for it runs once per layer, example and check of
  that plugin (a :class:`layerkit.testing.CheckCase`, ids like ``swish-0-fresh_dx``); the test calls
  ``layer_check.run()``, which raises :class:`~layerkit.errors.ContractError` when the claim fails;
* the ``layer_case`` fixture: a test that asks for it runs once per layer x example of that
  plugin (a :class:`layerkit.testing.LayerCase`);
* the ``layer_test`` fixture: :func:`layerkit.testing.run_layer_test` (every check of one example).

Everything heavy is imported only when a test uses it, so other projects' test runs pay nothing.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest


def pytest_addoption(parser: Any) -> None:
    parser.addini("layerkit_plugin", "layerkit plugin (entry-point or distribution name) whose layers the "
                                     "layer_case and layer_check fixtures cover; empty: every installed layer",
                  default="")


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "layerkit_plugin(name): run this test once per layer x example (layer_case) "
                                       "or layer x example x check (layer_check) of the named layerkit plugin")


def _plugin(metafunc: Any) -> str | None:
    marker = metafunc.definition.get_closest_marker("layerkit_plugin")
    return (marker.args[0] if marker and marker.args else None) or metafunc.config.getini("layerkit_plugin") or None


def pytest_generate_tests(metafunc: Any) -> None:
    if "layer_case" in metafunc.fixturenames:
        from layerkit.testing import conformance_cases

        cases = conformance_cases(_plugin(metafunc))
        metafunc.parametrize("layer_case", cases, ids=[c.id for c in cases])
    if "layer_check" in metafunc.fixturenames:
        from layerkit.testing import check_cases

        checks = check_cases(_plugin(metafunc))
        metafunc.parametrize("layer_check", checks, ids=[c.id for c in checks])


@pytest.fixture
def layer_test() -> Callable[..., list]:
    from layerkit.testing import run_layer_test

    return run_layer_test
