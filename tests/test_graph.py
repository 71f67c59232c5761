"""Graph wiring: order, consumers, and every DAG error naming the layer."""

from __future__ import annotations

import pytest
from _core_layers import core_registry, flat_model

from layerkit.errors import GraphError, LayerkitError
from layerkit.modelfile.shapes import build_graph
from layerkit.modelfile.spec import LayerSpec, ModelSpec, spec_from_dict


@pytest.fixture(scope="module")
def registry():
    return core_registry()


def graph_of(data, registry):
    return build_graph(spec_from_dict(data, source="m.json", registry=registry), registry)


def errors(data, registry) -> list[str]:
    with pytest.raises(GraphError) as info:
        graph_of(data, registry)
    return str(info.value).splitlines()


def test_branches_are_ordered_and_consumers_known(registry):
    # "sum" is written before the branches it reads: file order is not data order
    data = flat_model({"name": "out", "type": "sum", "inputs": ["a", "b"]},
                      {"name": "h", "type": "dense", "units": 4, "inputs": "input"},
                      {"name": "a", "type": "scale", "inputs": "h"},
                      {"name": "b", "type": "scale", "inputs": "h"},
                      output="out")
    graph = graph_of(data, registry)
    assert [n.name for n in graph.nodes] == ["h", "a", "b", "out"]
    assert graph.output.name == "out"
    assert graph.node("h").consumers == ["a", "b"]
    assert graph.node("out").input_shape == [(4,), (4,)]
    with pytest.raises(KeyError):
        graph.node("missing")


def test_unknown_input_suggests_a_name(registry):
    data = flat_model({"name": "fc1", "type": "dense", "units": 3}, {"type": "scale", "inputs": "fc2"})
    assert errors(data, registry) == [
        "m.json: layers[1].inputs: 'scale_1' (scale) reads unknown layer 'fc2', did you mean 'fc1'?"]


def test_self_loop(registry):
    data = flat_model({"name": "fc", "type": "dense", "units": 3, "inputs": "fc"})
    assert errors(data, registry) == ["m.json: layers[0].inputs: 'fc' (dense) reads its own output (a self-loop)"]


def test_cycle_is_named_in_data_order(registry):
    data = flat_model({"name": "a", "type": "scale", "inputs": "c"},
                      {"name": "b", "type": "scale", "inputs": "a"},
                      {"name": "c", "type": "scale", "inputs": "b"},
                      {"name": "out", "type": "sum", "inputs": ["c", "input"]})
    assert errors(data, registry) == ["m.json: layers[0].inputs: the layers 'a' -> 'b' -> 'c' -> 'a' form a cycle"]


def test_unused_branch(registry):
    data = flat_model({"name": "h", "type": "dense", "units": 6},
                      {"name": "side", "type": "scale", "inputs": "h"},
                      {"name": "out", "type": "scale", "inputs": "h"})
    assert errors(data, registry) == [
        "m.json: layers[1]: 'side' (scale) does not contribute to the output 'out' (unused branch)"]


def test_unknown_output(registry):
    data = flat_model({"name": "logits", "type": "dense", "units": 2}, output="logit")
    assert errors(data, registry) == ["m.json: output: output 'logit' is not a layer name, did you mean 'logits'?"]


def test_output_other_than_last_layer_still_goes_last(registry):
    data = flat_model({"name": "out", "type": "scale", "inputs": "h"},
                      {"name": "h", "type": "dense", "units": 2, "inputs": "input"}, output="out")
    assert [n.name for n in graph_of(data, registry).nodes] == ["h", "out"]


@pytest.mark.parametrize("layer, message", [
    ({"type": "sum"}, "'sum_0' (sum) needs two or more inputs, got 1"),
    ({"type": "dense", "units": 2, "inputs": ["input", "input"]}, "'dense_0' (dense) takes 1 input, got 2"),
])
def test_wrong_number_of_inputs(registry, layer, message):
    assert errors(flat_model(layer), registry) == [f"m.json: layers[0].inputs: {message}"]


def test_build_graph_checks_hand_made_specs_too(registry):
    spec = ModelSpec(name="h", input_shape=(4,), output="a", loss={}, training={}, source="h.json",
                     layers=[LayerSpec(0, "a", "sum", ["input"], {})])
    with pytest.raises(GraphError, match=r"needs two or more inputs, got 1"):
        build_graph(spec, registry)
    spec.layers[0].type = "nonexistent"
    with pytest.raises(LayerkitError, match="unknown layer type 'nonexistent'"):
        build_graph(spec, registry)
