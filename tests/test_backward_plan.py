"""The backward calls the plan chooses (parameter-only and in-place calls, skipped layers) never change a number.

The reference here calls nothing but ``Layer.backward`` on every node and adds up every
gradient; the layers' own speed paths are checked one by one by the conformance suite.
"""

from __future__ import annotations

import numpy as np
import pytest

from layerkit.modelfile.build import build_model
from layerkit.nn.layer import RESERVED_INPUT

from test_speed_paths import ALEXNET_LIKE, MLP

BRANCHED = {
    "format": 1, "name": "branched", "input": {"shape": [2, 6, 6]},
    "layers": [
        {"name": "conv", "type": "conv2d", "filters": 3, "kernel_size": 3, "padding": "same"},
        {"name": "a", "type": "relu"},
        {"name": "bn", "type": "batch_norm", "inputs": ["a"]},
        {"name": "b", "type": "relu", "inputs": ["a"]},
        {"name": "sum", "type": "add", "inputs": ["bn", "b"]},
        {"name": "r", "type": "relu"},
        {"type": "flatten"},
        {"name": "out", "type": "dense", "units": 2},
    ],
    "loss": {"type": "softmax_cross_entropy"},
}


# relu before max pools (2x2, overlapping 3x3 with padding, global): the model pools first
POOLED = {
    "format": 1, "name": "pooled", "input": {"shape": [1, 10, 10]},
    "layers": [
        {"name": "conv1", "type": "conv2d", "filters": 3, "kernel_size": 3},
        {"type": "relu"},
        {"name": "pool1", "type": "max_pool2d", "pool_size": 2},
        {"name": "conv2", "type": "conv2d", "filters": 4, "kernel_size": 2, "padding": 1},
        {"type": "relu"},
        {"name": "pool2", "type": "max_pool2d", "pool_size": 3, "stride": 2, "padding": 1},
        {"type": "relu"},
        {"name": "pool3", "type": "global_max_pool2d"},
        {"name": "out", "type": "dense", "units": 2},
    ],
    "loss": {"type": "softmax_cross_entropy"},
}


def calls(model) -> dict[str, str]:
    """Per node, the name of the Layer method backward calls."""
    return {name: call.value for name, call in model.plan.backward_calls().items()}


def reference_forward(model, x, rng):
    """Every node's plain forward in file order: no activation moved after a pool."""
    values, caches = {RESERVED_INPUT: x}, []
    for node in model.nodes:
        inp = values[node.inputs[0]] if node.layer.arity == 1 else [values[name] for name in node.inputs]
        values[node.name], cache = node.layer.forward(model.params[node.name], inp, True, rng,
                                                      model.state[node.name])
        caches.append(cache)
    return values[model.nodes[-1].name], caches


def reference_backward(model, caches, dout):
    """Every node's plain backward, every gradient summed: no plan, no shortcut."""
    dvalues = {model.nodes[-1].name: dout}
    grads = {}
    for node, cache in zip(reversed(model.nodes), reversed(caches), strict=True):
        dx, grads[node.name] = node.layer.backward(model.params[node.name], cache, dvalues.pop(node.name))
        for name, d in zip(node.inputs, [dx] if node.layer.arity == 1 else dx, strict=True):
            dvalues[name] = d if name not in dvalues else dvalues[name] + d
    assert set(dvalues) == {RESERVED_INPUT}
    return grads


@pytest.mark.parametrize("spec, shape", [(ALEXNET_LIKE, (4, 1, 12, 12)), (BRANCHED, (4, 2, 6, 6)),
                                         (MLP, (6, 1, 4, 4)), (POOLED, (5, 1, 10, 10))],
                         ids=["chain", "branched", "mlp", "pooled"])
def test_planned_backward_equals_plain_backward(spec, shape):
    model = build_model(spec)
    rng = np.random.default_rng(2)
    # a coarse grid of values: max-pool windows with ties, relu outputs of exactly zero
    x = (rng.integers(-3, 4, shape) * 0.5).astype(np.float32)
    dout = rng.standard_normal((shape[0], model.nodes[-1].output_shape[0])).astype(np.float32)
    keep = dout.copy()
    out, caches = model.forward(x, training=True, rng=np.random.default_rng(3))
    fast = model.backward(caches, dout)
    np.testing.assert_array_equal(dout, keep)  # the caller's gradient is never overwritten
    plain_out, caches = reference_forward(model, x, np.random.default_rng(3))
    np.testing.assert_array_equal(out, plain_out)
    slow = reference_backward(model, caches, dout)
    for node in model.nodes:
        assert set(fast[node.name]) == set(node.param_specs)
        for name, grad in fast[node.name].items():
            np.testing.assert_array_equal(grad, slow[node.name][name], err_msg=f"{node.name}.{name}")


def test_plan_uses_the_speed_paths_where_they_are_safe():
    plan = calls(build_model(MLP))
    # fc1 reads the flattened data: parameters only; flatten's gradient nobody needs
    assert plan == {"flatten_0": "skip", "fc1": "backward_params", "relu_2": "backward", "fc2": "backward"}
    model = build_model(BRANCHED)
    plan = calls(model)
    # "a"'s gradient is the sum of two contributions (a new array); "sum"'s comes from the fresh
    # relu "r", but add has no in-place path; the last dense layer's dy is the caller's, so it is
    # never written into
    assert plan["a"] == "backward_inplace" and plan["sum"] == "backward"
    assert plan["out"] == "backward" and plan["conv"] == "backward_params"
    # "bn" and "b" get add's dx, which is the dy it was handed, shared by both
    assert plan["bn"] == "backward" and plan["b"] == "backward"


def test_relu_before_a_max_pool_runs_after_it():
    model = build_model(POOLED)
    moved = [rec.name for rec in model.plan.nodes if rec.runs_after_pool]
    assert moved == ["relu_1", "relu_4", "relu_6"]
    plan = calls(model)
    # each relu gets the dy its pool would have had, each pool the relu's input gradient: relu_4's
    # comes from pool3 through relu_6 (a new array), relu_1's and relu_6's are conv2's and dense's
    assert [plan[name] for name in ("relu_1", "relu_4", "relu_6")] == ["backward", "backward_inplace", "backward"]
    assert plan["pool1"] == plan["pool2"] == plan["pool3"] == "backward"
    # a relu read by a max pool and by something else keeps the file's order
    twice = {
        "format": 1, "name": "twice", "input": {"shape": [1, 6, 6]},
        "layers": [
            {"name": "conv", "type": "conv2d", "filters": 2, "kernel_size": 3, "padding": 1},
            {"name": "r", "type": "relu"},
            {"name": "mx", "type": "max_pool2d", "pool_size": 2},
            {"name": "av", "type": "avg_pool2d", "pool_size": 2, "inputs": ["r"]},
            {"name": "sum", "type": "add", "inputs": ["mx", "av"]},
            {"type": "flatten"},
            {"name": "out", "type": "dense", "units": 2},
        ],
        "loss": {"type": "softmax_cross_entropy"},
    }
    assert not any(rec.runs_after_pool for rec in build_model(twice).plan.nodes)
