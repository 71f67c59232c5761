"""Layers that merge two or more inputs: element-wise add and concatenation."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from layerkit import hookimpl
from layerkit.errors import ShapeError
from layerkit.nn.layer import Coupling, Example, Layer, Params, Shape


class Add(Layer):
    """The element-wise sum of two or more inputs of the same shape."""

    type = "add"
    sample_coupling = Coupling.NONE
    description = "Element-wise sum of two or more inputs of the same shape (residual connections)."
    params_schema = {"type": "object", "properties": {}, "additionalProperties": False}
    arity = None
    examples = (Example({}, [(3,), (3,)]), Example({}, [(2, 2, 3), (2, 2, 3), (2, 2, 3)], "three inputs"))

    def output_shape(self, input_shapes: list[Shape]) -> Shape:
        first = tuple(input_shapes[0])
        for i, shape in enumerate(input_shapes[1:], start=1):
            if tuple(shape) != first:
                raise ShapeError(f"input {i} has shape {tuple(shape)}, input 0 has {first}; add needs equal shapes")
        return first

    def flops(self, input_shapes: list[Shape]) -> int:
        return (len(input_shapes) - 1) * int(np.prod(input_shapes[0]))

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        out = x[0]
        for other in x[1:]:  # pairwise, in order: the same rounding as the numpy sum
            out = g.op("Add", [out, other])
        return out

    def forward(self, params: Params, xs: list[np.ndarray], training: bool = False,
                rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        y = xs[0] + xs[1]
        for x in xs[2:]:
            y += x
        return y, len(xs)

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        # the same array for every input: no layer writes into the gradient it receives
        return [dy] * cache, {}


class Concat(Layer):
    """Two or more inputs joined along one axis."""

    type = "concat"
    sample_coupling = Coupling.NONE
    description = "Concatenate two or more inputs along a per-sample axis (default 0, the channel axis)."
    params_schema = {
        "type": "object",
        "properties": {
            "axis": {"type": "integer", "default": 0,
                     "description": "per-sample axis to join along (negative counts from the end)"},
        },
        "additionalProperties": False,
    }
    arity = None
    examples = (Example({}, [(2, 3, 3), (1, 3, 3)], "channels"), Example({"axis": -1}, [(2, 2), (2, 3)], "last axis"))

    def _axis(self, rank: int) -> int:
        axis = int(self.axis)
        if not -rank <= axis < rank:
            raise ShapeError(f"axis {axis} is out of range for {rank}-d inputs")
        return axis % rank

    def output_shape(self, input_shapes: list[Shape]) -> Shape:
        first = tuple(input_shapes[0])
        axis = self._axis(len(first))
        for i, shape in enumerate(input_shapes[1:], start=1):
            shape = tuple(shape)
            if len(shape) != len(first) or shape[:axis] + shape[axis + 1:] != first[:axis] + first[axis + 1:]:
                raise ShapeError(f"input {i} has shape {shape}, input 0 has {first}; "
                                 f"all dimensions except axis {axis} must match")
        return first[:axis] + (sum(int(s[axis]) for s in input_shapes),) + first[axis + 1:]

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        return g.op("Concat", x, axis=self._axis(len(input_shape[0])) + 1)

    def forward(self, params: Params, xs: list[np.ndarray], training: bool = False,
                rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        axis = self._axis(xs[0].ndim - 1) + 1
        return np.concatenate(xs, axis=axis), (axis, np.cumsum([x.shape[axis] for x in xs[:-1]]))

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        axis, cuts = cache
        return np.split(dy, cuts, axis=axis), {}


@hookimpl
def layerkit_register_layers(register: Callable[[type[Layer]], None]) -> None:
    register(Add)
    register(Concat)
