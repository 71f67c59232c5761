"""The committed static schema, and the composed one with every plugin's parameters."""

from __future__ import annotations

import json

import jsonschema
import pytest
from _core_layers import core_registry, flat_model

from layerkit.cli import main
from layerkit.plugins.manager import load_registry, reset_registry
from layerkit.modelfile.schema import MODEL_SCHEMA, builtin_schema, composed_schema
from conftest import ROOT, shipped_model_files, tiny_model

COMMITTED = ROOT / "layerkit" / "schemas" / "model.schema.json"


def test_committed_schema_is_the_builtin_composed_schema(capsys):
    committed = json.loads(COMMITTED.read_text())
    assert committed == builtin_schema(), "regenerate with: layerkit schema --builtin > schemas/model.schema.json"
    assert main(["schema", "--builtin"]) == 0
    assert json.loads(capsys.readouterr().out) == committed
    # and it is what `layerkit schema` prints when no plugin is installed
    reset_registry(load_registry(entry_points=False, disabled=set()))
    try:
        assert main(["schema"]) == 0
    finally:
        reset_registry()
    assert json.loads(capsys.readouterr().out) == committed


def _with_layer(**changes) -> dict:
    model = tiny_model()
    model["layers"][0] = {**model["layers"][0], **changes}
    return model


@pytest.mark.parametrize("model, fragment", [
    (_with_layer(kernel_size=0), "0 is less than the minimum of 1"),
    (_with_layer(type="conv2dd"), "'conv2dd' is not one of"),
    (_with_layer(kernal_size=3), "'kernal_size' was unexpected"),
    ({**tiny_model(), "layers": [{"type": "flatten"}, {"type": "dense", "unit": 10}]}, "'unit' was unexpected"),
    ({**tiny_model(), "loss": {"type": "softmax_crossentropy"}}, "is not one of"),
    ({**tiny_model(), "training": {"optimizer": {"type": "sgd", "lr": -1}}}, "less than or equal to"),
])
def test_committed_schema_rejects_what_validate_rejects(model, fragment):
    # what an editor following "$schema" shows: the committed file alone, through the jsonschema library
    validator = jsonschema.Draft202012Validator(json.loads(COMMITTED.read_text()))
    messages = [e.message for e in validator.iter_errors(model)]
    for error in validator.iter_errors(model):
        messages += [sub.message for sub in error.context or ()]
    assert any(fragment in m for m in messages), messages


def test_committed_schema_accepts_a_valid_model():
    validator = jsonschema.Draft202012Validator(json.loads(COMMITTED.read_text()))
    assert not list(validator.iter_errors(tiny_model()))


def test_shipped_models_reference_the_schema_and_pass_it(models_dir):
    validator = jsonschema.Draft202012Validator(json.loads(COMMITTED.read_text()))
    for path in shipped_model_files():
        data = json.loads(path.read_text())
        assert (path.parent / data["$schema"]).resolve() == COMMITTED, path.name
        assert not list(validator.iter_errors(data)), path.name


@pytest.fixture
def composed(capsys):
    reset_registry(core_registry())
    try:
        assert main(["schema"]) == 0
    finally:
        reset_registry()
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def test_plugin_parameters_appear_in_the_composed_schema(composed):
    scale = composed["$defs"]["layer.scale"]
    assert scale["properties"]["factor"] == {"type": "number", "minimum": 0, "default": 1.0,
                                             "description": "fixed extra multiplier"}
    assert scale["description"] == "Per-feature learnable scale."
    assert set(composed["properties"]["layers"]["items"]["properties"]["type"]["enum"]) == {
        "buggy", "crop", "dense", "scale", "sum"}


def test_model_using_a_plugin_layer_validates_against_the_composed_schema(composed):
    validator = jsonschema.Draft202012Validator(composed)
    good = flat_model({"type": "dense", "units": 3}, {"type": "scale", "factor": 2.0, "name": "out"})
    assert not list(validator.iter_errors(good))
    bad = flat_model({"type": "dense", "units": 3}, {"type": "scale", "factr": 2.0})
    messages = [e.message for e in validator.iter_errors(bad)]
    assert any("'factr' was unexpected" in m for m in messages)
    unknown = flat_model({"type": "scalee"})
    assert list(validator.iter_errors(unknown))


def test_static_flag_prints_the_static_schema(capsys):
    assert main(["schema", "--static"]) == 0
    assert json.loads(capsys.readouterr().out) == MODEL_SCHEMA


def test_composed_schema_of_the_installed_plugins_accepts_the_shipped_models(models_dir):
    from layerkit.plugins.manager import get_registry
    validator = jsonschema.Draft202012Validator(composed_schema(get_registry()))
    for path in shipped_model_files():
        assert not list(validator.iter_errors(json.loads(path.read_text()))), path.name
