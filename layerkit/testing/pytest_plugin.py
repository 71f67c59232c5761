"""pytest plugin (entry point ``pytest11``: ``layerkit``), loaded by pytest automatically.

It adds, for projects that want a fixture rather than the one-line helper:

* the ``layerkit_plugin`` ini option / ``@pytest.mark.layerkit_plugin("name")`` marker: which
  plugin's layers a test covers (entry-point or distribution name);
* the ``layer_case`` fixture: a test that asks for it runs once per layer x example of that
  plugin (a :class:`layerkit.testing.LayerCase`);
* the ``layer_test`` fixture: :func:`layerkit.testing.run_layer_test`.

Everything heavy is imported only when a test uses it, so other projects' test runs pay nothing.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser) -> None:
    parser.addini("layerkit_plugin", "layerkit plugin (entry-point or distribution name) whose layers the "
                                     "layer_case fixture covers; empty: every installed layer", default="")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "layerkit_plugin(name): run this test once per layer x example "
                                       "of the named layerkit plugin (with the layer_case fixture)")


def pytest_generate_tests(metafunc) -> None:
    if "layer_case" not in metafunc.fixturenames:
        return
    from layerkit.testing import conformance_cases

    marker = metafunc.definition.get_closest_marker("layerkit_plugin")
    plugin = (marker.args[0] if marker and marker.args else None) or metafunc.config.getini("layerkit_plugin") or None
    cases = conformance_cases(plugin)
    metafunc.parametrize("layer_case", cases, ids=[c.id for c in cases])


@pytest.fixture
def layer_test():
    from layerkit.testing import run_layer_test

    return run_layer_test
