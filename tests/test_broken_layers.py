"""Deliberately wrong backward passes: each must be caught, naming the layer and the tensor.
And the other direction: correct layers at their kinks must never fail."""

from __future__ import annotations

import numpy as np
import pytest

import layerkit
from layerkit.modelfile.build import build_model
from layerkit.gradcheck.layers import check_layer, check_layer_config
from layerkit.gradcheck.report import check_model
from layerkit.nn.layer import Coupling, Example, Layer, ParamSpec
from layerkit.plugins.manager import load_registry
from layerkit.errors import ContractError
from layerkit.testing import run_layer_test


class GoodDense(Layer):
    type = "good_dense"
    description = "y = x W + b"
    params_schema = {"type": "object", "properties": {"units": {"type": "integer", "default": 4}},
                     "additionalProperties": False}
    examples = (Example({"units": 4}, (4,)),)

    def output_shape(self, input_shape):
        return (self.units,)

    def param_specs(self, input_shape):
        return {"W": ParamSpec((input_shape[0], self.units), "glorot_uniform"), "b": ParamSpec((self.units,))}

    def forward(self, params, x, training=False, rng=None, state=None):
        return x @ params["W"] + params["b"], x

    def backward(self, params, cache, dy):
        return dy @ params["W"].T, {"W": cache.T @ dy, "b": dy.sum(axis=0)}


class DoubledInputGrad(GoodDense):
    type = "broken_dx_times_2"

    def backward(self, params, cache, dy):
        dx, grads = super().backward(params, cache, dy)
        return dx * 2, grads


class TransposedWeightGrad(GoodDense):
    type = "broken_transposed_w"

    def backward(self, params, cache, dy):
        dx, grads = super().backward(params, cache, dy)
        return dx, {**grads, "W": grads["W"].T}  # square W: the shape still fits


class ZeroBiasGrad(GoodDense):
    type = "broken_zero_bias"

    def backward(self, params, cache, dy):
        dx, grads = super().backward(params, cache, dy)
        return dx, {**grads, "b": np.zeros_like(grads["b"])}


class MissingBiasGrad(GoodDense):
    type = "broken_missing_bias"

    def backward(self, params, cache, dy):
        dx, grads = super().backward(params, cache, dy)
        del grads["b"]
        return dx, grads


class WrongDropoutScale(Layer):
    """Inverted dropout whose backward forgets the 1 / (1 - rate) scale."""

    type = "broken_dropout"
    description = "dropout, wrong backward"
    params_schema = {"type": "object", "properties": {"rate": {"type": "number", "default": 0.5}},
                     "additionalProperties": False}
    examples = (Example({"rate": 0.5}, (6,)),)
    uses_rng = True
    correct = False

    def forward(self, params, x, training=False, rng=None, state=None):
        if not training:
            return x, None
        mask = (rng.random(x.shape) >= self.rate) / (1 - self.rate)
        return x * mask, mask

    def backward(self, params, cache, dy):
        return dy * (cache != 0) if not self.correct else dy * cache, {}


class GoodDropout(WrongDropoutScale):
    type = "good_dropout"
    correct = True


class BatchNormNoMeanTerms(Layer):
    """Batch norm over the batch axis whose input gradient drops both mean terms."""

    type = "broken_batch_norm"
    description = "batch norm, wrong backward"
    examples = (Example({}, (5,)),)
    correct = False

    def param_specs(self, input_shape):
        return {"gamma": ParamSpec(tuple(input_shape), "ones"), "beta": ParamSpec(tuple(input_shape))}

    def state_specs(self, input_shape):
        return {"mean": ParamSpec(tuple(input_shape)), "var": ParamSpec(tuple(input_shape), "ones")}

    def forward(self, params, x, training=False, rng=None, state=None):
        mean, var = x.mean(axis=0), x.var(axis=0)
        state["mean"] *= 0.9  # running statistics change in training: the checker must copy them
        state["mean"] += 0.1 * mean
        inv = 1 / np.sqrt(var + 1e-5)
        xhat = (x - mean) * inv
        return params["gamma"] * xhat + params["beta"], (xhat, inv)

    def backward(self, params, cache, dy):
        xhat, inv = cache
        dxhat = dy * params["gamma"]
        if self.correct:
            dx = inv * (dxhat - dxhat.mean(axis=0) - xhat * (dxhat * xhat).mean(axis=0))
        else:
            dx = inv * dxhat
        return dx, {"gamma": (dy * xhat).sum(axis=0), "beta": dy.sum(axis=0)}


class GoodBatchNorm(BatchNormNoMeanTerms):
    type = "good_batch_norm"
    correct = True


class LeakyGradRelu(Layer):
    """A relu whose backward lets gradient through for negative inputs: kink skipping must not hide it."""

    type = "broken_relu"
    description = "relu, wrong backward"
    examples = (Example({}, (6,)),)
    has_kinks = True

    def forward(self, params, x, training=False, rng=None, state=None):
        return np.maximum(x, 0), x

    def backward(self, params, cache, dy):
        return dy, {}


class InPlaceRelu(Layer):
    """Right in isolation, wrong in a graph: backward writes into dy, which `add` shares between branches."""

    type = "inplace_relu"
    description = "relu that modifies dy"
    examples = (Example({}, (6,)),)
    has_kinks = True

    def forward(self, params, x, training=False, rng=None, state=None):
        return np.maximum(x, 0), x > 0

    def backward(self, params, cache, dy):
        dy *= cache
        return dy, {}


class BrokenLayers:
    @layerkit.hookimpl
    def layerkit_register_layers(self, register):
        for cls in (GoodDense, DoubledInputGrad, TransposedWeightGrad, ZeroBiasGrad, MissingBiasGrad,
                    WrongDropoutScale, GoodDropout, BatchNormNoMeanTerms, GoodBatchNorm, LeakyGradRelu,
                    InPlaceRelu):
            register(cls)


@pytest.fixture(scope="module")
def registry():
    reg = load_registry([BrokenLayers()])
    assert "broken_dx_times_2" in reg.names("layer")
    return reg


def model_with(layer: dict, extra: list | None = None) -> dict:
    return {
        "format": 1, "name": "broken", "input": {"shape": [4]},
        "layers": [{"name": "fc0", "type": "dense", "units": 4}, {"name": "suspect", **layer},
                   *(extra or []), {"name": "logits", "type": "dense", "units": 3}],
        "loss": {"type": "softmax_cross_entropy"},
    }


def statuses(report, scope="layer"):
    return {(r.layer, r.tensor): r.status for r in report.rows if r.scope == scope}


@pytest.mark.parametrize("layer_type, wrong", [
    ("broken_dx_times_2", "input"),
    ("broken_transposed_w", "W"),
    ("broken_zero_bias", "b"),
    ("broken_missing_bias", "b"),
])
def test_broken_dense_caught_in_model(registry, layer_type, wrong):
    model = build_model(model_with({"type": layer_type, "units": 4}), registry=registry)
    report = check_model(model, registry=registry)
    assert not report.ok
    got = statuses(report)
    assert got[("suspect", wrong)] == "fail"
    # only the broken tensor of the broken layer fails in isolation
    others = {k: v for k, v in got.items() if k != ("suspect", wrong)}
    assert set(others.values()) == {"pass"}, others
    assert "suspect" in report.blame and "fail in isolation" in report.blame
    assert f"suspect.{wrong}" in report.verdict()


def test_missing_gradient_is_reported_not_raised(registry):
    cls = registry.layer("broken_missing_bias")
    rows = {r.tensor: r for r in check_layer_config(cls, {"units": 4}, (4,))}
    assert rows["b"].status == "fail" and "no gradient" in rows["b"].message
    assert rows["W"].status == "pass"


def test_factor_bug_diagnosed_with_step_sweep(registry):
    rows = {r.tensor: r for r in check_layer_config(registry.layer("broken_dx_times_2"), {"units": 4}, (4,))}
    worst = rows["input"].worst
    assert [s for s, _, _ in worst.sweep] == [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7]
    # |2n - n| / 3|n| = 1/3 at every step (round-off may blur the smallest one)
    assert all(err > 0.3 for _, _, err in worst.sweep[:-1])
    assert "bug in backward" in worst.diagnosis and "analytic/numeric = 2" in worst.diagnosis
    assert worst.analytic == pytest.approx(2 * worst.numeric, rel=1e-6)


def test_wrong_dropout_scale_caught(registry):
    rows = check_layer_config(registry.layer("broken_dropout"), {"rate": 0.5}, (6,), batch_size=4)
    assert [(r.tensor, r.status) for r in rows] == [("input", "fail")]
    good = check_layer_config(registry.layer("good_dropout"), {"rate": 0.5}, (6,), batch_size=4)
    assert [(r.tensor, r.status) for r in good] == [("input", "pass")]


def test_wrong_dropout_scale_caught_in_model(registry):
    model = build_model(model_with({"type": "broken_dropout", "rate": 0.3}), registry=registry)
    report = check_model(model, registry=registry, batch_size=4)
    assert statuses(report)[("suspect", "input")] == "fail"
    # end to end the dense layer before it gets the wrong gradient
    assert statuses(report, "model")[("fc0", "W")] == "fail"


def test_batch_norm_without_mean_terms_caught(registry):
    rows = {r.tensor: r.status for r in check_layer_config(registry.layer("broken_batch_norm"), {}, (5,),
                                                           batch_size=4)}
    assert rows == {"input": "fail", "gamma": "pass", "beta": "pass"}
    good = {r.tensor: r.status for r in check_layer_config(registry.layer("good_batch_norm"), {}, (5,),
                                                           batch_size=4)}
    assert good == {"input": "pass", "gamma": "pass", "beta": "pass"}


def test_batch_norm_state_left_alone(registry):
    layer = registry.layer("good_batch_norm")()
    state = {"mean": np.zeros(5), "var": np.ones(5)}
    rng = np.random.default_rng(0)
    check_layer(layer, {"gamma": rng.standard_normal(5), "beta": rng.standard_normal(5)},
                rng.standard_normal((4, 5)) + 3, state=state)
    assert np.all(state["mean"] == 0)


def test_run_layer_test_names_layer_and_tensor(registry):
    with pytest.raises(ContractError, match=r"broken_transposed_w.*'W'") as caught:
        run_layer_test("broken_transposed_w", {"units": 4}, (4,), registry=registry)
    assert caught.value.check == "gradients_match_finite_differences" and caught.value.numbers["max_rel_error"] > 1e-4
    assert [r.tensor for r in caught.value.results if r.status == "fail"] == ["W"]
    with pytest.raises(ContractError, match=r"broken_missing_bias.*no gradient for parameter.*'b'") as caught:
        run_layer_test("broken_missing_bias", {"units": 4}, (4,), registry=registry)
    assert caught.value.check == "backward_gradient_shapes" and caught.value.member == "backward"
    run_layer_test("good_dense", {"units": 4}, (4,), registry=registry)


def test_kink_skipping_does_not_hide_a_wrong_relu(registry):
    x = np.linspace(-1, 1, 12).reshape(2, 6) + 0.01
    [row] = check_layer(registry.layer("broken_relu")(), {}, x)
    assert row.status == "fail"


def test_in_place_bug_only_end_to_end(registry):
    """Every layer passes alone; the end-to-end check fails and blames the wiring."""
    model = {
        "format": 1, "name": "branchy", "input": {"shape": [4]},
        "layers": [{"name": "fc0", "type": "dense", "units": 6},
                   {"name": "act", "type": "inplace_relu"},
                   {"name": "skip", "type": "add", "inputs": ["act", "fc0"]},
                   {"name": "logits", "type": "dense", "units": 3}],
        "loss": {"type": "softmax_cross_entropy"},
    }
    report = check_model(build_model(model, registry=registry), registry=registry)
    assert all(r.status == "pass" for r in report.layer_rows)
    assert statuses(report, "model")[("fc0", "W")] == "fail"
    assert statuses(report, "model")[("logits", "W")] == "pass"
    assert not report.ok
    assert "every layer passes in isolation" in report.blame and "fc0" in report.blame


# -- the other direction: kinks are never failures --------------------------------

def test_relu_at_exact_zeros_is_not_a_failure():
    from layerkit.plugins.manager import get_registry

    relu = get_registry().layer("relu")()
    x = np.array([[0.0, 0.0, 1.0, -1.0, 0.0, 2e-7], [0.0, -3e-7, 0.5, 0.0, -0.5, 0.0]])
    [row] = check_layer(relu, {}, x)
    assert row.status == "pass"
    assert row.kinks == 8  # the exact zeros and the two inputs within the step of 0
    assert row.checked == 4 and row.strategy == "exhaustive"


def test_max_pool_ties_are_not_failures():
    from layerkit.plugins.manager import get_registry

    pool = get_registry().layer("max_pool2d")(pool_size=2, stride=None, padding="valid")
    x = np.zeros((2, 2, 4, 4))
    x[:, :, :2, :2] = 1.0  # a tied window of ones
    x[0, 1, 2:, 2:] = [[3.0, 3.0], [2.0, 3.0]]
    rows = check_layer(pool, {}, x, samples=1000)
    assert [r.status for r in rows] == ["pass"]
    assert rows[0].kinks > 0


def test_only_kinks_is_skipped_not_failed():
    from layerkit.plugins.manager import get_registry

    [row] = check_layer(get_registry().layer("relu")(), {}, np.zeros((2, 3)))
    assert row.status == "skipped" and row.kinks == 6 and row.max_rel_error is None


class UndeclaredKinkRelu(LeakyGradRelu):
    """A correct relu that wrongly declares itself smooth: its kinks are not skipped but explained."""

    type = "undeclared_kink_relu"
    has_kinks = False

    def backward(self, params, cache, dy):
        return dy * (cache > 0), {}


def test_undeclared_kink_is_reported_as_such():
    [row] = check_layer(UndeclaredKinkRelu(), {}, np.array([[0.0, 1.0, -1.0], [2.0, 0.0, -2.0]]))
    assert row.status == "fail" and row.kinks == 0
    assert "has_kinks = False" in row.worst.diagnosis


class CentredButClaimsPerSample(GoodDense):
    """Subtracts the batch mean (correct gradients, but sample i's output depends on sample j)."""

    type = "broken_per_sample_claim"
    sample_coupling = Coupling.NONE

    def forward(self, params, x, training=False, rng=None, state=None):
        xc = x - x.mean(axis=0)
        return xc @ params["W"] + params["b"], xc

    def backward(self, params, cache, dy):
        dxc, grads = super().backward(params, cache, dy)
        return dxc - dxc.mean(axis=0), grads


def test_false_per_sample_claim_caught():
    # sample-parallel training would silently train a different model with this layer; ContractError is
    # also an AssertionError, so the first release's pytest.raises(AssertionError) still catches it
    with pytest.raises(AssertionError, match="declares sample_coupling = NONE"):
        run_layer_test(CentredButClaimsPerSample, {"units": 3}, (4,), batch_size=4)
    # the same maths without the claim is a correct layer
    class Centred(CentredButClaimsPerSample):
        sample_coupling = Coupling.OTHER
    run_layer_test(Centred, {"units": 3}, (4,), batch_size=4)
