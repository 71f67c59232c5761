"""The inference paths (Layer.infer, inference_affine, fold_affine; Model.infer/predict) give
forward's inference numbers, and the conformance suite catches a layer whose claim is wrong."""

from __future__ import annotations

import numpy as np
import pytest

from layerkit.nn.plan import InferCall
from layerkit.modelfile.build import build_model
from layerkit.nn.layer import Example, Layer
from layerkit.testing import run_layer_test

from test_contract_checks import Scale as _Scale
from test_speed_paths import ALEXNET_LIKE


def _trained_statistics(model, rng):
    """Running statistics and affine parameters away from their initial 0/1, so folding does something."""
    for node in model.nodes:
        for name, value in {**model.params[node.name], **model.state[node.name]}.items():
            if name in ("gamma", "running_var"):
                value[...] = rng.uniform(0.5, 2.0, value.shape)
            elif name in ("beta", "running_mean", "b"):
                value[...] = rng.standard_normal(value.shape)


def test_predict_folds_batch_norm_and_matches_forward():
    model = build_model(ALEXNET_LIKE)
    rng = np.random.default_rng(0)
    _trained_statistics(model, rng)
    x = rng.standard_normal((7, 1, 12, 12)).astype(np.float32)
    plan = model.inference_plan()
    folded = [rec.name for rec in plan.nodes if rec.infer is InferCall.ALIAS and not rec.runs_after_pool]
    # every batch norm here follows a conv or dense layer that feeds only it
    assert folded == ["bn1", "bn2", "bn3"]
    # the relu before pool1 runs after it (on the pooled output, in place), its own step an alias
    moved = [rec.name for rec in plan.nodes if rec.runs_after_pool]
    assert moved == ["relu_5"] and plan.nodes[5].alias == 5
    # relu after a folded conv or dense output overwrites it; dropout returns its input
    # unchanged in inference (no infer_fresh), so the dense layer after it cannot write there
    inplace = [rec.layer.type for rec in plan.nodes if rec.infer is InferCall.INFER_INPLACE]
    assert inplace == ["relu", "relu"]
    reference, _ = model.forward(x, training=False)
    out = model.predict(x, batch_size=3)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-4)
    # the fold never touches the model's own parameters
    again, _ = model.forward(x, training=False)
    np.testing.assert_array_equal(again, reference)


def test_no_fold_when_the_conv_output_has_another_reader():
    spec = {
        "format": 1, "name": "branch", "input": {"shape": [2, 6, 6]},
        "layers": [
            {"name": "conv", "type": "conv2d", "filters": 2, "kernel_size": 3, "padding": "same"},
            {"name": "bn", "type": "batch_norm"},
            {"name": "sum", "type": "add", "inputs": ["bn", "conv"]},
            {"type": "flatten"},
            {"name": "logits", "type": "dense", "units": 3},
        ],
        "loss": {"type": "softmax_cross_entropy"},
    }
    model = build_model(spec)
    rng = np.random.default_rng(1)
    _trained_statistics(model, rng)
    plan = model.inference_plan()
    assert all(rec.infer is not InferCall.ALIAS and rec.infer_params is None for rec in plan.nodes)
    # the conv's output has two readers: neither may overwrite it
    assert not any(rec.infer is InferCall.INFER_INPLACE for rec in plan.nodes)
    x = rng.standard_normal((4, 2, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x), model.forward(x, training=False)[0])


class _InferOff(_Scale):
    type = "broken_infer"

    def infer(self, params, x, state=None):
        return x * params["s"] + 1e-3


class _AffineOff(_Scale):
    type = "broken_inference_affine"

    def inference_affine(self, params, state=None):
        return params["s"], np.full_like(params["s"], 0.5)


class _InplaceOff(_Scale):
    type = "broken_infer_inplace"

    def infer_inplace(self, params, x, state=None):
        x *= params["s"]
        return x[:, ::-1][:, ::-1]  # right values, but a view of x rather than x itself


class _InplaceWrong(_Scale):
    type = "broken_infer_inplace_values"

    def infer_inplace(self, params, x, state=None):
        return np.multiply(x, params["s"] * 1.001, out=x)


class _NotFresh(Layer):
    """Identity in inference, as dropout is, but claims its output is a new array."""

    type = "broken_infer_fresh"
    description = "identity"
    examples = (Example({}, (3,)),)
    infer_fresh = True

    def forward(self, params, x, training=False, rng=None, state=None):
        return x, None

    def backward(self, params, cache, dy):
        return dy.copy(), {}


class _FoldOff(_Scale):
    type = "broken_fold_affine"

    def fold_affine(self, params, scale, shift):
        return {"s": params["s"] * scale + shift}  # puts the shift into the scale


def test_correct_inference_paths_pass():
    run_layer_test(_Scale, {}, (3,))


@pytest.mark.parametrize("cls, message", [
    (_InferOff, "infer differs from forward's inference output"),
    (_InplaceOff, "view of its input"),
    (_InplaceWrong, "infer_inplace differs from infer"),
    (_NotFresh, "declares infer_fresh"),
    (_AffineOff, "inference_affine"),
    (_FoldOff, "fold_affine"),
])
def test_wrong_inference_paths_are_caught(cls, message):
    with pytest.raises(AssertionError, match=message):
        run_layer_test(cls, {}, (3,))


def test_predict_leaves_the_callers_array_alone():
    """The model input is never overwritten, even where the first layer could work in place."""
    spec = {"format": 1, "name": "relu_first", "input": {"shape": [4]},
            "layers": [{"type": "relu"}, {"name": "logits", "type": "dense", "units": 3}],
            "loss": {"type": "softmax_cross_entropy"}}
    model = build_model(spec)
    x = np.random.default_rng(3).standard_normal((6, 4)).astype(np.float32)
    before = x.copy()
    assert not any(rec.infer is InferCall.INFER_INPLACE for rec in model.inference_plan().nodes)
    np.testing.assert_array_equal(model.predict(x), model.forward(before, training=False)[0])
    np.testing.assert_array_equal(x, before)
