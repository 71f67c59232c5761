"""Model.backward's plan (parameter-only and in-place calls, skipped layers) never changes a number.

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


def reference_backward(model, caches, dout):
    """Every node's plain backward, every gradient summed: no plan, no shortcut."""
    dvalues = {model.nodes[-1].name: dout}
    grads = {}
    for node, cache in zip(reversed(model.nodes), reversed(caches)):
        dx, grads[node.name] = node.layer.backward(model.params[node.name], cache, dvalues.pop(node.name))
        for name, d in zip(node.inputs, [dx] if node.layer.arity == 1 else dx):
            dvalues[name] = d if name not in dvalues else dvalues[name] + d
    assert set(dvalues) == {RESERVED_INPUT}
    return grads


@pytest.mark.parametrize("spec, shape", [(ALEXNET_LIKE, (4, 1, 12, 12)), (BRANCHED, (4, 2, 6, 6)),
                                         (MLP, (6, 1, 4, 4))], ids=["chain", "branched", "mlp"])
def test_planned_backward_equals_plain_backward(spec, shape):
    model = build_model(spec)
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(np.float32)
    dout = rng.standard_normal((shape[0], model.nodes[-1].output_shape[0])).astype(np.float32)
    keep = dout.copy()
    _, caches = model.forward(x, training=True, rng=np.random.default_rng(3))
    fast = model.backward(caches, dout)
    np.testing.assert_array_equal(dout, keep)  # the caller's gradient is never overwritten
    _, caches = model.forward(x, training=True, rng=np.random.default_rng(3))
    slow = reference_backward(model, caches, dout)
    for node in model.nodes:
        assert set(fast[node.name]) == set(node.param_specs)
        for name, grad in fast[node.name].items():
            np.testing.assert_array_equal(grad, slow[node.name][name], err_msg=f"{node.name}.{name}")


def test_plan_uses_the_speed_paths_where_they_are_safe():
    plan = dict(zip([n.name for n in build_model(MLP).nodes], build_model(MLP).backward_plan))
    # fc1 reads the flattened data: parameters only; flatten's gradient nobody needs
    assert plan == {"flatten_0": "skip", "fc1": "backward_params", "relu_2": "backward", "fc2": "backward"}
    model = build_model(BRANCHED)
    plan = dict(zip([n.name for n in model.nodes], model.backward_plan))
    # "a"'s gradient is the sum of two contributions (a new array), "sum"'s comes from the fresh
    # relu "r"; the last dense layer's dy is the caller's, so it is never written into
    assert plan["a"] == "backward_inplace" and plan["sum"] == "backward_inplace"
    assert plan["out"] == "backward" and plan["conv"] == "backward_params"
    # "bn" and "b" get add's dx, which is the dy it was handed, shared by both
    assert plan["bn"] == "backward" and plan["b"] == "backward"
