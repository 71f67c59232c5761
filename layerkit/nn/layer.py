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

import warnings
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from layerkit.errors import ShapeError
from layerkit.nn.capabilities import DEFAULTS as CAPABILITY_DEFAULTS

Shape = tuple[int, ...]
Params = Mapping[str, np.ndarray]


#: the name ``inputs`` use for the model input; no layer may take it
RESERVED_INPUT = "input"


@dataclass(frozen=True)
class ParamSpec:
    """A tensor a layer needs allocated: learnable parameter or running state.

    ``shape``: the tensor's shape (no batch axis).
    ``init``: how it starts -- the name of an initializer from
    :mod:`layerkit.nn.initializers` (``"zeros"``, ``"ones"``, ``"he_normal"``, ``"he_uniform"``,
    ``"glorot_uniform"``, ``"glorot_normal"``, ``"lecun_normal"``), or a number: every element
    starts at that constant (``ParamSpec((c,), init=0.25)``: a PReLU slope).
    ``fan_in``/``fan_out`` feed the variance-scaling initializers (default: the first axis,
    and the size divided by it).
    ``decay`` says whether L2 weight decay applies (weights yes, biases, slopes and
    normalisation scales no); the optimizer applies it once for all layers.
    ``zero_rows``: rows of the first axis that start at zero (an embedding's ``padding_idx``).
    """

    shape: Shape
    init: str | float = "zeros"
    fan_in: int | None = None
    fan_out: int | None = None
    decay: bool = False
    #: rows (indices on the first axis) that start at zero whatever ``init`` says: an
    #: embedding's padding row
    zero_rows: tuple[int, ...] = ()


@dataclass(frozen=True)
class Example:
    """A configuration the conformance suite builds and gradient-checks.

    ``input_shape`` is per sample (a list of shapes for multi-input layers).
    """

    config: dict[str, Any]
    input_shape: Any
    note: str = ""


class Coupling(str, Enum):
    """How a sample's output (and input gradient) depends on the other samples of its batch.

    The value of :attr:`Layer.sample_coupling` (and :attr:`layerkit.nn.losses.Loss.sample_coupling`).
    It decides whether a batch may be split over processes (``layerkit.parallel.processes``)
    and which check the conformance suite runs. The plain strings work too
    (``sample_coupling = "none"``).
    """

    #: each sample's output and input gradient depend only on that sample and the parameters
    #: (dense, conv, activations, pooling, dropout): a batch may be cut anywhere, and the
    #: pieces' parameter gradients add up to the whole batch's
    NONE = "none"
    #: samples meet only through sums over the whole batch, which the layer takes with
    #: :func:`layerkit.parallel.collectives.batch_sum` (batch norm): a split batch still
    #: computes exactly the whole batch's numbers, because ``batch_sum`` adds every piece's sums
    BATCH_SUMS = "batch_sums"
    #: anything else, or not known: the batch is never split
    OTHER = "other"


#: old class attributes that still work for one release, and what they became
_DEPRECATED = {
    "per_sample": "sample_coupling = Coupling.NONE",
    "batch_sync": "sample_coupling = Coupling.BATCH_SUMS",
    "stochastic": "uses_rng = True (only if forward draws random numbers from rng)",
}


def migrate_declarations(cls: type[Any]) -> None:
    """Map a subclass's deprecated declarations onto the current ones and normalise the coupling.

    Runs when the class is defined, so every caller only ever reads the current names.
    """
    own = cls.__dict__
    old = [name for name in _DEPRECATED if name in own]
    if old:
        warnings.warn(f"{cls.__module__}.{cls.__qualname__}: " + "; ".join(
            f"{name!r} is deprecated, declare {_DEPRECATED[name]}" for name in old), DeprecationWarning,
            stacklevel=3)
    if "sample_coupling" not in own:
        if own.get("batch_sync"):
            cls.sample_coupling = Coupling.BATCH_SUMS
        elif "per_sample" in own:
            cls.sample_coupling = Coupling.NONE if own["per_sample"] else Coupling.OTHER
    if "uses_rng" not in own and "stochastic" in own:
        cls.uses_rng = bool(own["stochastic"])
    try:
        cls.sample_coupling = Coupling(cls.sample_coupling)
    except ValueError:
        pass  # left as written: check_layer_metadata names it, and callers treat it as OTHER


def overrides(obj: Any, member: str, base: type | None = None) -> bool:
    """Whether ``obj`` (a layer or loss, or its class) replaces ``base``'s implementation of ``member``.

    How callers tell an optional path a layer really provides from the default that falls back
    on ``backward`` / ``forward``; ``base`` is :class:`Layer` unless given. For a capability method
    (``backward_inplace``, ``infer_inplace``, ``inference_affine``, ``fold_affine``; see
    :mod:`layerkit.nn.capabilities`), the mixin's fallback does not count either.
    """
    cls = obj if isinstance(obj, type) else type(obj)
    base = Layer if base is None else base
    value = getattr(cls, member, None)
    return value is not getattr(base, member, None) and value is not CAPABILITY_DEFAULTS.get(member)


class Layer:
    """Base class for every layer. Three groups of members, each with a working default.

    **Must implement** (every layer): :attr:`type`, :attr:`description`,
    :attr:`params_schema`, :attr:`examples`, :attr:`arity` (when not 1),
    :meth:`output_shape`, :meth:`param_specs` / :meth:`state_specs` (when the layer has
    tensors), :meth:`flops`, :meth:`forward` and :meth:`backward`.

    **Declarations that change how training runs** (the defaults are the safe choice;
    the conformance suite checks every claim): :attr:`has_kinks`, :attr:`uses_rng`,
    :attr:`sample_coupling`.

    **Optional paths** (the defaults fall back on ``backward`` / ``forward``; an override must
    give the same numbers, bit for bit, which the conformance suite checks):
    :meth:`backward_params` (parameter gradients only), :meth:`infer` (the inference output
    alone), and :meth:`to_onnx` (export).

    Rewrites for particular pairs of layers (an activation after a max pool, batch norm folded
    into a convolution, in-place backward and inference) are not members of this class: a layer
    opts in to them through the capability mixins of :mod:`layerkit.nn.capabilities`, and the
    planner's passes (:mod:`layerkit.nn.passes`) apply them.

    Gradients are those of the loss the trainer minimises, the **batch mean** of the
    per-sample losses: ``backward`` receives ``dy = d(mean loss)/d(y)`` (already divided by
    the batch size) and returns ``d(mean loss)/d(x)`` and ``d(mean loss)/d(parameter)``,
    i.e. parameter gradients are sums over the batch of the per-sample contributions, never
    divided again.
    """

    # -- must implement: description ----------------------------------------------
    #: the snake_case name model files use in ``"type"``
    type: ClassVar[str] = ""
    #: one line for ``layerkit layers`` and the JSON Schema
    description: ClassVar[str] = ""
    #: JSON Schema of the hyper-parameters (``"additionalProperties": false``; defaults in
    #: ``"default"``); the builder validates a node against it and fills the defaults
    params_schema: ClassVar[dict] = {"type": "object", "properties": {}, "additionalProperties": False}
    #: number of inputs; ``None`` means "two or more" (add, concat). May be set per instance in
    #: ``__init__`` when it depends on the config (a recurrent layer with ``padding_idx`` reads the
    #: token ids as a second input); the builder reads it from the instance.
    arity: ClassVar[int | None] = 1
    #: example configurations the conformance suite builds and checks (at least one)
    examples: ClassVar[Sequence[Example]] = ()

    # -- declarations that change how training runs --------------------------------
    #: the layer has points where it is not differentiable (relu at 0, max-pool ties): the
    #: gradient checker skips coordinates whose one-sided differences disagree instead of
    #: failing. May be set per instance in ``__init__`` when it depends on the config.
    has_kinks: ClassVar[bool] = False
    #: ``forward`` draws random numbers from its ``rng`` argument when ``training`` is true
    #: (dropout). Sample-parallel training then gives every shard its own generator, and the
    #: conformance suite compares batch halves in inference mode, where no numbers are drawn.
    #: A layer that merely behaves differently in training (batch norm) does not set it.
    uses_rng: ClassVar[bool] = False
    #: with :attr:`uses_rng`: ``forward``'s ``rng`` is a :class:`layerkit.nn.samplerandom.SampleRandom`,
    #: whose draws take the batch first (``rng.random(x.shape)``) and give row ``i`` the numbers of
    #: that sample's own stream, so training draws the same numbers on any number of processes (the
    #: check ``split_batch_draws_the_same_numbers`` verifies it). False (layers written for 0.1 and
    #: 0.2): ``rng`` is a :class:`numpy.random.Generator` per share of the batch, as before, and a
    #: run then depends on how many processes share each batch.
    sample_rng: ClassVar[bool] = False
    #: how samples of a batch interact in this layer, a :class:`Coupling`: ``NONE`` (each
    #: sample on its own), ``BATCH_SUMS`` (only through ``collectives.batch_sum``) or
    #: ``OTHER`` (the default: anything else; such a model trains in one process).
    sample_coupling: ClassVar[Coupling | str] = Coupling.OTHER
    #: what the layer's input holds: ``"float"`` (the default: real values, differentiated) or
    #: ``"tokens"`` (integer ids, int64, as an embedding reads them). A multi-input layer may give
    #: one kind per input as a tuple (``("float", "tokens")``: a recurrent layer's optional mask
    #: ids), and may set it per instance in ``__init__`` when it depends on the config. A token
    #: input has no gradient: ``backward`` returns ``None`` in its place, and the layer implements
    #: :meth:`token_range`. The builder refuses a float input fed by token ids and the reverse.
    input_kind: ClassVar[str | tuple[str, ...]] = "float"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        migrate_declarations(cls)

    def __init__(self, **config: Any) -> None:
        """Keep the hyper-parameters (defaults filled in) as attributes; nothing changes them later."""
        self.config = dict(config)
        for key, value in config.items():
            setattr(self, key, value)

    # -- must implement: static description ---------------------------------------
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

    def workspace_bytes(self, input_shape: Any, batch_size: int) -> int:
        """Scratch memory a batch needs besides the outputs, in float32 bytes (a convolution's
        im2col columns); the size guard adds it to the activation estimate. Default: none."""
        return 0

    def token_range(self) -> int:
        """For a layer with a ``"tokens"`` input: the ids it accepts are ``0 .. token_range() - 1``
        (an embedding's vocabulary size). The check engine and the gradient checker draw random
        ids from that range."""
        raise NotImplementedError(f"layer {self.type!r} takes token ids but does not say their range "
                                  f"(token_range)")

    # -- must implement: compute ----------------------------------------------------
    def forward(self, params: Params, x: Any, training: bool = False,
                rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[Any, Any]:
        """``(y, cache)`` for a batch ``x``; must not modify ``x`` or ``params``.

        ``state`` holds the :meth:`state_specs` tensors, updated in place when ``training``;
        ``rng`` is given when training (see :attr:`uses_rng`). ``cache`` is whatever
        :meth:`backward` needs, and is passed back to it once.
        """
        raise NotImplementedError

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        """``(dx, {parameter name: gradient})`` from ``dy`` (see the class docstring's convention).

        Must not modify ``dy`` (another consumer may read it). ``dx`` has the input's shape
        and dtype (a list for a multi-input layer); every parameter gets a gradient.
        """
        raise NotImplementedError

    # -- optional speed paths --------------------------------------------------------
    def backward_params(self, params: Params, cache: Any, dy: np.ndarray) -> dict[str, np.ndarray]:
        """Only the parameter gradients of :meth:`backward`, skipping the input gradient.

        The network calls it for a layer whose input gradient nobody reads (a first layer fed
        by the data). Override it when that saves work (dense, conv); the result must equal
        ``backward(...)[1]`` bit for bit.
        """
        return self.backward(params, cache, dy)[1]

    # -- optional inference path ------------------------------------------------------
    # Network.infer (predict, evaluation) runs it instead of forward; the conformance
    # suite (layerkit.testing.contract) checks it against forward's inference mode.
    def infer(self, params: Params, x: Any, state: dict[str, np.ndarray] | None = None) -> Any:
        """The inference output alone: ``forward(params, x, training=False, state=state)[0]``.

        Nothing is kept for a backward pass. Override it when that saves work or memory
        (conv keeps no columns); the result must equal forward's inference output bit for bit.
        """
        return self.forward(params, x, False, None, state)[0]

    # -- optional: export ---------------------------------------------------------------
    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        """Add the inference form of this layer to an ONNX graph; return its output's name.

        ``g`` is the graph being built (``g.op(op_type, inputs, **attributes)`` adds a node and
        returns its output name, ``g.const(array)`` a constant); ``x`` is the input tensor's name (a
        list of names when the layer takes several), ``input_shape`` the per-sample input shape(s),
        ``params``/``state`` this layer's tensors. Without an override ``layerkit export`` refuses a
        model using the layer, naming it (docs/export.md).
        """
        raise NotImplementedError(f"layer {self.type!r} has no ONNX mapping")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({args})"



def input_kinds(layer: Any, count: int) -> tuple[str, ...]:
    """The kind (``"float"`` or ``"tokens"``) of each of ``count`` inputs of ``layer`` (a layer or its
    class), from :attr:`Layer.input_kind`: one string applies to every input."""
    kind = getattr(layer, "input_kind", "float")
    if isinstance(kind, str):
        return (kind,) * count
    kinds = tuple(kind)
    return kinds[:count] + ("float",) * (count - len(kinds))


def require_rank(input_shape: Sequence[int], rank: int | tuple[int, ...], what: str) -> None:
    """Raise a ShapeError unless the per-sample shape has the given rank."""
    ranks = (rank,) if isinstance(rank, int) else rank
    if len(input_shape) not in ranks:
        want = " or ".join(f"{r}-d" for r in ranks)
        raise ShapeError(f"needs a {want} input ({what}), got {tuple(input_shape)}")
