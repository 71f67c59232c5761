"""Fully connected layer."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from layerkit import hookimpl
from layerkit.nn.capabilities import AbsorbsAffine, FreshInferOutput, InputGradientOnly
from layerkit.nn.layer import Coupling, Example, Layer, Params, ParamSpec, Shape


class Dense(AbsorbsAffine, FreshInferOutput, InputGradientOnly, Layer):
    """Fully connected layer ``y = x W + b`` on the last axis; absorbs a following batch norm for inference."""

    type = "dense"
    sample_coupling = Coupling.NONE
    description = ("Fully connected layer y = x W + b on the last axis, as PyTorch's Linear: a (D,) input gives "
                   "(units,), and any (..., D) input gives (..., units) with the same W for every leading "
                   "position (flatten first to connect every value). W has shape (D, units), the transpose of "
                   "PyTorch's weight.")
    params_schema = {
        "type": "object",
        "properties": {
            "units": {"type": "integer", "minimum": 1, "description": "number of outputs"},
            "use_bias": {"type": "boolean", "default": True},
            "init": {"enum": ["he_normal", "he_uniform", "glorot_uniform", "glorot_normal", "lecun_normal"],
                     "default": "glorot_uniform", "description": "weight initializer"},
        },
        "required": ["units"],
        "additionalProperties": False,
    }
    examples = (
        Example({"units": 3}, (5,)),
        Example({"units": 4, "use_bias": False, "init": "he_normal"}, (6,)),
        Example({"units": 2}, (3, 4), "on the last axis of a (positions, features) input"),
        Example({"units": 3}, (2, 2, 5), "on the last axis of a 3-d input"),
    )

    #: fold_affine scales the units, the last axis: the fold pass folds only where that is
    #: the channel axis, i.e. for a flat input
    affine_axis = -1

    def output_shape(self, input_shape: Shape) -> Shape:
        return (*input_shape[:-1], self.units)

    def param_specs(self, input_shape: Shape) -> dict[str, ParamSpec]:
        d = input_shape[-1]
        specs = {"W": ParamSpec((d, self.units), self.init, fan_in=d, fan_out=self.units, decay=True)}
        if self.use_bias:
            specs["b"] = ParamSpec((self.units,), "zeros")
        return specs

    def flops(self, input_shape: Shape) -> int:
        return 2 * int(np.prod(input_shape)) * self.units

    def forward(self, params: Params, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        y = x @ params["W"]
        if self.use_bias:
            y += params["b"]
        return y, x

    def infer(self, params: Params, x: np.ndarray, state: dict[str, np.ndarray] | None = None) -> np.ndarray:
        # the bias may come from a folded batch norm even when use_bias is false
        y = x @ params["W"]
        if "b" in params:
            y += params["b"]
        return y

    def fold_affine(self, params: Params, scale: np.ndarray, shift: np.ndarray) -> dict[str, np.ndarray] | None:
        if np.shape(scale) != (self.units,):
            return None  # channels that are not the units: cannot be folded into W
        w = params["W"] * scale
        b = shift + params["b"] * scale if "b" in params else shift.copy()
        return {"W": w.astype(params["W"].dtype, copy=False), "b": b.astype(params["W"].dtype, copy=False)}

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        return _input_gradient(params, dy), self.backward_params(params, cache, dy)

    def backward_input(self, params: Params, cache: Any, dy: np.ndarray) -> np.ndarray:
        """Only the input gradient: the model calls this for a frozen layer (no GEMM for dW)."""
        return _input_gradient(params, dy)

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        y = g.op("MatMul", [x, g.const(params["W"], "W")])
        return g.op("Add", [y, g.const(params["b"], "b")]) if self.use_bias else y

    def backward_params(self, params: Params, cache: Any, dy: np.ndarray) -> dict[str, np.ndarray]:
        """Only the parameter gradients: the model calls this when the input is the data."""
        x = cache
        if x.ndim > 2:  # every leading position is one more row of the same product
            x, dy = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
        grads = {"W": x.T @ dy}
        if self.use_bias:
            grads["b"] = dy.sum(axis=0)
        return grads


def _input_gradient(params: Params, dy: np.ndarray) -> np.ndarray:
    """``dy W^T``: what ``backward`` and ``backward_input`` both return, from this one product."""
    return dy @ params["W"].T


@hookimpl
def layerkit_register_layers(register: Callable[[type[Layer]], None]) -> None:
    register(Dense)
