"""The static layer graph: wiring, topological order and inferred shapes.

Everything here comes from the model file alone; no activation is allocated.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from .errors import GraphError, LayerkitError, Problem, ShapeError
from .layer import Layer, ParamSpec, Shape
from .registry import Registry
from .spec import RESERVED_INPUT, LayerSpec, ModelSpec

FLOAT32_BYTES = 4


@dataclass
class Node:
    spec: LayerSpec
    layer: Layer
    input_shape: Any  # one shape, or a list of shapes for multi-input layers
    output_shape: Shape
    param_specs: dict[str, ParamSpec]
    state_specs: dict[str, ParamSpec]
    flops: int
    consumers: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def inputs(self) -> list[str]:
        return self.spec.inputs

    @property
    def param_count(self) -> int:
        return sum(_size(p.shape) for p in self.param_specs.values())


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


@dataclass
class Graph:
    spec: ModelSpec
    nodes: list[Node]  # topological order
    input_shape: Shape

    @property
    def output(self) -> Node:
        return self.nodes[-1]

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    @property
    def param_count(self) -> int:
        return sum(n.param_count for n in self.nodes)

    @property
    def flops(self) -> int:
        return sum(n.flops for n in self.nodes)

    def activation_bytes(self, batch_size: int) -> int:
        """Rough training-time activation memory: every layer output kept for backward,
        twice (value and its gradient)."""
        per_sample = _size(self.input_shape) + sum(_size(n.output_shape) for n in self.nodes)
        return 2 * per_sample * batch_size * FLOAT32_BYTES

    def shape_trace(self, upto: int | None = None) -> str:
        parts = [f"input {self.input_shape}"]
        for n in self.nodes[:upto]:
            parts.append(f"{n.name} {n.output_shape}")
        return " -> ".join(parts)


def _topological(spec: ModelSpec) -> list[LayerSpec]:
    by_name = {layer.name: layer for layer in spec.layers}
    problems = []
    for layer in spec.layers:
        for i, ref in enumerate(layer.inputs):
            if ref != RESERVED_INPUT and ref not in by_name:
                close = difflib.get_close_matches(ref, [*by_name, RESERVED_INPUT], n=1)
                hint = f", did you mean {close[0]!r}?" if close else ""
                problems.append(Problem(f"{layer.label} reads unknown layer {ref!r}{hint}",
                                        ("layers", layer.index, "inputs"), spec.source))
            elif ref == layer.name:
                problems.append(Problem(f"{layer.label} reads its own output (a cycle)",
                                        ("layers", layer.index, "inputs"), spec.source))
    if spec.output not in by_name:
        problems.append(Problem(f"output {spec.output!r} is not a layer name", ("output",), spec.source))
    if problems:
        raise GraphError(problems=problems)

    # Kahn's algorithm, keeping file order among ready layers
    pending = {layer.name: {r for r in layer.inputs if r != RESERVED_INPUT} for layer in spec.layers}
    order: list[LayerSpec] = []
    done: set[str] = set()
    while len(order) < len(spec.layers):
        ready = [layer for layer in spec.layers if layer.name not in done and pending[layer.name] <= done]
        if not ready:
            stuck = [layer.name for layer in spec.layers if layer.name not in done]
            raise GraphError(problems=[Problem(f"the layers {', '.join(map(repr, stuck))} form a cycle", ("layers",),
                                               spec.source)])
        order.append(ready[0])
        done.add(ready[0].name)

    # unused branches: everything must feed the output
    needed, stack = set(), [spec.output]
    while stack:
        name = stack.pop()
        if name in needed or name == RESERVED_INPUT:
            continue
        needed.add(name)
        stack.extend(by_name[name].inputs)
    unused = [layer for layer in spec.layers if layer.name not in needed]
    if unused:
        raise GraphError(problems=[
            Problem(f"{layer.label} does not contribute to the output {spec.output!r} (unused branch)",
                    ("layers", layer.index), spec.source) for layer in unused])
    # the output layer goes last so that graph.nodes[-1] is the output
    order.remove(by_name[spec.output])
    order.append(by_name[spec.output])
    return [layer for layer in order if layer.name in needed]


def build_graph(spec: ModelSpec, registry: Registry) -> Graph:
    """Instantiate every layer and infer every shape, statically."""
    order = _topological(spec)
    shapes: dict[str, Shape] = {RESERVED_INPUT: tuple(spec.input_shape)}
    nodes: list[Node] = []
    graph = Graph(spec, nodes, tuple(spec.input_shape))
    for layer_spec in order:
        cls = registry.layer(layer_spec.type)
        arity = cls.arity
        n_in = len(layer_spec.inputs)
        where = ("layers", layer_spec.index, "inputs")
        if arity is None and n_in < 2:
            raise GraphError(problems=[Problem(f"{layer_spec.label} needs two or more inputs, got {n_in}",
                                               where, spec.source)])
        if arity is not None and n_in != arity:
            raise GraphError(problems=[Problem(f"{layer_spec.label} takes {arity} input(s), got {n_in}",
                                               where, spec.source)])
        in_shapes = [shapes[ref] for ref in layer_spec.inputs]
        in_shape = in_shapes[0] if arity == 1 else in_shapes
        try:
            layer = cls(**layer_spec.config)
            out = tuple(int(d) for d in layer.output_shape(in_shape))
            if not out or any(d < 1 for d in out):
                raise ShapeError(f"would produce the empty shape {out}")
            params = layer.param_specs(in_shape)
            state = layer.state_specs(in_shape)
            flops = int(layer.flops(in_shape))
        except LayerkitError as exc:
            got = in_shape if arity == 1 else " and ".join(map(str, in_shapes))
            raise ShapeError(problems=[
                Problem(f"{layer_spec.label} with input shape {got}: {exc}", ("layers", layer_spec.index),
                        spec.source),
                Problem(f"shapes so far: {graph.shape_trace()}", (), spec.source),
            ]) from None
        except Exception as exc:  # a plugin bug must still name the layer
            raise ShapeError(problems=[Problem(
                f"{layer_spec.label}: layer {cls.__module__}.{cls.__name__} failed to build: "
                f"{type(exc).__name__}: {exc}", ("layers", layer_spec.index), spec.source)]) from exc
        shapes[layer_spec.name] = out
        nodes.append(Node(layer_spec, layer, in_shape, out, params, state, flops))
    for node in nodes:
        for ref in node.inputs:
            if ref != RESERVED_INPUT:
                graph.node(ref).consumers.append(node.name)
    return graph
