"""A frozen layer below which a parameter learns computes its input gradient alone (``backward_input``):
no weight gradient is paid for, and training gives the numbers the full ``backward`` gave."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import layerkit
from layerkit.capabilities import InputGradientOnly
from layerkit.layers.conv import Conv2D
from layerkit.layers.conv_transpose import Conv2DTranspose
from layerkit.layers.dense import Dense
from layerkit.nn.capabilities import declares
from layerkit.nn.plan import BackwardCall
from layerkit.plugins.manager import load_registry
from layerkit.training.trainer import build_loss

#: the layers' own calls to backward_params, in order (backward makes one; backward_input must not)
PARAM_GRADIENTS: list[str] = []


class CountingDense(Dense):
    """Dense, recording each parameter-gradient computation."""

    type = "counting_dense"

    def backward_params(self, params, cache, dy):
        PARAM_GRADIENTS.append(self.type)
        return super().backward_params(params, cache, dy)


def _without_input_only(base: type, name: str) -> type:
    # the mixin's own fallback does not count as providing it: the planner falls back to backward,
    # the path every frozen layer took before backward_input existed
    return type(f"Old{base.__name__}", (base,), {"type": name, "backward_input": InputGradientOnly.backward_input})


OldDense = _without_input_only(Dense, "old_dense")
OldConv2D = _without_input_only(Conv2D, "old_conv2d")
OldConv2DTranspose = _without_input_only(Conv2DTranspose, "old_conv2d_transpose")


class Plugin:
    @layerkit.hookimpl
    def layerkit_register_layers(self, register):
        for cls in (CountingDense, OldDense, OldConv2D, OldConv2DTranspose):
            register(cls)


MLP = {
    "format": 1, "name": "mlp", "input": {"shape": [6]},
    "layers": [
        {"name": "d1", "type": "dense", "units": 5},
        {"type": "tanh"},
        {"name": "d2", "type": "dense", "units": 4, "trainable": False},
        {"type": "tanh"},
        {"name": "out", "type": "dense", "units": 3},
    ],
    "loss": {"type": "softmax_cross_entropy"},
    "training": {"epochs": 2, "batch_size": 8, "weight_decay": 0.1, "optimizer": {"type": "adam", "lr": 0.01}},
}

CNN = {
    "format": 1, "name": "cnn", "input": {"shape": [2, 6, 6]},
    "layers": [
        {"name": "c1", "type": "conv2d", "filters": 3, "kernel_size": 3, "padding": 1},
        {"type": "relu"},
        {"name": "c2", "type": "conv2d", "filters": 4, "kernel_size": 3, "stride": 2, "padding": 1,
         "trainable": False},
        {"type": "relu"},
        {"name": "up", "type": "conv2d_transpose", "filters": 2, "kernel_size": 2, "stride": 2, "trainable": False},
        {"type": "flatten"},
        {"name": "out", "type": "dense", "units": 3},
    ],
    "loss": {"type": "softmax_cross_entropy"},
    "training": {"epochs": 2, "batch_size": 8, "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9}},
}


def retyped(spec: dict, types: dict[str, str]) -> dict:
    spec = copy.deepcopy(spec)
    for layer in spec["layers"]:
        layer["type"] = types.get(layer.get("name", ""), layer["type"])
    return spec


def data(spec: dict, n: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *spec["input"]["shape"])).astype(np.float32), rng.integers(0, 3, n)


@pytest.mark.parametrize("cls", [Dense, Conv2D, Conv2DTranspose])
def test_the_weight_layers_provide_the_input_gradient_alone(cls):
    assert declares(cls, InputGradientOnly)


def test_a_frozen_middle_dense_layer_computes_no_weight_gradient():
    registry = load_registry([Plugin()])
    model = layerkit.load(retyped(MLP, {"d2": "counting_dense"}), registry=registry)
    assert model.net.plan.backward_calls()["d2"] is BackwardCall.BACKWARD_INPUT
    x, y = data(MLP, 8)
    PARAM_GRADIENTS.clear()
    _, _, grads = model.net.loss_and_gradients(build_loss(model.net.graph.spec), x, y)
    assert PARAM_GRADIENTS == [] and grads["d2"] == {}
    model.unfreeze()  # learning again, it pays for its weight gradient
    model.net.loss_and_gradients(build_loss(model.net.graph.spec), x, y)
    assert PARAM_GRADIENTS == ["counting_dense"]


@pytest.mark.parametrize("spec, old", [
    (MLP, {"d2": "old_dense"}),
    (CNN, {"c2": "old_conv2d", "up": "old_conv2d_transpose"}),
], ids=["dense", "conv"])
def test_training_with_frozen_middle_layers_is_unchanged_bit_for_bit(spec, old):
    registry = load_registry([Plugin()])
    new_model = layerkit.load(spec, registry=registry)
    old_model = layerkit.load(retyped(spec, old), registry=registry)
    calls_new, calls_old = new_model.net.plan.backward_calls(), old_model.net.plan.backward_calls()
    for name in old:
        assert calls_new[name] is BackwardCall.BACKWARD_INPUT and calls_old[name] is BackwardCall.BACKWARD
    before = {k: v.copy() for k, v in new_model.weights().items()}
    assert all(np.array_equal(v, old_model.weights()[k]) for k, v in before.items())
    x, y = data(spec)
    new_model.fit(x, y, verbose=0)
    old_model.fit(x, y, verbose=0)
    new, after_old = new_model.weights(), old_model.weights()
    assert set(new) == set(after_old)
    for key in new:
        assert np.array_equal(new[key], after_old[key]), key
    assert not np.array_equal(new["params/out/W"], before["params/out/W"])  # it trained
    for name in old:  # and the frozen layers did not
        assert np.array_equal(new[f"params/{name}/W"], before[f"params/{name}/W"])
