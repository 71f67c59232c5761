"""Every check of the engine can fail: one deliberately wrong layer per check name.

Each layer below breaks exactly one promise (most with a correct ``backward``, so the gradient check
passes); the engine must raise ContractError naming the layer, the check and the contract member.
BROKEN lists one for every name in CHECKS, so a new check without a failing example fails here.
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
from layerkit.errors import ContractError
from layerkit.nn.layer import ParamSpec
from layerkit.testing import check_layer_metadata, run_layer_test
from layerkit.testing import contract
from layerkit.testing.engine import CHECKS, Subject, yield_checks

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


class WrongInputOnly(Affine):
    """The input-gradient-only path forgets the transpose (W is square, so the shape is right)."""

    type = "wrong_backward_input"

    def backward_input(self, params, cache, dy):
        return dy @ params["W"]


class RightInputOnly(Affine):
    type = "right_backward_input"

    def backward_input(self, params, cache, dy):
        return dy @ params["W"].T


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


class BatchStreamNoise(Layer):
    """Claims sample_rng but draws the whole batch's noise from one generator it seeds itself:
    a batch split over processes would add other noise to each sample."""

    type = "batch_stream_noise"
    description = "x plus noise drawn for the whole batch"
    examples = (Example({}, (3,)),)
    sample_coupling = Coupling.NONE
    uses_rng = True
    sample_rng = True

    def forward(self, params, x, training=False, rng=None, state=None):
        if not training:
            return x, None
        return x + np.random.default_rng(len(rng)).random(x.shape), None

    def backward(self, params, cache, dy):
        return dy.copy(), {}


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
    (WrongInputOnly, "backward_input", "input gradient"),
    (Identity, "fresh_dx", "shares memory with dy"),
    (CacheAliasing, "fresh_dx", "shares memory with an array of its cache"),
    (PerHalfCentre, "sample_coupling = BATCH_SUMS", "forward output on two halves"),
    (NegateClaimsMax, "commutes_with_max", "changes the training output"),
    (AvgClaimsMax, "pools_max", "changes the training output"),
], ids=lambda v: v.type if isinstance(v, type) else None)
def test_each_broken_promise_is_caught_naming_layer_and_member(cls, member, detail):
    with pytest.raises(ContractError) as caught:
        run(cls)
    message = str(caught.value).splitlines()[0]
    assert f"layer {cls.type!r}" in message and member in message and detail in message, message


@pytest.mark.parametrize("cls", [RightParamsOnly, RightInplace, RightInputOnly, Centre, Square, Affine],
                         ids=lambda c: c.type)
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

    with pytest.raises(ContractError, match="'uneven_centre'.*did not make the same batch_sum calls"):
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
        register(WrongInputOnly)
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


def test_gradient_check_compares_the_input_only_path_of_a_frozen_layer():
    # a frozen layer above one that learns trains through backward_input: check-grads must check that
    registry = load_registry([Plugin()])
    spec = {"format": 1, "name": "frozen_middle", "input": {"shape": [4]},
            "layers": [{"name": "first", "type": "test_affine"},
                       {"name": "second", "type": "wrong_backward_input", "trainable": False}],
            "loss": {"type": "mse"}}
    model = build_model(spec, registry=registry)
    assert [rec.backward.value for rec in model.plan.nodes] == ["backward_params", "backward_input"]
    report = check_model(model, whole_model=False, registry=registry)
    rows = {r.label: r for r in report.rows}
    assert rows["second.input"].status == "fail" and rows["second.input"].via == "backward_input"
    assert rows["second.W"].status == "pass" and rows["second.W"].via == "backward"


# -- one deliberately wrong layer per check name ---------------------------------------------------

def _variant(base: type, name: str, **members) -> type:
    """A subclass of ``base`` with ``type = name`` and ``members`` replaced (one broken promise)."""
    return type(name, (base,), {"type": name, **members})


class Scale(Layer):
    """y = x * s per feature, with correct inference paths (each inference variant lies once)."""

    type = "test_scale"
    description = "per-feature scale"
    examples = (Example({}, (3,)),)
    sample_coupling = Coupling.NONE

    def param_specs(self, input_shape):
        return {"s": ParamSpec(tuple(input_shape), "ones")}

    def forward(self, params, x, training=False, rng=None, state=None):
        return x * params["s"], x

    def backward(self, params, cache, dy):
        return dy * params["s"], {"s": (dy * cache).sum(axis=0)}

    def inference_affine(self, params, state=None):
        return params["s"], np.zeros_like(params["s"])

    def fold_affine(self, params, scale, shift):
        return None if np.any(shift) else {"s": params["s"] * scale}


def _inplace_wrong(self, params, x, state=None):
    return np.multiply(x, params["s"] * 1.001, out=x)


#: check name -> a layer that breaks exactly that claim
BROKEN = {
    "type_name": _variant(Square, "BadName"),
    "method_signatures": _variant(Square, "bad_signature", forward=lambda self, x: (x * x, x)),
    "params_schema_valid": _variant(Square, "bad_schema", params_schema={"type": 5}),
    "declarations": _variant(Square, "bad_flag", has_kinks="yes"),
    "metadata": _variant(Square, "no_description", description=""),
    "schema_closed_and_defaults": _variant(Square, "open_schema", params_schema={"type": "object"}),
    "config_validates": _variant(Square, "typo_example", examples=(Example({"unit": 3}, (5,)),)),
    "size_estimates": _variant(Square, "negative_flops", flops=lambda self, shape: -1),
    "tensors_initialize": _variant(Square, "tuple_specs", param_specs=lambda self, shape: {"w": (3,)}),
    "output_shape_matches_forward": _variant(Square, "wrong_output_shape", output_shape=lambda self, s: (4,)),
    "forward_output_finite": _variant(Square, "infinite_output", forward=lambda self, p, x, training=False, rng=None,
                                      state=None: (np.where(x > 0, x, np.inf).astype(x.dtype), x)),
    "float32_stays_float32": _variant(Square, "float64_output", forward=lambda self, p, x, training=False, rng=None,
                                      state=None: ((x * x).astype(np.float64), x)),
    "forward_leaves_input_unchanged": _variant(Square, "forward_writes_x", forward=lambda self, p, x, training=False,
                                               rng=None, state=None: (np.multiply(x, x, out=x).copy(), x)),
    "backward_gradient_shapes": _variant(Square, "short_dx", backward=lambda self, p, cache, dy:
                                         ((2 * cache * dy)[:, :1], {})),
    "backward_leaves_dy_unchanged": _variant(Square, "backward_writes_dy", backward=lambda self, p, cache, dy:
                                             (np.multiply(dy, 2 * cache, out=dy), {})),
    "gradients_match_finite_differences": _variant(Square, "half_gradient", backward=lambda self, p, cache, dy:
                                                   (cache * dy, {})),
    "split_batch_equals_whole": PerHalfCentre,
    "split_batch_draws_the_same_numbers": BatchStreamNoise,
    "infer_equals_forward": _variant(Scale, "infer_off", infer=lambda self, p, x, state=None: x * p["s"] + 1e-3),
    "backward_params_equals_backward": WrongParamsOnly,
    "backward_inplace_equals_backward": WrongInplace,
    "backward_input_equals_backward": WrongInputOnly,
    "fresh_dx": Identity,
    "infer_fresh": _variant(Identity, "infer_not_fresh", fresh_dx=False, infer_fresh=True,
                            forward=lambda self, p, x, training=False, rng=None, state=None: (x, None),
                            backward=lambda self, p, cache, dy: (dy.copy(), {})),
    "infer_inplace_equals_infer": _variant(Scale, "infer_inplace_off", infer_inplace=_inplace_wrong),
    "inference_affine_matches_infer": _variant(Scale, "affine_off", inference_affine=lambda self, p, state=None:
                                               (p["s"], np.full_like(p["s"], 0.5))),
    "fold_affine_matches_infer": _variant(Scale, "fold_off", fold_affine=lambda self, p, scale, shift:
                                          {"s": p["s"] * scale + shift}),
    "commutes_with_max": NegateClaimsMax,
    "pools_max": AvgClaimsMax,
}


def test_every_check_has_a_broken_layer():
    assert set(BROKEN) == set(CHECKS)


def broken_subject(name: str) -> Subject:
    cls = BROKEN[name]
    example = cls.examples[0] if CHECKS[name].scope == "example" else None
    return Subject(cls, None if example is None else example.config, None if example is None else example.input_shape,
                   index=0, batch_size=4)


@pytest.mark.parametrize("name", list(CHECKS))
def test_each_check_fails_on_its_broken_layer(name):
    subject = broken_subject(name)
    check = CHECKS[name]
    applicable = [c.name for c in yield_checks(subject.cls, None if check.scope == "layer" else subject)]
    assert name in applicable  # a capability check runs where the capability is declared
    with pytest.raises(ContractError) as caught:
        check.run(subject)
    error = caught.value
    assert error.check == name and error.layer == subject.name and error.member
    assert f"check {name} failed" in str(error) and f"layer {subject.name!r}" in str(error)
    assert isinstance(error, AssertionError) and error.exit_code == 1


@pytest.mark.parametrize("name", ["backward_leaves_dy_unchanged", "float32_stays_float32", "metadata",
                                  "gradients_match_finite_differences"])
def test_the_public_runners_stop_at_the_broken_check(name):
    subject = broken_subject(name)
    with pytest.raises(ContractError) as caught:
        if CHECKS[name].scope == "layer":
            check_layer_metadata(subject.cls)
        else:
            run_layer_test(subject.cls, subject.config, subject.input_shape, batch_size=4)
    assert caught.value.check == name


def test_capability_checks_run_only_where_declared():
    names = {c.name for c in yield_checks(Square, Square.examples[0])}
    assert "backward_inplace_equals_backward" not in names and "fresh_dx" not in names
    assert {"backward_inplace_equals_backward", "fresh_dx"} <= {c.name for c in yield_checks(
        RightInplace, RightInplace.examples[0])}


def test_contract_error_carries_the_numbers():
    with pytest.raises(ContractError) as caught:
        CHECKS["backward_params_equals_backward"].run(broken_subject("backward_params_equals_backward"))
    error = caught.value
    assert error.member == "backward_params" and error.numbers["max_difference"] > 0
    assert "examples[0]" in error.example and "input shape" in error.example


def test_every_check_holds_under_python_O():
    """Checks are raised, not asserted: with ``python -O`` each broken layer still fails its check."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "assert False, 'asserts are on'\n"  # stripped by -O: proves the flag took effect
        "from layerkit.errors import ContractError\n"
        "from test_contract_checks import BROKEN, CHECKS, broken_subject\n"
        "missed = []\n"
        "for name in BROKEN:\n"
        "    try:\n"
        "        CHECKS[name].run(broken_subject(name))\n"
        "        missed.append(name)\n"
        "    except ContractError as e:\n"
        "        if e.check != name: missed.append(name)\n"
        "print('missed', missed)\n"
    )
    tests_dir = str(Path(__file__).resolve().parent)
    done = subprocess.run([sys.executable, "-O", "-c", script, tests_dir], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "missed []", done.stdout + done.stderr


CAPABILITY_MEMBERS = ("backward_inplace", "backward_input", "fresh_dx", "infer_inplace", "infer_fresh",
                      "commutes_with_max", "pools_max", "inference_affine", "fold_affine")


def test_the_engine_does_not_need_the_capabilities_on_layer():
    """Capabilities are mixins (layerkit.nn.capabilities): the engine asks the layer, not the Layer base."""
    assert not [name for name in CAPABILITY_MEMBERS if hasattr(Layer, name)]
    plain = type("plain_square", (Layer,), {"type": "plain_square", "description": "x squared",
                                            "examples": (Example({}, (5,)),), "sample_coupling": Coupling.NONE,
                                            "forward": Square.forward, "backward": Square.backward})
    subject = Subject(plain, {}, (5,), batch_size=4)
    names = {c.name for c in yield_checks(plain, subject)}
    assert not names & {"backward_inplace_equals_backward", "fresh_dx", "infer_fresh", "commutes_with_max",
                        "pools_max", "infer_inplace_equals_infer", "fold_affine_matches_infer"}
    check_layer_metadata(plain)
    run_layer_test(plain, {}, (5,), batch_size=4)
    inplace = type("inplace_square", (plain,), {"type": "inplace_square", "fresh_dx": True,
                                                "backward_inplace": RightInplace.backward_inplace})
    names = {c.name for c in yield_checks(inplace, Subject(inplace, {}, (5,)))}
    assert {"backward_inplace_equals_backward", "fresh_dx"} <= names
    run_layer_test(inplace, {}, (5,), batch_size=4)
    wrong = type("wrong_inplace_square", (plain,), {"type": "wrong_inplace_square",
                                                    "backward_inplace": WrongInplace.backward_inplace})
    with pytest.raises(ContractError) as caught:
        run_layer_test(wrong, {}, (5,), batch_size=4)
    assert caught.value.check == "backward_inplace_equals_backward"
