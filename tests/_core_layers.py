"""Test-local layer plugins for the core tests: small, exact, and independent of
the built-in layer modules (so core tests do not break when a layer changes)."""

from __future__ import annotations

import numpy as np

from layerkit import hookimpl
from layerkit.errors import ShapeError
from layerkit.nn.layer import Layer, ParamSpec
from layerkit.plugins.manager import load_registry


class Scale(Layer):
    """y = x * w, one learnable weight per feature."""

    type = "scale"
    description = "Per-feature learnable scale."
    params_schema = {
        "type": "object",
        "properties": {"init": {"enum": ["ones", "he_normal"], "default": "he_normal"},
                       "factor": {"type": "number", "minimum": 0, "default": 1.0,
                                  "description": "fixed extra multiplier"}},
        "additionalProperties": False,
    }

    def param_specs(self, input_shape):
        return {"w": ParamSpec(tuple(input_shape), self.init, fan_in=int(np.prod(input_shape)), decay=True)}

    def flops(self, input_shape):
        return int(np.prod(input_shape))

    def forward(self, params, x, training=False, rng=None, state=None):
        return x * params["w"] * self.factor, x

    def backward(self, params, cache, dy):
        x = cache
        return dy * params["w"] * self.factor, {"w": (dy * x * self.factor).sum(axis=0)}


class Sum(Layer):
    """Element-wise sum of two or more inputs of one shape."""

    type = "sum"
    description = "Element-wise sum."
    arity = None

    def output_shape(self, input_shape):
        first = tuple(input_shape[0])
        for shape in input_shape[1:]:
            if tuple(shape) != first:
                raise ShapeError(f"inputs must have one shape, got {first} and {tuple(shape)}")
        return first

    def forward(self, params, x, training=False, rng=None, state=None):
        return sum(x[1:], x[0].copy()), len(x)

    def backward(self, params, cache, dy):
        return [dy] * cache, {}


class Crop(Layer):
    """Keeps the first ``size`` features of a flat input; a shape error otherwise."""

    type = "crop"
    description = "Keep the first size features."
    params_schema = {"type": "object", "properties": {"size": {"type": "integer", "minimum": 1}},
                     "required": ["size"], "additionalProperties": False}

    def output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ShapeError(f"needs a 1-d input, got {tuple(input_shape)}")
        if self.size > input_shape[0]:
            raise ShapeError(f"cannot keep {self.size} of {input_shape[0]} features")
        return (self.size,)


class Buggy(Layer):
    """A plugin bug: output_shape raises a plain Python error."""

    type = "buggy"
    description = "Divides by zero while inferring shapes."

    def output_shape(self, input_shape):
        return (input_shape[0] // 0,)


class core_layers:  # noqa: N801  (a plugin namespace; its name is the plugin name)
    @staticmethod
    @hookimpl
    def layerkit_register_layers(register):
        for cls in (Scale, Sum, Crop, Buggy):
            register(cls)


def core_registry(*extra, disabled=frozenset()):
    """dense (a real built-in) plus the layers above; no entry points, no other built-ins."""
    return load_registry(extra_plugins=[core_layers, *extra], default_plugins=("layerkit.layers.dense",),
                         entry_points=False, disabled=set(disabled))


def flat_model(*layers, shape=(6,), **top) -> dict:
    return {"format": 1, "name": "m", "input": {"shape": list(shape)}, "layers": list(layers), **top}
