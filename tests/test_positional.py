"""positional_encoding: the sinusoid table's values, the learned table's gradient, max_len at build time."""

from __future__ import annotations

import math

import numpy as np
import pytest

from layerkit.cli import main
from layerkit.errors import ShapeError
from layerkit.layers.positional import sinusoids
from layerkit.plugins.manager import get_registry


def _layer(**config):
    cls = get_registry().layer("positional_encoding")
    filled = {k: v["default"] for k, v in cls.params_schema["properties"].items() if "default" in v}
    return cls(**{**filled, **config})


def test_sinusoid_table_follows_the_paper():
    table = sinusoids(6, 5)
    for t in range(6):
        for i in range(5):
            angle = t / 10000 ** (2 * (i // 2) / 5)
            assert table[t, i] == pytest.approx(math.sin(angle) if i % 2 == 0 else math.cos(angle), abs=1e-15)


def test_sinusoidal_adds_the_table_and_has_no_parameters():
    layer = _layer()
    assert layer.param_specs((4, 6)) == {}
    x = np.random.default_rng(0).standard_normal((2, 4, 6)).astype(np.float32)
    y, cache = layer.forward({}, x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y - x, np.broadcast_to(sinusoids(4, 6), (2, 4, 6)), atol=1e-6)
    dy = np.ones_like(y)
    assert layer.backward({}, cache, dy)[0] is dy


def test_learned_uses_the_first_rows_and_the_rest_get_zero_gradient():
    layer = _layer(kind="learned", max_len=6)
    spec = layer.param_specs((4, 3))["weight"]
    assert spec.shape == (6, 3)
    weight = np.random.default_rng(1).standard_normal((6, 3))
    x = np.random.default_rng(2).standard_normal((2, 4, 3))
    y, cache = layer.forward({"weight": weight}, x)
    np.testing.assert_array_equal(y, x + weight[:4])
    dy = np.random.default_rng(3).standard_normal(y.shape)
    dx, grads = layer.backward({"weight": weight}, cache, dy)
    np.testing.assert_array_equal(dx, dy)
    np.testing.assert_allclose(grads["weight"][:4], dy.sum(axis=0))
    assert np.array_equal(grads["weight"][4:], np.zeros((2, 3)))


@pytest.mark.parametrize("shape, message", [((9, 4), "more than max_len 8"), ((8,), r"\(T, D\)")])
def test_wrong_shapes_are_shape_errors(shape, message):
    with pytest.raises(ShapeError, match=message):
        _layer(max_len=8).output_shape(shape)


def test_a_sequence_longer_than_max_len_is_an_error_at_the_layer(capsys, write_model):
    model = {"format": 1, "name": "long", "input": {"shape": [10, 4]},
             "layers": [{"name": "pos", "type": "positional_encoding", "kind": "learned", "max_len": 8},
                        {"type": "dense", "units": 2}],
             "loss": {"type": "mse"}}
    assert main(["validate", str(write_model(model))]) == 2
    err = capsys.readouterr().err
    assert "layers[0]" in err and "more than max_len 8" in err and "Traceback" not in err
