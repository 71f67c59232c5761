"""The opt-in in-place backward (``fresh_dx`` / ``backward_inplace``) never changes a number."""

from __future__ import annotations

import numpy as np
import pytest

from layerkit.modelfile.build import build_model
from layerkit.layers.activations import ReLU
from layerkit.layers.normalization import BatchNorm

from test_speed_paths import ALEXNET_LIKE

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


@pytest.mark.parametrize("layer, shape", [
    (ReLU(), (3, 5, 5)), (BatchNorm(momentum=0.9, epsilon=1e-5), (3, 5, 5)),
    (BatchNorm(momentum=0.9, epsilon=1e-5), (6,)),
], ids=["relu", "bn-maps", "bn-flat"])
@pytest.mark.parametrize("training", [True, False])
def test_backward_inplace_matches_backward(layer, shape, training):
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(s.shape).astype(np.float32) for k, s in layer.param_specs(shape).items()}
    state = {k: np.abs(rng.standard_normal(s.shape)).astype(np.float32) for k, s in layer.state_specs(shape).items()}
    x = rng.standard_normal((40, *shape)).astype(np.float32)
    y, cache = layer.forward(params, x, training, rng, state)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, grads = layer.backward(params, cache, dy.copy())
    owned = dy.copy()
    dx2, grads2 = layer.backward_inplace(params, cache, owned)
    np.testing.assert_array_equal(dx, dx2)
    for name in grads:
        np.testing.assert_array_equal(grads[name], grads2[name])


@pytest.mark.parametrize("spec, shape", [(ALEXNET_LIKE, (4, 1, 12, 12)), (BRANCHED, (4, 2, 6, 6))],
                         ids=["chain", "branched"])
def test_model_gradients_identical_with_and_without_inplace(spec, shape):
    model = build_model(spec)
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(np.float32)
    dout = rng.standard_normal((shape[0], model.nodes[-1].output_shape[0])).astype(np.float32)
    keep = dout.copy()
    _, caches = model.forward(x, training=True, rng=np.random.default_rng(3))
    fast = model.backward(caches, dout)
    np.testing.assert_array_equal(dout, keep)  # the caller's gradient is never overwritten
    model._inplace = [False] * len(model.nodes)
    _, caches = model.forward(x, training=True, rng=np.random.default_rng(3))
    slow = model.backward(caches, dout)
    for node, tensors in slow.items():
        for name, grad in tensors.items():
            np.testing.assert_array_equal(fast[node][name], grad)
