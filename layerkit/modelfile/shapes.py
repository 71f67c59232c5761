"""The static layer graph: wiring, topological order and inferred shapes.

Everything here comes from the model file alone; no activation is allocated.
Shape errors name the layer (``layers[i]``, name, type), the shape it was
given, the layer's reason, and the shapes inferred on the way there. Layers
on independent branches are still checked after one fails, so a file's
shape problems are reported together.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any

from layerkit.errors import GraphError, LayerkitError, Problem, ShapeError
from layerkit.nn.initializers import is_valid_init
from layerkit.nn.layer import Layer, ParamSpec, Shape, input_kinds
from layerkit.plugins.registry import Registry
from layerkit.modelfile.spec import LayerSpec, ModelSpec
from layerkit.modelfile.topology import (RESERVED_INPUT, ancestors, arity_problem, config_arity, topological_order,
                                        wiring_problems)

FLOAT32_BYTES = 4


@dataclass
class Node:
    """One layer of a built graph: its spec, the layer object, and the shapes, parameters and
    costs shape inference found for it."""

    spec: LayerSpec
    layer: Layer
    input_shape: Any  # one shape, or a list of shapes for multi-input layers
    output_shape: Shape
    param_specs: dict[str, ParamSpec]
    state_specs: dict[str, ParamSpec]
    flops: int
    consumers: list[str] = field(default_factory=list)
    plugin: str = ""

    @property
    def name(self) -> str:
        """The layer's name in the model file."""
        return self.spec.name

    @property
    def inputs(self) -> list[str]:
        """The names this layer reads (``"input"`` for the model input)."""
        return self.spec.inputs

    @property
    def param_count(self) -> int:
        """The number of trainable values."""
        return sum(_size(p.shape) for p in self.param_specs.values())

    @property
    def state_count(self) -> int:
        """The number of non-trainable state values (batch-norm statistics)."""
        return sum(_size(p.shape) for p in self.state_specs.values())


def _size(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


@dataclass
class Graph:
    """A model file checked and shape-inferred: its nodes in topological order, no weights yet.
    What ``layerkit summary`` and ``check`` read, and what the runtime model is built from."""

    spec: ModelSpec
    nodes: list[Node]  # topological order, the output node last
    input_shape: Shape

    @property
    def input_dtype(self) -> str:
        """``"float32"`` or ``"int64"`` (token ids): the model file's ``input.dtype``."""
        return self.spec.input_dtype

    def __post_init__(self) -> None:
        self._by_name = {n.name: n for n in self.nodes}

    @property
    def output(self) -> Node:
        """The output node (the last one)."""
        return self.nodes[-1]

    def node(self, name: str) -> Node:
        """The node called ``name`` (KeyError if none)."""
        return self._by_name[name]

    @property
    def param_count(self) -> int:
        """The number of trainable values in the whole graph."""
        return sum(n.param_count for n in self.nodes)

    @property
    def flops(self) -> int:
        return sum(n.flops for n in self.nodes)

    def activation_bytes(self, batch_size: int) -> int:
        """Rough training-time activation memory: every layer output kept for backward,
        twice (value and its gradient)."""
        per_sample = _size(self.input_shape) + sum(_size(n.output_shape) for n in self.nodes)
        return 2 * per_sample * batch_size * FLOAT32_BYTES

    def workspace_bytes(self, batch_size: int, itemsize: int = FLOAT32_BYTES) -> int:
        """The largest scratch one layer needs for a batch besides the outputs (a convolution's
        im2col columns), from each layer's ``workspace_bytes(input_shape, batch_size)``
        (float32 bytes; scaled to ``itemsize``)."""
        return max([int(n.layer.workspace_bytes(n.input_shape, batch_size)) * itemsize // FLOAT32_BYTES
                    for n in self.nodes] + [0])

    def shape_trace(self, upto: int | None = None) -> str:
        return _trace(self.input_shape, [(n.name, n.output_shape) for n in self.nodes[:upto]])


def _trace(input_shape: Shape, steps: list[tuple[str, Shape]]) -> str:
    return " -> ".join([f"input {tuple(input_shape)}", *(f"{name} {shape}" for name, shape in steps)])


def _shape(value: Any) -> Shape:
    """A plugin's answer as a shape; ``operator.index`` refuses floats like 2.5."""
    return tuple(operator.index(d) for d in value)


def _specs(value: Any, what: str) -> dict[str, ParamSpec]:
    if not isinstance(value, dict) or not all(isinstance(v, ParamSpec) for v in value.values()):
        raise TypeError(f"{what} must return a dict of ParamSpec, got {type(value).__name__}")
    for name, spec in value.items():
        shape = _shape(spec.shape)
        if any(d < 1 for d in shape):
            raise ValueError(f"{what} gave tensor {name!r} the shape {shape}")
        if not is_valid_init(spec.init):
            raise ValueError(f"{what} gave tensor {name!r} the unknown initializer {spec.init!r} "
                             "(a name from layerkit.nn.initializers, or a number to start every element at)")
    return value


def build_graph(spec: ModelSpec, registry: Registry) -> Graph:
    """Instantiate every layer and infer every shape, statically."""
    source = spec.source
    problems = wiring_problems(spec.layers, spec.output, source)
    for layer_spec in spec.layers:
        cls = registry.layer(layer_spec.type)
        found = arity_problem(layer_spec, config_arity(cls, layer_spec.config), source)
        if found:
            problems.append(found)
    if problems:
        raise GraphError(problems=problems)

    order: list[LayerSpec] = topological_order(spec.layers, spec.output)
    by_name = {layer.name: layer for layer in spec.layers}
    shapes: dict[str, Shape] = {RESERVED_INPUT: tuple(spec.input_shape)}
    nodes: list[Node] = []
    failed: set[str] = set()
    for layer_spec in order:
        if any(ref in failed for ref in layer_spec.inputs):
            failed.add(layer_spec.name)  # its input shape is unknown: nothing more to say
            continue
        entry = registry.entry("layer", layer_spec.type)
        arity = config_arity(entry.obj, layer_spec.config)
        in_shapes = [shapes[ref] for ref in layer_spec.inputs]
        in_shape = in_shapes[0] if arity == 1 else in_shapes
        try:
            node = _node(layer_spec, entry.obj, in_shape, entry.plugin)
        except LayerkitError as exc:
            got = in_shape if arity == 1 else " and ".join(map(str, in_shapes))
            reason = " ".join(str(exc).splitlines()) or type(exc).__name__
            where = ("layers", layer_spec.index)
            steps = [(n.name, n.output_shape) for n in nodes
                     if n.name in ancestors(layer_spec.name, by_name)]
            problems += [Problem(f"{layer_spec.label} with input shape {got}: {reason}", where, source),
                         Problem(f"shapes so far: {_trace(spec.input_shape, steps)}", where, source)]
            failed.add(layer_spec.name)
            continue
        except Exception as exc:  # a plugin bug must still name the layer and the plugin
            problems.append(Problem(
                f"{layer_spec.label}: plugin {entry.plugin} failed on input shape {in_shape} "
                f"({type(exc).__name__}: {exc}); this is a bug in the plugin",
                ("layers", layer_spec.index), source))
            failed.add(layer_spec.name)
            continue
        wrong = kind_problem(layer_spec, node.layer, input_dtype=spec.input_dtype, source=source)
        if wrong:
            problems.append(wrong)
            failed.add(layer_spec.name)
            continue
        shapes[layer_spec.name] = node.output_shape
        nodes.append(node)
    if problems:
        raise ShapeError(problems=problems)

    graph = Graph(spec, nodes, tuple(spec.input_shape))
    for node in nodes:
        for ref in node.inputs:
            if ref != RESERVED_INPUT:
                graph.node(ref).consumers.append(node.name)
    found = loss_problem(graph, registry)
    if found:
        raise ShapeError(problems=[found])
    return graph


def kind_problem(layer_spec: LayerSpec, layer: Layer, *, input_dtype: str, source: str) -> Problem | None:
    """A layer fed the wrong kind of value: float inputs given the token ids, or a token input
    given float values. Only the model input holds token ids (when its dtype is int64); every
    layer's output is float."""
    kinds = input_kinds(layer, len(layer_spec.inputs))
    for i, (ref, want) in enumerate(zip(layer_spec.inputs, kinds, strict=True)):
        got = "tokens" if ref == RESERVED_INPUT and input_dtype == "int64" else "float"
        if got == want:
            continue
        which = f"input {i + 1} ({ref!r})" if len(layer_spec.inputs) > 1 else "inputs"
        if want == "float":
            message = (f"layer {layer_spec.name!r} takes float {which} but gets token ids (int64): "
                       f"put an embedding first")
        else:
            fed = ("the model input, which is float32: declare \"input\": {\"dtype\": \"int64\"}"
                   if ref == RESERVED_INPUT else f"the float output of {ref!r}")
            message = f"layer {layer_spec.name!r} takes token ids (int64) as {which} but gets {fed}"
        return Problem(message, ("layers", layer_spec.index), source)
    return None


def loss_problem(graph: Graph, registry: Registry) -> Problem | None:
    """The loss's objection to the model's output shape (``Loss.output_problem``), at the output layer,
    with the fix where there is a common one: a dense layer on a feature map acts on its last axis
    only, and a ``flatten`` before it is what a classifier wants."""
    config = dict(graph.spec.loss)
    kind = config.pop("type", None)
    if not isinstance(kind, str) or kind not in registry.entries["loss"]:
        return None  # the spec check reported it
    try:
        problem = registry.get("loss", kind)(**config).output_problem(graph.output.output_shape)
    except LayerkitError as exc:
        problem = str(exc)
    if not problem:
        return None
    out = graph.output
    text = f"{out.spec.label} gives the output {tuple(out.output_shape)}, but the loss {kind} {problem}"
    dense = _last_axis_dense(graph)
    if dense is not None:
        text += (f"; add {{\"type\": \"flatten\"}} before {dense.spec.label} (layers[{dense.spec.index}]): "
                 f"on its input {tuple(dense.input_shape)} it acts on the last axis only")
    return Problem(text, ("layers", out.spec.index), graph.spec.source)


def _last_axis_dense(graph: Graph) -> Node | None:
    """The dense layer that left the output multi-dimensional: walking back from the output through
    single-input layers that keep the number of axes."""
    node = graph.output
    rank = len(node.output_shape)
    while rank > 1 and len(node.output_shape) == rank:
        if node.spec.type == "dense":
            return node
        if len(node.inputs) != 1 or node.inputs[0] == RESERVED_INPUT:
            return None
        node = graph.node(node.inputs[0])
    return None


def _node(layer_spec: LayerSpec, cls: type, in_shape: Any, plugin: str) -> Node:
    layer = cls(**layer_spec.config)
    out = _shape(layer.output_shape(in_shape))
    if not out or any(d < 1 for d in out):
        raise ShapeError(f"would produce the empty shape {out}")
    params = _specs(layer.param_specs(in_shape), "param_specs")
    state = _specs(layer.state_specs(in_shape), "state_specs")
    flops = operator.index(layer.flops(in_shape))
    return Node(layer_spec, layer, in_shape, out, params, state, flops, plugin=plugin)
