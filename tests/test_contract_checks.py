"""Every contract check of the conformance suite can fail: one deliberately wrong layer each.

Each layer below has a correct ``backward`` (the gradient check passes) and breaks exactly one
other promise; run_layer_test must name the layer and the contract member it breaks.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import layerkit

from layerkit.gradcheck.report import check_model
from layerkit.modelfile.build import build_model
from layerkit.layers.pooling import AvgPool2D
from layerkit.nn.layer import Coupling, Example, Layer
from layerkit.parallel.collectives import batch_sum, splitting
from layerkit.plugins.manager import load_registry
from layerkit.testing import run_layer_test
from layerkit.testing import contract

from test_broken_layers import GoodDense


class Affine(GoodDense):
    """y = x W + b, with a correct backward."""

    type = "test_affine"
    sample_coupling = Coupling.NONE


class WrongParamsOnly(Affine):
    """The parameter-only path forgets a transpose's worth: W's gradient is doubled."""

    type = "wrong_backward_params"

    def backward_params(self, params, cache, dy):
        return {"W": 2 * (cache.T @ dy), "b": dy.sum(axis=0)}


class RightParamsOnly(Affine):
    type = "right_backward_params"

    def backward_params(self, params, cache, dy):
        return {"W": cache.T @ dy, "b": dy.sum(axis=0)}


class Square(Layer):
    """y = x^2 with a correct backward."""

    type = "test_square"
    description = "x squared"
    examples = (Example({}, (5,)),)
    sample_coupling = Coupling.NONE

    def forward(self, params, x, training=False, rng=None, state=None):
        return x * x, x

    def backward(self, params, cache, dy):
        return 2 * cache * dy, {}


class WrongInplace(Square):
    """The in-place path drops the factor 2."""

    type = "wrong_backward_inplace"

    def backward_inplace(self, params, cache, dy):
        dy *= cache
        return dy, {}


class RightInplace(Square):
    type = "right_backward_inplace"
    fresh_dx = True

    def backward_inplace(self, params, cache, dy):
        dy *= cache
        dy *= 2
        return dy, {}


class Identity(Layer):
    type = "aliasing_identity"
    description = "y = x"
    examples = (Example({}, (5,)),)
    fresh_dx = True  # wrong: dx is dy itself

    def forward(self, params, x, training=False, rng=None, state=None):
        return x.copy(), None

    def backward(self, params, cache, dy):
        return dy, {}


class CacheAliasing(Square):
    """dx is written into the cached input: fresh from dy, but not from the cache."""

    type = "cache_aliasing"
    fresh_dx = True

    def forward(self, params, x, training=False, rng=None, state=None):
        return x * x, x.copy()

    def backward(self, params, cache, dy):
        cache *= 2
        cache *= dy
        return cache, {}


class Centre(Layer):
    """y = x - mean over the batch, the mean taken with batch_sum: samples meet only through sums."""

    type = "test_centre"
    description = "subtracts the batch mean"
    examples = (Example({}, (3,)),)
    sample_coupling = Coupling.BATCH_SUMS

    def forward(self, params, x, training=False, rng=None, state=None):
        sums = self.total(np.concatenate([x.sum(axis=0), [len(x)]]).astype(np.float64))
        mean = (sums[:-1] / sums[-1]).astype(x.dtype)
        return x - mean, sums[-1]

    def backward(self, params, cache, dy):
        dsum = self.total(dy.sum(axis=0).astype(np.float64))
        return dy - (dsum / cache).astype(dy.dtype), {}

    def total(self, values):
        return batch_sum(values)


class PerHalfCentre(Centre):
    """Claims whole-batch sums but forgets batch_sum: each half subtracts its own mean."""

    type = "per_half_centre"

    def total(self, values):
        return values


class NegateClaimsMax(Layer):
    """y = -x, correct backward; claims to commute with max, which a decreasing map does not."""

    type = "negate_claims_max"
    description = "minus x"
    examples = (Example({}, (2, 4, 4)),)
    sample_coupling = Coupling.NONE
    commutes_with_max = True

    def forward(self, params, x, training=False, rng=None, state=None):
        return -x, None

    def backward(self, params, cache, dy):
        return -dy, {}


class AvgClaimsMax(AvgPool2D):
    """Average pooling claiming to be a max pool: relu before and after it differ."""

    type = "avg_claims_max"
    pools_max = True


def run(cls, config=None, shape=None):
    example = cls.examples[0]
    return run_layer_test(cls, config if config is not None else example.config, shape or example.input_shape,
                          batch_size=4)


@pytest.mark.parametrize("cls, member, detail", [
    (WrongParamsOnly, "backward_params", "gradient of 'W'"),
    (WrongInplace, "backward_inplace", "input gradient"),
    (Identity, "fresh_dx", "shares memory with dy"),
    (CacheAliasing, "fresh_dx", "shares memory with an array of its cache"),
    (PerHalfCentre, "sample_coupling = BATCH_SUMS", "forward output on two halves"),
    (NegateClaimsMax, "commutes_with_max", "changes the training output"),
    (AvgClaimsMax, "pools_max", "changes the training output"),
], ids=lambda v: v.type if isinstance(v, type) else None)
def test_each_broken_promise_is_caught_naming_layer_and_member(cls, member, detail):
    with pytest.raises(AssertionError) as caught:
        run(cls)
    message = str(caught.value).splitlines()[0]
    assert f"layer {cls.type!r}" in message and member in message and detail in message, message


@pytest.mark.parametrize("cls", [RightParamsOnly, RightInplace, Centre, Square, Affine], ids=lambda c: c.type)
def test_kept_promises_pass(cls):
    run(cls)


def test_halves_that_call_batch_sum_differently_are_reported(monkeypatch):
    # a split batch would wait forever (processes: until the barrier timeout) in training
    monkeypatch.setattr(contract, "EXCHANGE_TIMEOUT_S", 0.2)

    class Uneven(Centre):
        type = "uneven_centre"

        def backward(self, params, cache, dy):
            if threading.current_thread().name.endswith("-1"):  # the second half only
                batch_sum(np.zeros(1))
            return super().backward(params, cache, dy)

    with pytest.raises(AssertionError, match="'uneven_centre'.*did not make the same batch_sum calls"):
        run(Uneven)
    assert not splitting()  # the reducer is gone again: later batch_sum calls are a batch's own


def test_deprecated_declarations_still_work():
    with pytest.warns(DeprecationWarning, match="per_sample"):
        class Old(Square):
            per_sample = True
    assert Old.sample_coupling == Coupling.NONE
    with pytest.warns(DeprecationWarning, match="batch_sync"):
        class OldSync(Centre):
            batch_sync = True
            sample_coupling = Coupling.OTHER  # an explicit new declaration wins
    assert OldSync.sample_coupling == Coupling.OTHER
    with pytest.warns(DeprecationWarning, match="stochastic"):
        class OldRandom(Square):
            stochastic = True
    assert OldRandom.uses_rng and OldRandom.sample_coupling == Coupling.NONE


class Plugin:
    @layerkit.hookimpl
    def layerkit_register_layers(self, register):
        register(WrongParamsOnly)
        register(Affine)


def test_gradient_check_compares_the_path_training_runs():
    # the wrong parameter-only path trains wrong although backward is right: check-grads must see it
    registry = load_registry([Plugin()])
    spec = {"format": 1, "name": "first_layer_params_only", "input": {"shape": [4]},
            "layers": [{"name": "first", "type": "wrong_backward_params"}, {"name": "second", "type": "test_affine"}],
            "loss": {"type": "mse"}}
    model = build_model(spec, registry=registry)
    assert [rec.backward.value for rec in model.plan.nodes] == ["backward_params", "backward"]
    report = check_model(model, whole_model=False, registry=registry)
    rows = {r.label: r for r in report.rows}
    assert rows["first.W"].status == "fail" and rows["first.W"].via == "backward_params"
    assert rows["first.b"].status == "pass" and rows["first.input"].via == "backward"
    assert rows["second.W"].status == "pass"
