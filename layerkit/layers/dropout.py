"""Inverted dropout, element-wise and channel-wise."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from layerkit import hookimpl
from layerkit.nn.layer import Coupling, Example, Layer, Params, require_rank, Shape


class Dropout(Layer):
    """Inverted dropout: in training, zeroes each value with probability ``rate`` and scales the rest."""

    type = "dropout"
    description = ("Inverted dropout: in training each value is zeroed with probability `rate` and the "
                   "survivors are scaled by 1 / (1 - rate); identity at inference. Randomness comes only from "
                   "the generator the trainer passes in, drawn per sample, so a seeded run is reproducible and the "
                   "same on any number of processes.")
    params_schema = {
        "type": "object",
        "properties": {
            "rate": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.5,
                     "description": "probability of dropping each value"},
        },
        "additionalProperties": False,
    }
    examples = (Example({"rate": 0.5}, (6,)), Example({"rate": 0.25}, (2, 3, 3)))
    uses_rng = True
    # each row's mask comes from its sample's own stream: the same masks on any number of processes
    sample_rng = True
    sample_coupling = Coupling.NONE

    def flops(self, input_shape: Shape) -> int:
        return 2 * int(np.prod(input_shape))

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        return x  # inference: the identity, no node at all

    def forward(self, params: Params, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        rate = float(self.rate)
        if not training or rate == 0.0:
            return x, None
        if rng is None:
            # never fall back to global random state: that would make runs irreproducible
            raise ValueError("dropout needs the rng argument in training mode")
        keep = rng.random(x.shape, dtype=x.dtype if x.dtype in (np.float32, np.float64) else np.float64)
        keep = keep >= rate
        scale = 1.0 / (1.0 - rate)
        y = x * keep
        y *= scale
        return y, (keep, scale)

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        if cache is None:
            return dy, {}
        keep, scale = cache
        dx = dy * keep
        dx *= scale
        return dx, {}


class Dropout2D(Layer):
    """Channel dropout: in training, zeroes whole feature maps with probability ``rate``."""

    type = "dropout2d"
    description = ("Channel-wise inverted dropout (PyTorch's Dropout2d) for (C, H, W) input: in training each "
                   "whole channel of each sample is zeroed with probability `rate` and the survivors scaled by "
                   "1 / (1 - rate); identity at inference. Neighbouring pixels of a feature map are correlated, "
                   "so dropping single values regularises them little.")
    params_schema = Dropout.params_schema
    examples = (Example({"rate": 0.5}, (4, 3, 3)), Example({"rate": 0.2}, (6, 2, 5)))
    uses_rng = True
    sample_rng = True
    sample_coupling = Coupling.NONE

    def output_shape(self, input_shape: Shape) -> Shape:
        require_rank(input_shape, 3, "(channels, height, width)")
        return tuple(input_shape)

    def flops(self, input_shape: Shape) -> int:
        return 2 * int(np.prod(input_shape))

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        return x  # inference: the identity

    def forward(self, params: Params, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        rate = float(self.rate)
        if not training or rate == 0.0:
            return x, None
        if rng is None:
            raise ValueError("dropout2d needs the rng argument in training mode")
        # one draw per (sample, channel), broadcast over the pixels; the scale is folded into the mask
        mask = (rng.random((x.shape[0], x.shape[1], 1, 1)) >= rate).astype(x.dtype)
        mask *= 1.0 / (1.0 - rate)
        return x * mask, mask

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        if cache is None:
            return dy, {}
        return dy * cache, {}


@hookimpl
def layerkit_register_layers(register: Callable[[type[Layer]], None]) -> None:
    register(Dropout)
    register(Dropout2D)
