"""The plan: one record per node of a built graph, saying how the network runs it.

"Plan" means this and nothing else in layerkit: the planner's (:mod:`layerkit.nn.planner`)
output, which the executor (:class:`layerkit.nn.network.Network`) follows. Values are
numbered by *slot*: slot 0 is the network's input, slot ``k + 1`` the output of node ``k``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from layerkit.nn.layer import RESERVED_INPUT, Layer, Shape

if TYPE_CHECKING:  # the plan is made from a graph that modelfile built; it never imports that tier
    from layerkit.modelfile.shapes import Node


class BackwardCall(Enum):
    """Which :class:`~layerkit.nn.layer.Layer` method the backward pass calls for a node (the value names it)."""

    #: ``backward``: the input gradient and the parameter gradients
    BACKWARD = "backward"
    #: ``backward_params``: parameter gradients only; nobody reads this node's input gradient
    BACKWARD_PARAMS = "backward_params"
    #: ``backward_inplace``: ``backward`` allowed to overwrite a ``dy`` nobody else holds
    BACKWARD_INPLACE = "backward_inplace"
    #: ``backward_input``: the input gradient alone, for a frozen layer (``"trainable": false``) below
    #: which a parameter still learns and that provides it (``InputGradientOnly``); a frozen layer
    #: without it runs ``backward``, and its parameter gradients are dropped (no optimizer sees them)
    BACKWARD_INPUT = "backward_input"
    #: nothing: no parameter here or upstream, so no gradient is needed
    SKIP = "skip"


class InferCall(Enum):
    """What the inference pass does for a node."""

    #: ``infer`` on its input(s)
    INFER = "infer"
    #: ``infer_inplace``: ``infer`` allowed to overwrite an input nobody else holds
    INFER_INPLACE = "infer_inplace"
    #: nothing: the output is an earlier value (``NodeRecord.alias``): the node was folded into the
    #: layer before it, or is an activation that runs after the pool reading it
    ALIAS = "alias"


@dataclass(frozen=True)
class NodeRecord:
    """How the network runs one node: its wiring, and the calls the passes chose for it."""

    #: position in the graph's topological order; its output is value slot ``index + 1``
    index: int
    name: str
    layer: Layer
    #: the value slots it reads, in the layer's input order
    inputs: tuple[int, ...]
    #: the layer takes one input (arity 1): it gets an array, not a list
    single: bool
    #: the node has learnable tensors
    has_params: bool
    #: its per-sample output shape
    output_shape: Shape
    #: the nodes that read its output, one entry per read
    readers: tuple[int, ...]
    #: the last node that reads its output (None: the network output, read by nobody)
    last_use: int | None
    #: its output is computed from a parameter, so the backward pass needs its gradient
    needs_grad: bool
    #: pool_first: this activation runs after the pool (the next node) on the pooled output
    runs_after_pool: bool = False
    #: pool_first, on the pool: the activation that runs on its output
    then: int | None = None
    #: the backward call (for an activation that runs after its pool: the call made on it there)
    backward: BackwardCall = BackwardCall.BACKWARD
    #: the inference call
    infer: InferCall = InferCall.INFER
    #: with ``InferCall.ALIAS``: the value slot its inference output equals
    alias: int | None = None
    #: on a pool with ``then``: the inference call for that activation
    then_infer: InferCall = InferCall.INFER
    #: parameters ``infer`` uses instead of the node's own (a folded batch norm's scale and shift)
    infer_params: Mapping[str, np.ndarray] | None = None
    #: ``"trainable": false``: its tensors are not trained, so it needs no parameter gradient
    frozen: bool = False

    @property
    def output(self) -> int:
        """The value slot of its output."""
        return self.index + 1


@dataclass(frozen=True)
class Plan:
    """The planner's output: one :class:`NodeRecord` per node, in topological order."""

    nodes: tuple[NodeRecord, ...]
    #: the last node that reads the network input
    input_last_use: int | None

    def last_use(self, slot: int) -> int | None:
        """The last node that reads value ``slot``."""
        return self.input_last_use if slot == 0 else self.nodes[slot - 1].last_use

    def producer(self, slot: int) -> NodeRecord | None:
        """The node whose output is value ``slot`` (None for the network input)."""
        return None if slot == 0 else self.nodes[slot - 1]

    def replace(self, changes: Mapping[int, Mapping[str, Any]]) -> Plan:
        """A copy with the given fields of the given nodes replaced (``{node index: {field: value}}``)."""
        if not changes:
            return self
        nodes = tuple(dataclasses.replace(rec, **changes[rec.index]) if rec.index in changes else rec
                      for rec in self.nodes)
        return dataclasses.replace(self, nodes=nodes)

    def backward_calls(self) -> dict[str, BackwardCall]:
        """Per node name, the backward call (what the gradient checker checks per layer)."""
        return {rec.name: rec.backward for rec in self.nodes}


def wiring(nodes: Sequence[Node], frozen: frozenset[str] = frozenset()) -> Plan:
    """The records of a graph's nodes before any pass: inputs, readers, last use and gradient needs.

    Every node runs ``backward`` and ``infer``; the passes of :mod:`layerkit.nn.passes` choose better.
    The nodes named in ``frozen`` (``"trainable": false``) learn nothing: their parameters make no
    gradient needed, so backward stops below the last layer that learns.
    """
    slot = {RESERVED_INPUT: 0} | {node.name: i + 1 for i, node in enumerate(nodes)}
    inputs = [tuple(slot[name] for name in node.inputs) for node in nodes]
    readers: list[list[int]] = [[] for _ in range(len(nodes) + 1)]
    for i, slots in enumerate(inputs):
        for s in slots:
            readers[s].append(i)
    # Which values need a gradient: those computed from a parameter. The data does not, nor
    # does anything computed from the data alone (an MLP's flatten), so backward stops where
    # no parameter lies upstream.
    needs = [False]
    for node, slots in zip(nodes, inputs, strict=True):
        needs.append((bool(node.param_specs) and node.name not in frozen) or any(needs[s] for s in slots))
    records = tuple(
        NodeRecord(index=i, name=node.name, layer=node.layer, inputs=inputs[i], single=node.layer.arity == 1,
                   has_params=bool(node.param_specs), output_shape=tuple(node.output_shape),
                   readers=tuple(readers[i + 1]), last_use=readers[i + 1][-1] if readers[i + 1] else None,
                   needs_grad=needs[i + 1], frozen=node.name in frozen)
        for i, node in enumerate(nodes))
    return Plan(records, readers[0][-1] if readers[0] else None)
