"""The speed paths keep the numbers: float32 end to end, parameter-only backward, malloc tuning."""

from __future__ import annotations

import numpy as np
import pytest

from layerkit.modelfile.build import build_model
from layerkit.layers.conv import Conv2D
from layerkit.layers.dense import Dense
from layerkit.nn.losses import SoftmaxCrossEntropy
from layerkit.parallel.malloc import tune_malloc
from layerkit.training.trainer import build_optimizer

ALEXNET_LIKE = {
    "format": 1, "name": "alexnet_like", "input": {"shape": [1, 12, 12]},
    "layers": [
        {"name": "conv1", "type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same", "use_bias": False},
        {"name": "bn1", "type": "batch_norm"},
        {"type": "relu"},
        {"name": "conv2", "type": "conv2d", "filters": 6, "kernel_size": 3, "padding": "same"},
        {"name": "bn2", "type": "batch_norm"},
        {"type": "relu"},
        {"name": "pool1", "type": "max_pool2d", "pool_size": 2},
        {"name": "conv3", "type": "conv2d", "filters": 4, "kernel_size": 3, "stride": 2, "padding": 1},
        {"type": "flatten"},
        {"name": "fc1", "type": "dense", "units": 8, "use_bias": False},
        {"name": "bn3", "type": "batch_norm"},
        {"type": "relu"},
        {"type": "dropout", "rate": 0.5},
        {"name": "logits", "type": "dense", "units": 3},
    ],
    "loss": {"type": "softmax_cross_entropy"},
    "training": {"optimizer": {"type": "adam"}, "weight_decay": 1e-4},
}


def test_float32_through_an_alexnet_like_training_step():
    model = build_model(ALEXNET_LIKE)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 1, 12, 12)).astype(np.float32)
    y = rng.integers(0, 3, 5)
    out, caches = model.forward(x, training=True, rng=rng)
    assert out.dtype == np.float32
    loss = SoftmaxCrossEntropy()
    _, lcache = loss.forward(out, y)
    grads = model.backward(caches, loss.backward(lcache))
    assert all(g.dtype == np.float32 for tensors in grads.values() for g in tensors.values())
    opt = build_optimizer(model, ALEXNET_LIKE["training"]["optimizer"], 1e-4)
    opt.step([grads[node.name][t] for node in model.nodes for t in model.params[node.name]])
    assert all(v.dtype == np.float32 for _, _, v in model.parameters())
    assert all(v.dtype == np.float32 for tensors in model.state.values() for v in tensors.values())


@pytest.mark.parametrize("layer, shape", [
    (Conv2D(filters=3, kernel_size=3, stride=1, padding="same", dilation=1, groups=1, use_bias=True,
            init="he_normal"), (2, 5, 5)),
    (Conv2D(filters=4, kernel_size=3, stride=2, padding=1, dilation=1, groups=2, use_bias=True,
            init="he_normal"), (2, 7, 6)),
    (Dense(units=3, use_bias=True, init="glorot_uniform"), (6,)),
], ids=["conv-wide", "conv-strided", "dense"])
def test_backward_params_matches_backward(layer, shape):
    rng = np.random.default_rng(1)
    params = {k: rng.standard_normal(s.shape) for k, s in layer.param_specs(shape).items()}
    x = rng.standard_normal((3, *shape))
    y, cache = layer.forward(params, x, training=True)
    dy = rng.standard_normal(y.shape)
    _, full = layer.backward(params, cache, dy)
    only = layer.backward_params(params, cache, dy)
    assert set(only) == set(full)
    for name in full:
        np.testing.assert_array_equal(only[name], full[name])


def test_model_backward_skips_only_the_data_gradient():
    model = build_model(ALEXNET_LIKE).astype(np.float64)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 1, 12, 12))
    dout = rng.standard_normal((4, 3))
    _, caches = model.forward(x, training=True, rng=np.random.default_rng(3))
    fast = model.backward(caches, dout)
    full_backward(model)
    _, caches = model.forward(x, training=True, rng=np.random.default_rng(3))
    slow = model.backward(caches, dout)
    for node, tensors in slow.items():
        for name, grad in tensors.items():
            np.testing.assert_array_equal(fast[node][name], grad)


def full_backward(model):
    """Make ``model`` run every layer's full backward, as before the shortcuts."""
    n = len(model.nodes)
    model._params_only, model._skip, model._needs_grad = [False] * n, [False] * n, [False] + [True] * n


MLP = {"format": 1, "name": "mlp", "input": {"shape": [1, 4, 4]},
       "layers": [{"type": "flatten"}, {"name": "fc1", "type": "dense", "units": 5}, {"type": "relu"},
                  {"name": "fc2", "type": "dense", "units": 3}],
       "loss": {"type": "softmax_cross_entropy"}}


def test_backward_stops_where_no_parameter_lies_upstream(monkeypatch):
    model = build_model(MLP).astype(np.float64)
    rng = np.random.default_rng(4)
    x, dout = rng.standard_normal((6, 1, 4, 4)), rng.standard_normal((6, 3))
    _, caches = model.forward(x, training=True)
    calls = []
    for node in model.nodes:
        layer = node.layer
        monkeypatch.setattr(layer, "backward", (lambda f, name: lambda *a: calls.append(name) or f(*a))(
            layer.backward, node.name), raising=False)
    fast = model.backward(caches, dout)
    # fc1 reads the flattened data: parameters only; flatten's gradient nobody needs
    assert calls == ["fc2", "relu_2"]
    assert fast["flatten_0"] == {}
    full_backward(model)
    _, caches = model.forward(x, training=True)
    slow = model.backward(caches, dout)
    assert calls[2:] == ["fc2", "relu_2", "fc1", "flatten_0"]
    for node, tensors in slow.items():
        for name, grad in tensors.items():
            np.testing.assert_array_equal(fast[node][name], grad)


def test_tune_malloc_is_idempotent():
    assert tune_malloc() == tune_malloc()
