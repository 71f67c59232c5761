"""Smooth activation layers for layerkit, shipped as a separate package.

layerkit loads this module through the ``layerkit`` entry-point group (see
``pyproject.toml``) and calls :func:`layerkit_register_layers`; nothing in
layerkit itself knows these layers exist.
"""

from __future__ import annotations

import math

import numpy as np

import layerkit
from layerkit import Coupling, Example, Layer

__version__ = "0.1.0"

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # via tanh: no overflow warning for large |z|, unlike 1 / (1 + exp(-z))
    s = np.tanh(z * 0.5)
    s += 1
    s *= 0.5
    return s


class _Elementwise(Layer):
    """Shape-preserving, parameter-free; per-element cost for flops()."""

    cost = 1

    def flops(self, input_shape):
        return self.cost * int(np.prod(input_shape))


class GELU(_Elementwise):
    type = "gelu"
    sample_coupling = Coupling.NONE
    description = ("Gaussian error linear unit, tanh approximation: "
                   "0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).")
    params_schema = {"type": "object", "properties": {}, "additionalProperties": False}
    examples = (Example({}, (7,), "flat features"), Example({}, (2, 3, 3), "feature maps"))
    cost = 10

    def to_onnx(self, g, x, input_shape, params, state):
        # ONNX export (layerkit export --format onnx): the same tanh formula, op by op
        cube = g.op("Mul", [g.op("Mul", [x, x]), x])
        inner = g.op("Add", [x, g.op("Mul", [cube, g.const(_GELU_CUBIC)])])
        t = g.op("Tanh", [g.op("Mul", [inner, g.const(_SQRT_2_OVER_PI)])])
        half_x = g.op("Mul", [x, g.const(0.5)])
        return g.op("Mul", [half_x, g.op("Add", [t, g.const(1.0)])])

    def forward(self, params, x, training=False, rng=None, state=None):
        t = np.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x * x * x))
        return 0.5 * x * (1 + t), (x, t)

    def backward(self, params, cache, dy):
        x, t = cache
        inner = _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * x * x)
        return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * inner), {}


class Swish(_Elementwise):
    type = "swish"
    sample_coupling = Coupling.NONE
    description = "Swish x * sigmoid(beta * x); beta = 1 is SiLU."
    params_schema = {
        "type": "object",
        "properties": {
            "beta": {"type": "number", "exclusiveMinimum": 0, "default": 1.0,
                     "description": "sharpness; large beta approaches relu"},
        },
        "additionalProperties": False,
    }
    examples = (Example({}, (7,), "SiLU"), Example({"beta": 1.7}, (2, 3, 3), "sharper"))
    cost = 6

    def to_onnx(self, g, x, input_shape, params, state):
        return g.op("Mul", [x, g.op("Sigmoid", [g.op("Mul", [x, g.const(float(self.beta))])])])

    def forward(self, params, x, training=False, rng=None, state=None):
        s = _sigmoid(float(self.beta) * x)
        return x * s, (x, s)

    def backward(self, params, cache, dy):
        x, s = cache
        return dy * (s + float(self.beta) * x * s * (1 - s)), {}


class ELU(_Elementwise):
    type = "elu"
    sample_coupling = Coupling.NONE
    description = "Exponential linear unit: x for x > 0, alpha (exp(x) - 1) otherwise."
    params_schema = {
        "type": "object",
        "properties": {
            "alpha": {"type": "number", "exclusiveMinimum": 0, "default": 1.0,
                      "description": "value approached for very negative inputs is -alpha"},
        },
        "additionalProperties": False,
    }
    examples = (Example({}, (7,), "alpha 1: smooth at 0"), Example({"alpha": 0.5}, (2, 3, 3), "kink at 0"))
    # the slopes at 0 are alpha (left) and 1 (right): only alpha == 1 is differentiable there.
    # The class says True (some configuration has a kink); each instance says what it has.
    has_kinks = True
    cost = 4

    def __init__(self, **config):
        super().__init__(**config)
        self.has_kinks = float(self.alpha) != 1.0

    def to_onnx(self, g, x, input_shape, params, state):
        return g.op("Elu", [x], alpha=float(self.alpha))

    def forward(self, params, x, training=False, rng=None, state=None):
        positive = x > 0
        y = np.where(positive, x, float(self.alpha) * np.expm1(np.minimum(x, 0)))
        return y, (positive, y)

    def backward(self, params, cache, dy):
        positive, y = cache
        # for x <= 0: d/dx alpha (e^x - 1) = alpha e^x = y + alpha
        return dy * np.where(positive, 1, y + float(self.alpha)), {}


class Softplus(_Elementwise):
    type = "softplus"
    sample_coupling = Coupling.NONE
    description = "Softplus log(1 + exp(beta x)) / beta, a smooth relu; computed overflow-free."
    params_schema = {
        "type": "object",
        "properties": {
            "beta": {"type": "number", "exclusiveMinimum": 0, "default": 1.0, "description": "sharpness"},
        },
        "additionalProperties": False,
    }
    examples = (Example({}, (7,)), Example({"beta": 2.0}, (2, 3, 3)))
    cost = 4

    def to_onnx(self, g, x, input_shape, params, state):
        beta = float(self.beta)
        return g.op("Mul", [g.op("Softplus", [g.op("Mul", [x, g.const(beta)])]), g.const(1 / beta)])

    def forward(self, params, x, training=False, rng=None, state=None):
        beta = float(self.beta)
        return np.logaddexp(0, beta * x) / beta, x

    def backward(self, params, cache, dy):
        return dy * _sigmoid(float(self.beta) * cache), {}


LAYERS = (GELU, Swish, ELU, Softplus)


@layerkit.hookimpl
def layerkit_register_layers(register):
    for cls in LAYERS:
        register(cls)
