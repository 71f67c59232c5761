"""Random parameters for gradient checks take the initializer's spread.

With standard-normal weights a 128-unit LSTM saturates every gate and its check failed on a
correct backward (relative errors up to 0.67 over 32 steps); drawn at the initializer's spread the
same check passes, and a wrong gradient still fails.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from layerkit.gradcheck.layers import check_layer_config, random_params
from layerkit.modelfile.spec import fill_defaults
from layerkit.nn.initializers import init_std
from layerkit.nn.layer import ParamSpec
from layerkit.plugins.manager import get_registry


def test_spread_follows_the_initializer():
    rng = np.random.default_rng(0)
    specs = {"W": ParamSpec((400, 300), init="he_normal"), "b": ParamSpec((300,), init="zeros"),
             "s": ParamSpec((300,), init=0.25)}
    params = random_params(specs, rng)
    assert np.std(params["W"]) == pytest.approx(math.sqrt(2 / 400), rel=0.02)
    # constant initializers: unit spread, never the constant (it would hide bugs that multiply by it)
    assert np.std(params["b"]) == pytest.approx(1.0, rel=0.15)
    assert np.std(params["s"]) == pytest.approx(1.0, rel=0.15)
    assert init_std(ParamSpec((4, 6), init="glorot_uniform")) == pytest.approx(math.sqrt(2 / 10))


def _lstm_rows(layer_cls):
    config = fill_defaults(layer_cls.params_schema, {"units": 128})
    return {r.tensor: r for r in check_layer_config(layer_cls, config, (32, 16))}


def test_wide_lstm_over_many_steps_passes():
    rows = _lstm_rows(get_registry().layer("lstm"))
    assert {t: r.status for t, r in rows.items()} == dict.fromkeys(rows, "pass")


def test_wrong_recurrent_gradient_still_fails():
    lstm = get_registry().layer("lstm")

    class OffLSTM(lstm):  # type: ignore[misc, valid-type]
        """An LSTM whose recurrent weight gradient is 0.1% too large."""

        def backward(self, params, cache, dy):
            dx, grads = super().backward(params, cache, dy)
            return dx, {**grads, "weight_hh": grads["weight_hh"] * 1.001}

    rows = _lstm_rows(OffLSTM)
    assert rows["weight_hh"].status == "fail"
    assert rows["weight_ih"].status == "pass"
