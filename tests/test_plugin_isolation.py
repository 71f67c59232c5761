"""A broken plugin is reported by name and left out; every other plugin keeps working."""

from __future__ import annotations

import json
import sys
import types

import pytest
from _core_layers import Scale, core_registry

from layerkit import hookimpl
from layerkit.cli import main
from layerkit.nn.layer import Layer
from layerkit.plugins.manager import DISABLE_ENV, get_registry, load_registry, reset_registry


class Half(Layer):
    type = "half"


class raising:  # noqa: N801
    @staticmethod
    @hookimpl
    def layerkit_register_layers(register):
        register(Half)  # registered before the crash: must not survive it
        raise RuntimeError("boom")


class misspelled:  # noqa: N801
    @staticmethod
    @hookimpl
    def layerkit_register_layer(register):
        register(Half)


class misspelled_too:  # noqa: N801
    @staticmethod
    @hookimpl
    def layerkit_register_optimisers(register):
        pass


@pytest.fixture
def broken_registry(monkeypatch):
    monkeypatch.setitem(sys.modules, "tests_broken_plugin", None)  # makes its import fail
    return load_registry(extra_plugins=[raising, misspelled, misspelled_too],
                         default_plugins=("layerkit.layers.dense", "tests_broken_plugin", "_core_layers_mod"),
                         entry_points=False, disabled=set())


@pytest.fixture(autouse=True)
def plugin_module(monkeypatch):
    import _core_layers
    monkeypatch.setitem(sys.modules, "_core_layers_mod", types.SimpleNamespace(
        layerkit_register_layers=_core_layers.core_layers.layerkit_register_layers))


def test_each_failure_is_named_and_the_rest_works(broken_registry):
    registry = broken_registry
    errors = {name: info.errors for name, info in registry.plugins.items() if info.errors}
    assert errors["tests_broken_plugin"] == [
        "failed to load: ModuleNotFoundError: import of tests_broken_plugin halted; None in sys.modules"]
    assert errors["raising"] == ["layerkit_register_layers raised RuntimeError: boom"]
    assert errors["misspelled"][0].startswith("unknown hook: ")
    assert "layerkit_register_layer" in errors["misspelled"][0]
    assert "layerkit_register_optimisers" in errors["misspelled_too"][0]
    assert "half" not in registry.names("layer")  # all or nothing per hook call
    assert registry.layer("dense").type == "dense" and registry.layer("scale") is Scale


def test_unknown_type_mentions_plugins_that_failed(broken_registry):
    message = broken_registry.unknown_message("layer", "conv2d")
    assert message.endswith("plugins that failed to load: misspelled, misspelled_too, raising, "
                            "tests_broken_plugin (see 'layerkit plugins')")


def test_disable_by_environment(monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, " core_layers , nothing")
    registry = load_registry(extra_plugins=[_core()], default_plugins=("layerkit.layers.dense",),
                             entry_points=False)
    assert registry.plugins["core_layers"].disabled
    assert "scale" not in registry.names("layer") and "dense" in registry.names("layer")


def _core():
    import _core_layers
    return _core_layers.core_layers


def test_layerkit_plugins_shows_errors_and_disabled(broken_registry, capsys, monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, "somebody")
    reset_registry(broken_registry)
    try:
        assert main(["plugins"]) == 0
    finally:
        reset_registry()
    report = json.loads(capsys.readouterr().out)
    by_name = {p["plugin"]: p for p in report["plugins"]}
    assert by_name["raising"]["errors"] == ["layerkit_register_layers raised RuntimeError: boom"]
    assert by_name["layerkit.layers.dense"] == {
        "plugin": "layerkit.layers.dense", "distribution": "layerkit", "version": by_name[
            "layerkit.layers.dense"]["version"], "disabled": False, "hooks": ["layerkit_register_layers"],
        "provides": {"layer": ["dense"]}, "errors": []}
    assert report["disabled"] == ["somebody"]
    assert "plugin raising: layerkit_register_layers raised RuntimeError: boom" in report["problems"]


def test_conflict_visible_in_layerkit_plugins(capsys):
    import test_registry
    reset_registry(core_registry(test_registry.rival))
    try:
        assert main(["plugins"]) == 0
    finally:
        reset_registry()
    report = json.loads(capsys.readouterr().out)
    assert report["conflicts"] == {"layer": {"scale": ["core_layers", "rival"]}}


def test_process_registry_is_cached_and_resettable():
    first = get_registry()
    assert get_registry() is first
    reset_registry()
    assert get_registry() is not first


def test_validate_warns_about_broken_plugins_but_passes(capsys, tmp_path):
    registry = load_registry(extra_plugins=[raising], default_plugins=("layerkit.layers.dense", "layerkit.nn.losses"),
                             entry_points=False, disabled=set())
    model = tmp_path / "m.json"
    model.write_text(json.dumps({"format": 1, "name": "m", "input": {"shape": [4]},
                                 "layers": [{"type": "dense", "units": 2}],
                                 "loss": {"type": "softmax_cross_entropy"}}))
    reset_registry(registry)
    try:
        assert main(["validate", str(model)]) == 0
    finally:
        reset_registry()
    out, err = capsys.readouterr()
    assert out.startswith("OK ")
    assert "warning: plugin raising: layerkit_register_layers raised RuntimeError: boom" in err
