"""The committed static schema, and the composed one with every plugin's parameters."""

from __future__ import annotations

import json

import jsonschema
import pytest
from _core_layers import core_registry, flat_model

from layerkit.cli import main
from layerkit.plugins.manager import reset_registry
from layerkit.modelfile.schema import MODEL_SCHEMA, composed_schema
from conftest import ROOT


def test_committed_schema_is_the_static_schema():
    committed = json.loads((ROOT / "schemas" / "model.schema.json").read_text())
    assert committed == MODEL_SCHEMA, "regenerate with: layerkit schema --static > schemas/model.schema.json"


def test_shipped_models_reference_the_schema_and_pass_it(models_dir):
    validator = jsonschema.Draft202012Validator(MODEL_SCHEMA)
    for path in sorted(models_dir.glob("*.json")):
        data = json.loads(path.read_text())
        assert data["$schema"] == "../schemas/model.schema.json", path.name
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
    for path in sorted(models_dir.glob("*.json")):
        assert not list(validator.iter_errors(json.loads(path.read_text()))), path.name
