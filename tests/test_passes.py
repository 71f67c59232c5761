"""Each graph pass of layerkit.nn.passes: applied where its conditions hold, left out where they do not,
and the rewritten network giving the plain network's numbers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from layerkit import hookimpl
from layerkit.layers.activations import ReLU
from layerkit.modelfile.build import build_model
from layerkit.nn import passes
from layerkit.nn.capabilities import (AbsorbsAffine, CommutesWithMax, FreshGradient, InplaceBackward, MaxPooling,
                                      declares)
from layerkit.nn.layer import Coupling, Example, Layer, overrides
from layerkit.nn.plan import BackwardCall, InferCall
from layerkit.nn.planner import plan_training
from layerkit.plugins.manager import load_registry


def spec(input_shape, *layers):
    return {"format": 1, "name": "passes", "input": {"shape": list(input_shape)}, "layers": list(layers),
            "loss": {"type": "mse"}}


CONV = {"name": "conv", "type": "conv2d", "filters": 2, "kernel_size": 3, "padding": 1}
POOL = {"name": "pool", "type": "max_pool2d", "pool_size": 2}
FLAT_OUT = [{"type": "flatten"}, {"name": "out", "type": "dense", "units": 2}]


class NoisyRelu(CommutesWithMax, Layer):
    """A relu that adds noise in training: it commutes with max, but draws random numbers."""

    type = "noisy_relu"
    sample_coupling = Coupling.NONE
    uses_rng = True
    examples = (Example({}, (4,)),)

    def forward(self, params, x, training=False, rng=None, state=None):
        noise = rng.uniform(0, 1e-3, x.shape).astype(x.dtype) if training and rng is not None else 0
        y = np.maximum(x + noise, 0)
        return y, y

    def backward(self, params, cache, dy):
        return dy * (cache > 0), {}


class MixinRelu(CommutesWithMax, InplaceBackward, FreshGradient, Layer):
    """A third-party relu that opts in through the capability mixins."""

    type = "mixin_relu"
    sample_coupling = Coupling.NONE
    examples = (Example({}, (4,)),)
    forward = ReLU.forward
    backward = ReLU.backward
    backward_inplace = ReLU.backward_inplace
    _masked = staticmethod(ReLU._masked)


class PlainRelu(Layer):
    """A relu written for 0.1: the capability declared by setting the member itself."""

    type = "plain_relu"
    sample_coupling = Coupling.NONE
    examples = (Example({}, (4,)),)
    commutes_with_max = True
    forward = ReLU.forward
    backward = ReLU.backward
    _masked = staticmethod(ReLU._masked)


class Plugin:
    @hookimpl
    def layerkit_register_layers(self, register):
        for cls in (NoisyRelu, MixinRelu, PlainRelu):
            register(cls)


REGISTRY = load_registry([Plugin()])


def build(*layers, input_shape=(1, 6, 6)):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a capability declared either way loads without a warning
        return build_model(spec(input_shape, *layers), registry=REGISTRY)


def records(model):
    return {rec.name: rec for rec in model.plan.nodes}


def assert_training_matches_plain(model, batch=(3, 1, 6, 6)):
    """The planned forward and backward against the wiring alone (no pass run)."""
    rng = np.random.default_rng(0)
    x = (rng.integers(-3, 4, batch) * 0.5).astype(np.float32)
    out, caches = model.forward(x, training=True, rng=np.random.default_rng(1))
    dout = rng.standard_normal(out.shape).astype(np.float32)
    grads = model.backward(caches, dout.copy())
    planned = model.plan
    model.plan = plan_training(model.nodes, run=())
    try:
        plain_out, caches = model.forward(x, training=True, rng=np.random.default_rng(1))
        plain = model.backward(caches, dout.copy())
    finally:
        model.plan = planned
    np.testing.assert_array_equal(out, plain_out)
    for name, tensors in plain.items():
        for tname, g in tensors.items():
            np.testing.assert_array_equal(grads[name][tname], g, err_msg=f"{name}.{tname}")


# -- pool_first --------------------------------------------------------------------------------------


@pytest.mark.parametrize("relu", ["relu", "mixin_relu", "plain_relu"])
def test_pool_first_moves_a_relu_read_only_by_a_max_pool(relu):
    model = build(CONV, {"name": "act", "type": relu}, POOL, *FLAT_OUT)
    recs = records(model)
    assert recs["act"].runs_after_pool and recs["pool"].then == recs["act"].index
    assert recs["act"].infer is InferCall.ALIAS and recs["act"].alias == recs["act"].inputs[0]
    assert_training_matches_plain(model)


@pytest.mark.parametrize("layers, why", [
    ([CONV, {"name": "act", "type": "relu"}, POOL, {"name": "other", "type": "flatten", "inputs": ["act"]},
      {"type": "flatten", "inputs": ["pool"]}, {"type": "concat", "inputs": ["other", "flatten_4"]},
      {"name": "out", "type": "dense", "units": 2}], "the relu has two readers"),
    ([CONV, {"name": "act", "type": "noisy_relu"}, POOL, *FLAT_OUT], "the activation draws random numbers"),
    ([CONV, {"name": "act", "type": "sigmoid"}, POOL, *FLAT_OUT], "sigmoid does not declare CommutesWithMax"),
    ([CONV, {"name": "act", "type": "relu"}, {"name": "pool", "type": "avg_pool2d", "pool_size": 2}, *FLAT_OUT],
     "an average pool is no MaxPooling"),
    ([CONV, {"name": "act", "type": "prelu"}, POOL, *FLAT_OUT], "prelu has parameters"),
])
def test_pool_first_leaves_other_activations_in_place(layers, why):
    model = build(*layers)
    assert not any(rec.runs_after_pool or rec.then is not None for rec in model.plan.nodes), why
    assert_training_matches_plain(model)


def test_pool_first_is_a_function_of_the_plan_alone():
    model = build(CONV, {"name": "act", "type": "relu"}, POOL, *FLAT_OUT)
    plain = plan_training(model.nodes, run=())
    moved = passes.pool_first(plain)
    assert not any(rec.runs_after_pool for rec in plain.nodes)  # the input plan is left as it was
    assert [rec.name for rec in moved.nodes if rec.runs_after_pool] == ["act"]


# -- choose_backward_calls -----------------------------------------------------------------------------


def test_backward_calls_skip_what_no_parameter_needs_and_write_into_fresh_gradients():
    model = build({"type": "flatten"}, {"name": "d1", "type": "dense", "units": 4}, {"name": "r", "type": "relu"},
                  {"name": "bn", "type": "batch_norm"}, {"name": "out", "type": "dense", "units": 2},
                  input_shape=(1, 3, 3))
    calls = {name: call for name, call in model.plan.backward_calls().items()}
    assert calls["flatten_0"] is BackwardCall.SKIP and calls["d1"] is BackwardCall.BACKWARD_PARAMS
    # bn's dy is the last dense layer's dx, which dense does not promise fresh; relu's is bn's (fresh)
    assert calls["bn"] is BackwardCall.BACKWARD and calls["r"] is BackwardCall.BACKWARD_INPLACE
    assert calls["out"] is BackwardCall.BACKWARD  # the loss's gradient belongs to the caller
    assert_training_matches_plain(model, batch=(4, 1, 3, 3))


def test_backward_calls_never_write_into_a_shared_or_a_non_owned_gradient():
    model = build(CONV, {"name": "a", "type": "relu"}, {"name": "b", "type": "relu"},
                  {"name": "c", "type": "relu", "inputs": ["a"]}, {"name": "sum", "type": "add", "inputs": ["b", "c"]},
                  {"name": "r", "type": "relu"}, *FLAT_OUT)
    calls = model.plan.backward_calls()
    # b and c get add's dx, the one array add was handed; a gets the sum of two (a new array);
    # add is fed relu r's fresh gradient, but has no in-place path of its own
    assert calls["b"] is calls["c"] is BackwardCall.BACKWARD
    assert calls["a"] is BackwardCall.BACKWARD_INPLACE and calls["sum"] is BackwardCall.BACKWARD
    assert not overrides(model.graph.node("sum").layer, "backward_inplace")
    assert_training_matches_plain(model)


# -- fold_batch_norm -----------------------------------------------------------------------------------


def _statistics(model, rng):
    for table in (model.params, model.state):
        for tname, value in ((t, v) for tensors in table.values() for t, v in tensors.items()):
            if tname in ("gamma", "running_var"):
                value[...] = rng.uniform(0.5, 2.0, value.shape)
            elif tname in ("beta", "running_mean"):
                value[...] = rng.standard_normal(value.shape)


def folded(model):
    plan = model.inference_plan()
    return [rec.name for rec in plan.nodes if rec.infer_params is not None], plan


@pytest.mark.parametrize("layers, input_shape, want", [
    ([CONV, {"name": "bn", "type": "batch_norm"}, *FLAT_OUT], (1, 6, 6), ["conv"]),
    ([{"type": "flatten"}, {"name": "d", "type": "dense", "units": 3}, {"name": "bn", "type": "batch_norm"},
      {"name": "out", "type": "dense", "units": 2}], (1, 2, 2), ["d"]),
    # a dense layer on a 3-d input scales its last axis; batch norm's channels are the first: no
    # fold, though there are as many channels as units
    ([{"name": "d", "type": "dense", "units": 3}, {"name": "bn", "type": "batch_norm"}, *FLAT_OUT],
     (3, 4, 5), []),
    # the conv output has a second reader, which needs the unscaled values
    ([CONV, {"name": "bn", "type": "batch_norm"}, {"name": "sum", "type": "add", "inputs": ["bn", "conv"]},
      *FLAT_OUT], (1, 6, 6), []),
])
def test_fold_batch_norm_where_the_channels_line_up(layers, input_shape, want):
    model = build(*layers, input_shape=input_shape)
    rng = np.random.default_rng(3)
    _statistics(model, rng)
    names, plan = folded(model)
    assert names == want
    bn = records(model)["bn"]
    assert (plan.nodes[bn.index].infer is InferCall.ALIAS) == bool(want)
    x = rng.standard_normal((5, *input_shape)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), model.forward(x)[0], rtol=1e-4, atol=1e-4)


def test_dense_declares_its_fold_axis():
    dense = REGISTRY.layer("dense")
    assert declares(dense, AbsorbsAffine) and dense.affine_axis == -1
    assert REGISTRY.layer("conv2d").affine_axis == 0


# -- inplace_inference ---------------------------------------------------------------------------------


def test_inplace_inference_only_on_values_the_network_alone_holds():
    model = build({"name": "r0", "type": "relu"}, CONV, {"name": "r1", "type": "relu"},
                  {"name": "r2", "type": "relu", "inputs": ["conv"]},
                  {"name": "sum", "type": "add", "inputs": ["r1", "r2"]},
                  {"name": "r3", "type": "relu"}, *FLAT_OUT)
    plan = model.inference_plan()
    calls = {rec.name: rec.infer for rec in plan.nodes}
    # r0 reads the caller's batch; r1 reads conv's output, which r2 reads later; r2 is conv's last
    # reader; r3 reads add's output, which add does not promise fresh (FreshInferOutput)
    assert calls["r0"] is InferCall.INFER and calls["r1"] is InferCall.INFER
    assert calls["r2"] is InferCall.INFER_INPLACE and calls["r3"] is InferCall.INFER
    x = np.random.default_rng(4).standard_normal((3, 1, 6, 6)).astype(np.float32)
    before = x.copy()
    np.testing.assert_array_equal(model.predict(x), model.forward(x)[0])
    np.testing.assert_array_equal(x, before)


def test_inplace_inference_runs_a_moved_relu_in_place_on_the_pool_output():
    model = build(CONV, {"name": "act", "type": "relu"}, POOL, *FLAT_OUT)
    plan = model.inference_plan()
    assert plan.nodes[records(model)["pool"].index].then_infer is InferCall.INFER_INPLACE
    x = np.random.default_rng(5).standard_normal((3, 1, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x), model.forward(x)[0])


def test_capabilities_are_read_from_the_members():
    assert declares(ReLU, CommutesWithMax) and declares(PlainRelu, CommutesWithMax)
    assert not declares(NoisyRelu, MaxPooling) and declares(REGISTRY.layer("max_pool2d"), MaxPooling)
    # inheriting a method capability without implementing it declares nothing
    assert not declares(type("Lazy", (InplaceBackward, Layer), {"type": "lazy"}), InplaceBackward)
    assert not overrides(type("Lazy2", (InplaceBackward, Layer), {"type": "lazy2"}), "backward_inplace")
