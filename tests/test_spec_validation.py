"""Model-file validation: every problem at once, each as one exact ``FILE: path: message`` line."""

from __future__ import annotations

import json

import pytest
from _core_layers import core_registry, flat_model

from layerkit.errors import GraphError, LayerkitError, ModelFileError
from layerkit.modelfile.spec import load_spec, spec_from_dict


@pytest.fixture(scope="module")
def registry():
    return core_registry()


def problems(data, registry, source="m.json") -> list[str]:
    with pytest.raises(LayerkitError) as info:
        spec_from_dict(data, source=source, registry=registry)
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return str(info.value).splitlines()


def test_valid_model_gets_defaults_and_default_wiring(registry):
    spec = spec_from_dict(flat_model({"type": "dense", "units": 4}, {"name": "out", "type": "scale"}),
                          registry=registry)
    assert [layer.name for layer in spec.layers] == ["dense_0", "out"]
    assert spec.layers[0].inputs == ["input"] and spec.layers[1].inputs == ["dense_0"]
    assert spec.layers[0].config == {"units": 4, "use_bias": True, "init": "glorot_uniform"}
    assert spec.layers[1].config == {"init": "he_normal", "factor": 1.0}
    assert spec.output == "out"
    assert spec.training["batch_size"] == 64 and spec.loss == {"type": "softmax_cross_entropy"}


def test_parameter_below_minimum(registry):
    data = flat_model({"type": "dense", "units": 4}, {"type": "crop", "size": 0})
    assert problems(data, registry, "lenet.json") == [
        "lenet.json: layers[1].size: 0 is less than the minimum of 1"]


def test_every_problem_is_reported_at_once(registry):
    data = flat_model(
        {"type": "dense", "units": "4", "unit": 3},
        {"type": "scael"},
        {"type": "crop"},
        {"name": "out", "type": "scale", "factor": -1, "inputs": "dense_00"},
        shape=[6], colour="red")
    assert problems(data, registry) == [
        "m.json: colour: unknown key 'colour' (allowed: $schema, description, format, input, layers, loss, "
        "name, output, training)",
        "m.json: layers[0].unit: unknown key 'unit', did you mean 'units'?",
        "m.json: layers[0].units: \"4\" is not of type 'integer'",
        "m.json: layers[1].type: unknown layer type 'scael', did you mean 'scale'? "
        "(installed layer plugins: core_layers, layerkit)",
        "m.json: layers[2]: 'size' is a required property",
        "m.json: layers[3].factor: -1 is less than the minimum of 0",
        "m.json: layers[3].inputs: 'out' (scale) reads unknown layer 'dense_00', did you mean 'dense_0'?",
    ]


def test_wrong_format_version(registry):
    data = flat_model({"type": "dense", "units": 2})
    data["format"] = 2
    assert problems(data, registry) == [
        'm.json: format: unsupported format version 2; this layerkit (format 1) reads only "format": 1']


def test_missing_required_sections(registry):
    assert problems({"format": 1}, registry) == [
        "m.json: 'input' is a required property", "m.json: 'layers' is a required property"]


def test_not_an_object(registry):
    assert problems([1, 2], registry) == ["m.json: [1, 2] is not of type 'object'"]


def test_bad_inputs_value_says_what_is_expected(registry):
    data = flat_model({"type": "dense", "units": 2, "inputs": 5})
    assert problems(data, registry) == ["m.json: layers[0].inputs: 5 is not of type 'string' or 'array'"]
    data = flat_model({"type": "dense", "units": 2, "inputs": ["input", "9bad"]})
    assert problems(data, registry) == [
        'm.json: layers[0].inputs[1]: "9bad" is not a valid name (letters, digits, _ . -; '
        'not starting with a digit)']


def test_reserved_and_duplicate_names(registry):
    data = flat_model({"name": "input", "type": "dense", "units": 2},
                      {"name": "a", "type": "scale"}, {"name": "a", "type": "scale"})
    assert problems(data, registry) == [
        "m.json: layers[0].name: the name 'input' is reserved for the model input",
        "m.json: layers[2].name: duplicate layer name 'a' (also layers[1])",
    ]


def test_non_finite_numbers_in_a_dict(registry):
    data = flat_model({"type": "scale", "factor": float("nan")})
    assert problems(data, registry) == ["m.json: layers[0].factor: nan is not a finite number"]


def test_unknown_loss_and_optimizer_are_named(registry):
    data = flat_model({"type": "dense", "units": 2}, loss={"type": "mse"},
                      training={"optimizer": {"type": "sgd"}, "epochs": 0})
    lines = problems(data, registry)
    assert lines[0] == "m.json: loss.type: unknown loss type 'mse' (installed loss plugins: none)"
    assert lines[1] == "m.json: training.epochs: 0 is less than the minimum of 1"
    assert lines[2] == ("m.json: training.optimizer.type: unknown optimizer type 'sgd' "
                        "(installed optimizer plugins: none)")


def test_graph_problems_come_with_schema_problems(registry):
    data = flat_model({"type": "dense", "units": 0}, {"type": "scale", "inputs": "nowhere"})
    with pytest.raises(ModelFileError) as info:
        spec_from_dict(data, source="m.json", registry=registry)
    assert len(info.value.problems) == 2
    only_graph = flat_model({"type": "dense", "units": 1}, {"type": "scale", "inputs": "nowhere"})
    with pytest.raises(GraphError):
        spec_from_dict(only_graph, source="m.json", registry=registry)


@pytest.mark.parametrize("text, message", [
    ('{"format": 1,\n "input": }', "invalid JSON at line 2, column 11: Expecting value"),
    ('{"format": 1, "a": NaN}', "invalid JSON at line 1, column 20: NaN is not a JSON number"),
    ('{"format": 1, "format": 1}', "invalid JSON: duplicate key 'format'"),
    ("", "invalid JSON at line 1, column 1: Expecting value"),
])
def test_malformed_json_names_line_and_column(tmp_path, registry, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ModelFileError) as info:
        load_spec(path, registry)
    assert str(info.value) == f"{path}: {message}"


def test_missing_file_and_directory(tmp_path, registry):
    with pytest.raises(ModelFileError, match=r"nope\.json: no such file, nor a shipped model"):
        load_spec(tmp_path / "nope.json", registry)
    with pytest.raises(ModelFileError, match="is a directory"):
        load_spec(tmp_path, registry)


def test_file_problems_name_the_file_as_typed(tmp_path, registry, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.json").write_text(json.dumps(flat_model({"type": "crop", "size": 0})))
    with pytest.raises(ModelFileError) as info:
        load_spec("sub/m.json", registry)
    assert str(info.value) == "sub/m.json: layers[0].size: 0 is less than the minimum of 1"
