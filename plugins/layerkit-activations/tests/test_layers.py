"""The plugin's own tests: the layerkit conformance suite in one line, plus the maths."""

import math

import numpy as np
import pytest

from layerkit.testing import layer_conformance_tests
from layerkit_activations import ELU, GELU, Softplus, Swish

# every layer this package registers x every example: shapes, schema, dtypes, gradients
test_conformance = layer_conformance_tests(plugin="layerkit-activations")


@pytest.mark.layerkit_plugin("activations")
def test_conformance_through_the_fixture(layer_case, layer_test):
    """The same cases through the pytest plugin's fixtures (entry-point name this time)."""
    layer_test(layer_case.layer_type, layer_case.config, layer_case.input_shape)


def forward(cls, x, **config):
    return cls(**config).forward({}, np.asarray(x, dtype=np.float64))[0]


def test_gelu_values():
    x = np.array([-3.0, -1.0, 0.0, 1.0, 3.0])
    exact = 0.5 * x * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x]))
    assert np.allclose(forward(GELU, x), exact, atol=2e-3)  # the tanh approximation
    assert forward(GELU, [1.0])[0] == pytest.approx(0.8411920, abs=1e-6)


def test_swish_is_silu_at_beta_1():
    x = np.linspace(-5, 5, 11)
    assert np.allclose(forward(Swish, x, beta=1.0), x / (1 + np.exp(-x)))


def test_elu_kinks_only_when_alpha_is_not_1():
    assert not ELU(alpha=1.0).has_kinks
    assert ELU(alpha=0.5).has_kinks
    assert np.allclose(forward(ELU, [-1.0, 2.0], alpha=2.0), [2.0 * (math.exp(-1) - 1), 2.0])


def test_softplus_does_not_overflow():
    with np.errstate(over="raise"):
        y = forward(Softplus, [-1000.0, 0.0, 1000.0], beta=1.0)
    assert np.allclose(y, [0.0, math.log(2), 1000.0])
