"""The registry: lookups, suggestions, conflicts between plugins, contract checks."""

from __future__ import annotations

import pytest
from _core_layers import Scale, core_registry

from layerkit import hookimpl
from layerkit.errors import RegistryError
from layerkit.nn.layer import Layer


class OtherScale(Layer):
    type = "scale"
    description = "A second plugin's idea of scale."


class rival:  # noqa: N801  (plugin namespace)
    @staticmethod
    @hookimpl
    def layerkit_register_layers(register):
        register(OtherScale)


def test_lookup_and_names():
    registry = core_registry()
    assert registry.layer("scale") is Scale
    assert registry.get("layer", "dense").type == "dense"
    assert registry.entry("layer", "scale").plugin == "core_layers"
    assert {"dense", "scale", "sum"} <= set(registry.names("layer"))
    assert registry.plugins["core_layers"].provides["layer"] == ["scale", "sum", "crop", "buggy"]


def test_unknown_name_suggests_and_lists_plugins():
    registry = core_registry()
    with pytest.raises(RegistryError) as info:
        registry.layer("scal")
    assert str(info.value) == ("unknown layer type 'scal', did you mean 'scale'? "
                               "(installed layer plugins: core_layers, layerkit)")


def test_conflict_names_both_plugins_and_blocks_the_name():
    registry = core_registry(rival)
    message = "layer 'scale' is registered by both core_layers and rival"
    assert [str(p) for p in registry.problems] == [f"plugin rival: {message}"]
    assert message in registry.plugins["core_layers"].errors
    assert message in registry.plugins["rival"].errors
    assert "scale" not in registry.names("layer")
    with pytest.raises(RegistryError) as info:
        registry.layer("scale")
    assert str(info.value) == ("layer type 'scale' is registered by both core_layers and rival; "
                               "uninstall or disable one (LAYERKIT_DISABLE_PLUGINS)")
    assert registry.layer("sum").type == "sum"  # the rest of both plugins still works


def test_disabling_one_side_resolves_the_conflict():
    registry = core_registry(rival, disabled={"rival"})
    assert registry.layer("scale") is Scale
    assert registry.plugins["rival"].disabled and not registry.problems


class NotALayer:
    type = "plain"


class BadSchema(Layer):
    type = "bad_schema"
    params_schema = {"type": "object", "properties": {"x": {"type": "integr"}}}


class BadName(Layer):
    type = "Bad-Name"


class breaks_contract:  # noqa: N801
    @staticmethod
    @hookimpl
    def layerkit_register_layers(register):
        register(NotALayer)
        register(BadSchema)
        register(BadName)
        register(OtherScale.__mro__[0].__base__)  # Layer itself: has no type name


def test_contract_violations_are_rejected_with_reasons():
    registry = core_registry(breaks_contract)
    errors = registry.plugins["breaks_contract"].errors
    assert errors[0] == "layer NotALayer rejected: not a subclass of layerkit.nn.layer.Layer"
    assert errors[1].startswith("layer BadSchema rejected: params_schema is not a valid JSON Schema: ")
    assert errors[2] == "layer BadName rejected: its type 'Bad-Name' is not a snake_case name"
    assert errors[3] == "layer Layer rejected: its type '' is not a snake_case name"
    assert not {"plain", "bad_schema", "Bad-Name"} & set(registry.names("layer"))
