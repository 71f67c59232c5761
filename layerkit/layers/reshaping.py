"""Flatten and reshape: views of the same data, no copies."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

import math

from layerkit import hookimpl
from layerkit.errors import ShapeError
from layerkit.nn.layer import Coupling, Example, Layer, Params, Shape


class Flatten(Layer):
    """Every sample's values as one flat vector."""

    type = "flatten"
    sample_coupling = Coupling.NONE
    description = "Flatten the per-sample shape to (features,), channels-first order."
    params_schema = {"type": "object", "properties": {}, "additionalProperties": False}
    examples = (Example({}, (2, 3, 4)), Example({}, (5,)))

    def output_shape(self, input_shape: Shape) -> Shape:
        return (math.prod(input_shape),)

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        return g.op("Flatten", [x], axis=1)

    def forward(self, params: Params, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        return x.reshape(x.shape[0], -1), x.shape

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        return dy.reshape(cache), {}


class Reshape(Layer):
    """Every sample's values in a new shape of the same size."""

    type = "reshape"
    sample_coupling = Coupling.NONE
    description = "Reshape each sample (row-major order); one dimension may be -1 and is inferred."
    params_schema = {
        "type": "object",
        "properties": {
            "shape": {"type": "array", "minItems": 1,
                      "items": {"type": "integer", "anyOf": [{"minimum": 1}, {"const": -1}]},
                      "description": "target per-sample shape, e.g. [1, 28, 28] or [-1, 7]"},
        },
        "required": ["shape"],
        "additionalProperties": False,
    }
    examples = (Example({"shape": [3, 4]}, (12,)), Example({"shape": [-1, 2, 2]}, (2, 2, 4)))

    def output_shape(self, input_shape: Shape) -> Shape:
        shape = [int(d) for d in self.shape]
        size = math.prod(input_shape)
        if shape.count(-1) > 1:
            raise ShapeError(f"shape {shape} may contain -1 only once")
        known = math.prod(d for d in shape if d != -1)
        if -1 in shape:
            if size % known:
                raise ShapeError(f"cannot reshape {tuple(input_shape)} ({size} values) to {shape}: "
                                 f"{size} is not divisible by {known}")
            shape[shape.index(-1)] = size // known
        elif known != size:
            raise ShapeError(f"cannot reshape {tuple(input_shape)} ({size} values) to {shape} ({known} values)")
        return tuple(shape)

    def forward(self, params: Params, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        return x.reshape(x.shape[0], *self.shape), x.shape

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        # 0 keeps the batch size; the per-sample shape as given (one -1 is inferred there too)
        return g.op("Reshape", [x, g.const([0, *self.shape], "shape", dtype=np.int64)])

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        return dy.reshape(cache), {}


@hookimpl
def layerkit_register_layers(register: Callable[[type[Layer]], None]) -> None:
    register(Flatten)
    register(Reshape)
