"""The contract every layer honours, built-in or third-party.

A layer *class* is registered under a snake_case type name. The builder
instantiates it once per node with the hyper-parameters from the model file
(defaults already filled in from ``params_schema``). After that the object is
only read: everything that changes during training (learnable tensors,
running statistics) lives outside it and is passed in, so the trainer, the
gradient checker and the tests can drive any layer the same way::

    y, cache = layer.forward(params, x, training=True, rng=rng, state=state)
    dx, grads = layer.backward(params, cache, dy)

Shapes are per sample and channels-first (``(C, H, W)``); arrays carry the
batch dimension in front (NCHW). A layer with ``arity == 1`` receives one
shape / one array; any other arity receives a list of them (and returns a
list of input gradients in the same order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from layerkit.errors import ShapeError

Shape = tuple[int, ...]
Params = Mapping[str, np.ndarray]


#: the name ``inputs`` use for the model input; no layer may take it
RESERVED_INPUT = "input"


@dataclass(frozen=True)
class ParamSpec:
    """A tensor a layer needs allocated: learnable parameter or running state.

    ``init`` names an initializer from :mod:`layerkit.nn.initializers`.
    ``fan_in``/``fan_out`` feed the variance-scaling initializers.
    ``decay`` says whether L2 weight decay applies (weights yes, biases and
    normalisation scales no); the optimizer applies it once for all layers.
    """

    shape: Shape
    init: str = "zeros"
    fan_in: int | None = None
    fan_out: int | None = None
    decay: bool = False


@dataclass(frozen=True)
class Example:
    """A configuration the conformance suite builds and gradient-checks.

    ``input_shape`` is per sample (a list of shapes for multi-input layers).
    """

    config: dict[str, Any]
    input_shape: Any
    note: str = ""


class Layer:
    """Base class. Subclasses set the class attributes and override the methods."""

    type: ClassVar[str] = ""
    description: ClassVar[str] = ""
    params_schema: ClassVar[dict] = {"type": "object", "properties": {}, "additionalProperties": False}
    #: number of inputs; ``None`` means "two or more" (add, concat)
    arity: ClassVar[int | None] = 1
    #: example configurations for ``layerkit.testing`` (at least one)
    examples: ClassVar[Sequence[Example]] = ()
    #: the layer has points where it is not differentiable (relu, max pool):
    #: the gradient checker detects and skips them instead of failing
    has_kinks: ClassVar[bool] = False
    #: behaviour differs between training and inference (dropout, batch norm)
    stochastic: ClassVar[bool] = False
    #: each sample's output and input gradient depend only on that sample and the
    #: parameters, so a batch may be split into shards whose parameter gradients add
    #: up to the batch's (``layerkit.parallel.processes``); batch statistics break that
    per_sample: ClassVar[bool] = False

    def __init__(self, **config: Any) -> None:
        self.config = dict(config)
        for key, value in config.items():
            setattr(self, key, value)

    # -- static description -------------------------------------------------
    def output_shape(self, input_shape: Any) -> Shape:
        """Per-sample output shape; raise :class:`ShapeError` with a reason."""
        return tuple(input_shape)

    def param_specs(self, input_shape: Any) -> dict[str, ParamSpec]:
        """Learnable tensors, by name."""
        return {}

    def state_specs(self, input_shape: Any) -> dict[str, ParamSpec]:
        """Non-learnable tensors updated in training (running statistics)."""
        return {}

    def flops(self, input_shape: Any) -> int:
        """Forward floating-point operations per sample (multiply-add = 2)."""
        return 0

    # -- compute --------------------------------------------------------------
    def forward(self, params: Params, x: Any, training: bool = False,
                rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[Any, Any]:
        raise NotImplementedError

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({args})"


def require_rank(input_shape: Sequence[int], rank: int | tuple[int, ...], what: str) -> None:
    """Raise a ShapeError unless the per-sample shape has the given rank."""
    ranks = (rank,) if isinstance(rank, int) else rank
    if len(input_shape) not in ranks:
        want = " or ".join(f"{r}-d" for r in ranks)
        raise ShapeError(f"needs a {want} input ({what}), got {tuple(input_shape)}")
