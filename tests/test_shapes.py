"""Static shape inference: shipped models and shape errors that say where and why."""

from __future__ import annotations

import pytest
from _core_layers import core_registry, flat_model

from layerkit.modelfile.build import build_graph_from
from layerkit.errors import ShapeError
from layerkit.modelfile.shapes import build_graph
from layerkit.modelfile.spec import spec_from_dict


@pytest.fixture(scope="module")
def registry():
    return core_registry()


def shape_errors(data, registry) -> list[str]:
    with pytest.raises(ShapeError) as info:
        build_graph(spec_from_dict(data, source="m.json", registry=registry), registry)
    return str(info.value).splitlines()


def test_shapes_params_flops_of_a_chain(registry):
    data = flat_model({"name": "fc", "type": "dense", "units": 4}, {"name": "s", "type": "scale"},
                      {"name": "c", "type": "crop", "size": 3})
    graph = build_graph(spec_from_dict(data, registry=registry), registry)
    assert [n.output_shape for n in graph.nodes] == [(4,), (4,), (3,)]
    assert [n.param_count for n in graph.nodes] == [6 * 4 + 4, 4, 0]
    assert graph.flops == 2 * 6 * 4 + 4
    assert graph.shape_trace() == "input (6,) -> fc (4,) -> s (4,) -> c (3,)"


def test_shape_error_names_layer_input_reason_and_trace(registry):
    data = flat_model({"name": "fc1", "type": "dense", "units": 4}, {"type": "scale"},
                      {"name": "crop", "type": "crop", "size": 5})
    assert shape_errors(data, registry) == [
        "m.json: layers[2]: 'crop' (crop) with input shape (4,): cannot keep 5 of 4 features",
        "m.json: layers[2]: shapes so far: input (6,) -> fc1 (4,) -> scale_1 (4,)",
    ]


def test_independent_branches_are_all_checked(registry):
    data = flat_model({"name": "a", "type": "crop", "size": 9, "inputs": "input"},
                      {"name": "b", "type": "dense", "units": 3, "inputs": "input"},
                      {"name": "c", "type": "crop", "size": 4, "inputs": "b"},
                      {"name": "out", "type": "sum", "inputs": ["a", "c"]})
    assert shape_errors(data, registry) == [
        "m.json: layers[0]: 'a' (crop) with input shape (6,): cannot keep 9 of 6 features",
        "m.json: layers[0]: shapes so far: input (6,)",
        "m.json: layers[2]: 'c' (crop) with input shape (3,): cannot keep 4 of 3 features",
        "m.json: layers[2]: shapes so far: input (6,) -> b (3,)",
    ]


def test_multi_input_shape_error_lists_every_input(registry):
    data = flat_model({"name": "a", "type": "dense", "units": 2, "inputs": "input"},
                      {"name": "out", "type": "sum", "inputs": ["a", "input"]})
    assert shape_errors(data, registry)[0] == (
        "m.json: layers[1]: 'out' (sum) with input shape (2,) and (6,): inputs must have one shape, "
        "got (2,) and (6,)")


def test_plugin_bug_names_layer_and_plugin(registry):
    data = flat_model({"name": "oops", "type": "buggy"})
    assert shape_errors(data, registry) == [
        "m.json: layers[0]: 'oops' (buggy): plugin core_layers failed on input shape (6,) "
        "(ZeroDivisionError: integer division or modulo by zero); this is a bug in the plugin"]


def test_dense_acts_on_the_last_axis_of_an_image(registry):
    # as PyTorch's Linear: (1, 4, 4) -> (1, 4, 2), the same weights for every row
    data = flat_model({"name": "fc", "type": "dense", "units": 2}, shape=[1, 4, 4])
    graph = build_graph(spec_from_dict(data, registry=registry), registry)
    assert graph.nodes[0].output_shape == (1, 4, 2)


@pytest.mark.parametrize("name, params, output", [
    ("lenet5", 61_706, (10,)),
    ("softmax_regression", 7_850, (10,)),
    ("mlp_784_15_10", 11_935, (10,)),
    ("cnn2_3class", 390, (3,)),
    # the lab reports' nets exactly: a change here is no longer the net the report describes
    ("labs/lab_cnn2_3class", 390, (3,)),
    ("labs/lab_cnn2", 922, (10,)),
    ("labs/lab_conv8_pool_softmax", 13_602, (10,)),
    ("labs/lab_mlp_784_15_10_sigmoid", 11_935, (10,)),
])
def test_shipped_models(models_dir, name, params, output):
    graph = build_graph_from(models_dir / f"{name}.json")
    assert graph.param_count == params
    assert graph.output.output_shape == output
