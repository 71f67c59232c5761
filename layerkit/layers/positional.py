"""Position encodings added to a (T, D) sequence: fixed sinusoids or a learned table."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from layerkit import hookimpl
from layerkit.errors import ShapeError
from layerkit.nn.layer import Coupling, Example, Layer, Params, ParamSpec, Shape


def sinusoids(length: int, dim: int) -> np.ndarray:
    """The (length, dim) table of "Attention Is All You Need", in float64.

    Column 2i is sin(t / 10000^(2i / dim)) and column 2i + 1 the cosine of the same angle;
    an odd ``dim`` ends on a sine.
    """
    t = np.arange(length, dtype=np.float64)[:, None]
    freq = np.exp(-np.log(10000.0) * np.arange(0, dim, 2, dtype=np.float64) / dim)
    angle = t * freq
    table = np.empty((length, dim))
    table[:, 0::2] = np.sin(angle)
    table[:, 1::2] = np.cos(angle[:, :dim // 2])
    return table


class PositionalEncoding(Layer):
    """Adds a position code to each step of a (T, D) sequence: sinusoidal (fixed) or learned."""

    type = "positional_encoding"
    sample_coupling = Coupling.NONE
    description = (
        "Adds a code of the position to every step of a (T, D) sequence: y[t] = x[t] + P[t]. `kind: "
        "sinusoidal` uses the fixed sine/cosine table of 'Attention Is All You Need' (no parameters); "
        "`kind: learned` learns P, a (max_len, D) tensor `weight`, of which the first T rows are used. "
        "T must not exceed max_len.")
    params_schema = {
        "type": "object",
        "properties": {
            "kind": {"enum": ["sinusoidal", "learned"], "default": "sinusoidal",
                     "description": "fixed sinusoids, or a learned (max_len, D) table"},
            "max_len": {"type": "integer", "minimum": 1, "default": 512,
                        "description": "the longest sequence the layer accepts (rows of the learned table)"},
        },
        "additionalProperties": False,
    }
    examples = (
        Example({}, (5, 4), "sinusoidal"),
        Example({"kind": "sinusoidal", "max_len": 7}, (7, 3), "odd D, T = max_len"),
        Example({"kind": "learned", "max_len": 8}, (5, 4), "learned, T < max_len"),
    )

    # the hyper-parameters, set from the config by Layer.__init__
    kind: str
    max_len: int

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 2:
            raise ShapeError(f"needs a (T, D) sequence (positions x features), got {tuple(input_shape)}")
        if input_shape[0] > self.max_len:
            raise ShapeError(f"the sequence has {input_shape[0]} positions, more than max_len {self.max_len}")
        return tuple(input_shape)

    def param_specs(self, input_shape: Shape) -> dict[str, ParamSpec]:
        if self.kind != "learned":
            return {}
        d = input_shape[-1]
        return {"weight": ParamSpec((int(self.max_len), d), "lecun_normal", fan_in=d, fan_out=d)}

    def flops(self, input_shape: Shape) -> int:
        return int(np.prod(input_shape))

    def _table(self, params: Params, t: int, d: int, dtype: Any) -> np.ndarray:
        if self.kind == "learned":
            return params["weight"][:t]
        return sinusoids(t, d).astype(dtype)

    def forward(self, params: Params, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        return x + self._table(params, x.shape[1], x.shape[2], x.dtype), x.shape[1]

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        if self.kind != "learned":
            return dy, {}
        weight = np.zeros_like(params["weight"], dtype=dy.dtype)
        weight[:cache] = dy.sum(axis=0)
        return dy, {"weight": weight}

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        t, d = input_shape
        table = np.asarray(params["weight"])[:t] if self.kind == "learned" else sinusoids(t, d)
        return g.op("Add", [x, g.const(table, "positions")])


@hookimpl
def layerkit_register_layers(register: Callable[[type[Layer]], None]) -> None:
    register(PositionalEncoding)
