"""Element-wise activations and softmax.

Each caches its *output*: the next layer keeps that array alive anyway, so the
cache costs no memory, and every derivative here is cheap in terms of y.
Backward never writes into ``dy`` (``add`` hands the same array to all inputs);
``backward_inplace`` does, and only ``Network.backward`` calls it, when the planner knows
nobody else holds that ``dy`` (``layerkit.nn.passes.choose_backward_calls``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from layerkit import hookimpl
from layerkit.parallel.chunks import over_chunks
from layerkit.errors import ShapeError
from layerkit.nn.capabilities import (CommutesWithMax, FreshGradient, FreshInferOutput, InplaceBackward,
                                       InplaceInfer)
from layerkit.nn.layer import Coupling, Example, Layer, Params, ParamSpec, Shape

_NO_PARAMS = {"type": "object", "properties": {}, "additionalProperties": False}
_EXAMPLES = (Example({}, (7,), "flat features"), Example({}, (2, 3, 3), "feature maps"))


class ReLU(CommutesWithMax, InplaceBackward, FreshGradient, InplaceInfer, FreshInferOutput, Layer):
    """max(x, 0), element-wise; commutes with max pooling, and runs in place where the planner allows."""

    type = "relu"
    sample_coupling = Coupling.NONE
    description = "Rectified linear unit: max(x, 0)."
    params_schema = _NO_PARAMS
    examples = _EXAMPLES
    has_kinks = True

    def flops(self, input_shape: Shape) -> int:
        return int(np.prod(input_shape))

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        return g.op("Relu", [x])

    def forward(self, params: Params, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        if x.ndim == 0 or x.shape[0] < 2:
            y = np.maximum(x, 0)
            return y, y
        y = np.empty_like(x)

        def work(slices: list[slice], step: int) -> None:
            for sl in slices:
                np.maximum(x[sl], 0, out=y[sl])

        over_chunks(x, work)
        return y, y

    def infer_inplace(self, params: Params, x: np.ndarray, state: dict[str, np.ndarray] | None = None) -> np.ndarray:
        # predict: the input is the model's own, so no new array
        if x.ndim == 0 or x.shape[0] < 2:
            return np.maximum(x, 0, out=x)

        def work(slices: list[slice], step: int) -> None:
            for sl in slices:
                np.maximum(x[sl], 0, out=x[sl])

        over_chunks(x, work)
        return x

    # CommutesWithMax: max(relu(a), relu(b)) == relu(max(a, b)), and relu'(max) routes alike

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        return self._masked(cache, dy, np.empty_like(dy)), {}

    def backward_inplace(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        # no new output array: dy is overwritten, halving the memory traffic of the pass
        return self._masked(cache, dy, dy), {}

    @staticmethod
    def _masked(y: np.ndarray, dy: np.ndarray, out: np.ndarray) -> np.ndarray:
        if dy.ndim == 0 or dy.shape[0] < 2:
            return np.multiply(dy, y > 0, out=out)

        def work(slices: list[slice], step: int) -> None:
            mask = np.empty((step, *dy.shape[1:]), dtype=bool)
            for sl in slices:
                m = mask[:sl.stop - sl.start]
                np.greater(y[sl], 0, out=m)
                np.multiply(dy[sl], m, out=out[sl])

        over_chunks(dy, work)
        return out


class LeakyReLU(Layer):
    """x where positive, ``alpha * x`` elsewhere, element-wise."""

    type = "leaky_relu"
    sample_coupling = Coupling.NONE
    description = ("Leaky rectified linear unit: x for x > 0, alpha * x otherwise (alpha is PyTorch's "
                   "negative_slope, here limited to [0, 1]).")
    params_schema = {
        "type": "object",
        "properties": {
            "alpha": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.01,
                      "description": "slope for negative inputs"},
        },
        "additionalProperties": False,
    }
    examples = (Example({}, (7,)), Example({"alpha": 0.2}, (2, 3, 3)))
    has_kinks = True

    def flops(self, input_shape: Shape) -> int:
        return 2 * int(np.prod(input_shape))

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        return g.op("LeakyRelu", [x], alpha=float(self.alpha))

    def forward(self, params: Params, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        alpha = float(self.alpha)
        # with 0 <= alpha <= 1, max(x, alpha*x) is exactly the piecewise definition
        y = np.maximum(x, x * alpha)
        return y, y

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        # y > 0 exactly where x > 0 because alpha >= 0
        return np.where(cache > 0, dy, dy * float(self.alpha)), {}


class Sigmoid(Layer):
    """The logistic function 1 / (1 + exp(-x)), element-wise."""

    type = "sigmoid"
    sample_coupling = Coupling.NONE
    description = ("Logistic sigmoid 1 / (1 + exp(-x)), overflow-free and accurate in relative terms over the "
                   "float range: exp(x) / (1 + exp(x)) for x < 0, to full precision while exp(x) is a normal "
                   "number (x > -87 in float32, -708 in float64), then through the subnormals to 0 (x < -103 / "
                   "-745). The derivative comes from exp(-|x|), accurate for large |x| on both sides.")
    params_schema = _NO_PARAMS
    examples = _EXAMPLES

    def flops(self, input_shape: Shape) -> int:
        return 4 * int(np.prod(input_shape))

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        return g.op("Sigmoid", [x])

    def forward(self, params: Params, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        # e = exp(-|x|) <= 1 never overflows; sigmoid = 1 / (1 + e) for x >= 0 and e / (1 + e)
        # below, each a ratio of accurate terms (the old (1 + tanh(x/2)) / 2 cancelled to exactly 0
        # below x = -37 and lost relative accuracy from -15)
        e = np.abs(x)
        np.negative(e, out=e)
        np.exp(e, out=e)
        y = e + 1
        np.divide(np.where(x >= 0, 1, e), y, out=y)
        return y, e

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        # sigmoid'(x) = e / (1 + e)^2 with e = exp(-|x|): even in x, and no 1 - y cancellation
        e = cache
        dx = e + 1
        np.square(dx, out=dx)
        np.divide(e, dx, out=dx)
        dx *= dy
        return dx, {}


class Tanh(Layer):
    """The hyperbolic tangent, element-wise."""

    type = "tanh"
    sample_coupling = Coupling.NONE
    description = "Hyperbolic tangent."
    params_schema = _NO_PARAMS
    examples = _EXAMPLES

    def flops(self, input_shape: Shape) -> int:
        return 4 * int(np.prod(input_shape))

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        return g.op("Tanh", [x])

    def forward(self, params: Params, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        y = np.tanh(x)
        return y, y

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        dx = cache * cache
        np.subtract(1, dx, out=dx)
        dx *= dy
        return dx, {}


AXIS_SCHEMA = {"type": "integer", "default": 0,
               "description": "per-sample axis to normalise over: 0 is the features of a (D,) input or the "
                              "channels of a (C, H, W) input (PyTorch's dim=1), -1 the last axis"}


def _batch_axis(axis: int, input_shape: Sequence[int]) -> int:
    """The per-sample ``axis`` as an axis of the batched array; ShapeError when out of range."""
    rank = len(input_shape)
    if not -rank <= axis < rank:
        raise ShapeError(f"axis {axis} is out of range for a {rank}-d input {tuple(input_shape)}")
    return axis % rank + 1


class Softmax(Layer):
    """Softmax over one axis: exponentials normalised to sum to one."""

    type = "softmax"
    sample_coupling = Coupling.NONE
    description = ("Softmax over one per-sample axis (default the features of a (D,) input or the channels of "
                   "a (C, H, W) input), max-shifted for stability. For training prefer the fused "
                   "softmax_cross_entropy loss.")
    params_schema = {"type": "object", "properties": {"axis": AXIS_SCHEMA}, "additionalProperties": False}
    examples = (Example({}, (5,), "class scores"), Example({}, (3, 2, 2), "per-pixel over channels"),
                Example({"axis": -1}, (3, 2, 4), "over the last axis"))

    def output_shape(self, input_shape: Shape) -> Shape:
        _batch_axis(getattr(self, "axis", 0), input_shape)
        return tuple(input_shape)

    def flops(self, input_shape: Shape) -> int:
        return 5 * int(np.prod(input_shape))

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        return g.op("Softmax", [x], axis=_batch_axis(getattr(self, "axis", 0), input_shape))

    def forward(self, params: Params, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        ax = _batch_axis(getattr(self, "axis", 0), x.shape[1:])
        y = x - x.max(axis=ax, keepdims=True)
        np.exp(y, out=y)
        y /= y.sum(axis=ax, keepdims=True)
        return y, (y, ax)

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        y, ax = cache
        dx = dy * y
        dx -= y * dx.sum(axis=ax, keepdims=True)
        return dx, {}


class LogSoftmax(Layer):
    """The logarithm of the softmax over one axis, computed stably."""

    type = "log_softmax"
    sample_coupling = Coupling.NONE
    description = ("Log of the softmax over one per-sample axis, x - max - log(sum(exp(x - max))): finite "
                   "for any input. Pair it with the nll loss (together: softmax_cross_entropy).")
    params_schema = {"type": "object", "properties": {"axis": AXIS_SCHEMA}, "additionalProperties": False}
    examples = (Example({}, (5,), "class scores"), Example({"axis": 0}, (3, 2, 2), "per-pixel over channels"))

    def output_shape(self, input_shape: Shape) -> Shape:
        _batch_axis(self.axis, input_shape)
        return tuple(input_shape)

    def flops(self, input_shape: Shape) -> int:
        return 5 * int(np.prod(input_shape))

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        return g.op("LogSoftmax", [x], axis=_batch_axis(self.axis, input_shape))

    def forward(self, params: Params, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        ax = _batch_axis(self.axis, x.shape[1:])
        y = x - x.max(axis=ax, keepdims=True)
        y -= np.log(np.exp(y).sum(axis=ax, keepdims=True))
        return y, (y, ax)

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        # d/dx of log softmax: dy - softmax * sum(dy)
        y, ax = cache
        return dy - np.exp(y) * dy.sum(axis=ax, keepdims=True), {}


class PReLU(Layer):
    """Leaky relu with a learnable slope, shared or one per channel."""

    type = "prelu"
    sample_coupling = Coupling.NONE
    description = ("Parametric ReLU (PyTorch's PReLU): x for x > 0, a * x otherwise, with a learnable slope a, "
                   "one for the whole layer or one per channel (the first per-sample axis); initial value "
                   "0.25. Not weight-decayed.")
    params_schema = {
        "type": "object",
        "properties": {
            "per_channel": {"type": "boolean", "default": False,
                            "description": "one slope per channel (PyTorch's num_parameters = channels)"},
            "init": {"type": "number", "default": 0.25, "description": "initial slope"},
        },
        "additionalProperties": False,
    }
    examples = (Example({}, (7,), "one slope"), Example({"per_channel": True, "init": 0.1}, (3, 2, 2),
                                                         "a slope per channel"))
    has_kinks = True

    def param_specs(self, input_shape: Shape) -> dict[str, ParamSpec]:
        shape = (input_shape[0],) if self.per_channel else (1,)
        return {"alpha": ParamSpec(shape, float(self.init))}

    def flops(self, input_shape: Shape) -> int:
        return 2 * int(np.prod(input_shape))

    def _slope(self, params: Params, x: np.ndarray) -> np.ndarray:
        a = params["alpha"]
        return a.reshape((1, -1) + (1,) * (x.ndim - 2)) if self.per_channel else a.reshape(())

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        # PRelu's slope broadcasts against (N, ...): per channel (C, 1, ...), else one value
        a = params["alpha"]
        slope = a.reshape((-1,) + (1,) * (len(input_shape) - 1)) if self.per_channel else a.reshape(1)
        return g.op("PRelu", [x, g.const(slope, "alpha")])

    def forward(self, params: Params, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        a = self._slope(params, x)
        y = np.where(x > 0, x, x * a)
        return y, x

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        x = cache
        neg = x <= 0
        dx = np.where(neg, dy * self._slope(params, x), dy)
        contrib = np.where(neg, dy * x, 0)
        if self.per_channel:
            da = contrib.sum(axis=tuple(i for i in range(x.ndim) if i != 1))
        else:
            da = np.asarray(contrib.sum()).reshape(1)
        return dx, {"alpha": da.astype(x.dtype)}


@hookimpl
def layerkit_register_layers(register: Callable[[type[Layer]], None]) -> None:
    for cls in (ReLU, LeakyReLU, PReLU, Sigmoid, Tanh, Softmax, LogSoftmax):
        register(cls)
