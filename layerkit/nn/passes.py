"""Graph passes: the rewrites for particular pairs of layers, each a function from plan to plan.

A pass reads the records of a :class:`~layerkit.nn.plan.Plan` and the capabilities the layers
declare (:mod:`layerkit.nn.capabilities`), and returns a new plan; no pass changes a layer. The
planner (:mod:`layerkit.nn.planner`) runs them in this order:

training: :func:`pool_first`, then :func:`choose_backward_calls`;
inference (from the training plan and the current parameters): :func:`fold_batch_norm`, then
:func:`inplace_inference`.

Every rewrite gives the numbers the plain graph gives: bit for bit, except a fold (float32
rounding of the folded weights); the conformance suite checks each capability a layer declares.
"""

from __future__ import annotations

from typing import Any, Mapping, cast

import numpy as np

from layerkit.nn.capabilities import AbsorbsAffine, AffineInference, CommutesWithMax, MaxPooling, declares
from layerkit.nn.layer import overrides
from layerkit.nn.plan import BackwardCall, InferCall, Plan

Tensors = Mapping[str, Mapping[str, np.ndarray]]


def pool_first(plan: Plan) -> Plan:
    """An activation that commutes with max, read only by the max pool after it, runs after that pool.

    The same numbers (both capabilities promise it, bit for bit) on a quarter of the elements
    for a 2x2 pool. Applies where the activation (:class:`CommutesWithMax`, no random numbers,
    no parameters, one input) is the node just before the pool (:class:`MaxPooling`, one input),
    the pool reads nothing else and nobody else reads the activation, and the activation is not
    itself a pool's moved partner. The activation's record passes its input through
    (``runs_after_pool``, an inference alias); the pool's record names it in ``then``.
    """
    changes: dict[int, dict[str, Any]] = {}
    nodes = plan.nodes
    moved_before = False
    for act, pool in zip(nodes, nodes[1:], strict=False):
        moved = (declares(act.layer, CommutesWithMax) and declares(pool.layer, MaxPooling)
                 and not act.layer.uses_rng and act.single and pool.single and not act.has_params
                 and pool.inputs == (act.output,) and len(act.readers) == 1 and not moved_before)
        if moved:
            changes[act.index] = {"runs_after_pool": True, "infer": InferCall.ALIAS, "alias": act.inputs[0]}
            changes[pool.index] = {"then": act.index}
        moved_before = moved
    return plan.replace(changes)


def choose_backward_calls(plan: Plan) -> Plan:
    """Per node, the Layer method backward calls: skip, ``backward_params``, ``backward_inplace`` or ``backward``.

    A node none of whose inputs needs a gradient skips its input gradient (``backward_params``)
    or, with no parameters (or frozen ones), is skipped; a frozen node whose input needs a
    gradient computes that alone (``backward_input``) where it provides it
    (:class:`~layerkit.nn.capabilities.InputGradientOnly`), else runs ``backward`` and the network
    drops its parameter gradients. ``backward_inplace`` (fresh-buffer planning) gets a
    ``dy`` nobody else holds: one made by a single reader that declares ``fresh_dx``, or a sum of
    several readers' gradients (a new array), and only for a layer that provides it
    (:class:`~layerkit.nn.capabilities.InplaceBackward`); the loss's gradient belongs to the caller. After
    :func:`pool_first` the activation takes the pool's call (it receives the pool's ``dy``), and
    the pool runs ``backward`` on the activation's gradient.
    """
    nodes = plan.nodes
    calls = [BackwardCall.BACKWARD] * len(nodes)
    writers: list[list[int]] = [[] for _ in range(len(nodes) + 1)]  # per value: nodes that add a gradient to it
    needs = [False] + [rec.needs_grad for rec in nodes]

    def fresh(k: int) -> bool:
        # the layer whose input gradient node k hands down: the pool's, when k runs after it
        layer = nodes[k + 1].layer if nodes[k].runs_after_pool else nodes[k].layer
        return nodes[k].single and bool(getattr(layer, "fresh_dx", False))

    for rec in reversed(nodes):
        if not any(needs[s] for s in rec.inputs):
            learns = rec.has_params and not rec.frozen
            calls[rec.index] = BackwardCall.BACKWARD_PARAMS if learns else BackwardCall.SKIP
            continue
        if rec.frozen and rec.has_params:
            calls[rec.index] = BackwardCall.BACKWARD_INPUT
            for s in rec.inputs:
                if needs[s]:
                    writers[s].append(rec.index)
            continue
        dy_writers = writers[rec.output]
        owned = len(dy_writers) > 1 or (len(dy_writers) == 1 and fresh(dy_writers[0]))
        calls[rec.index] = BackwardCall.BACKWARD_INPLACE if owned else BackwardCall.BACKWARD
        for s in rec.inputs:
            if needs[s]:
                writers[s].append(rec.index)
    for rec in nodes[:-1]:
        if rec.runs_after_pool and calls[rec.index + 1] is not BackwardCall.SKIP:
            calls[rec.index], calls[rec.index + 1] = calls[rec.index + 1], BackwardCall.BACKWARD
    for rec in nodes:  # a layer without the in-place or input-only path gets the plain one (same numbers)
        if calls[rec.index] is BackwardCall.BACKWARD_INPLACE and not overrides(rec.layer, "backward_inplace"):
            calls[rec.index] = BackwardCall.BACKWARD
        if calls[rec.index] is BackwardCall.BACKWARD_INPUT and not overrides(rec.layer, "backward_input"):
            calls[rec.index] = BackwardCall.BACKWARD
    return plan.replace({i: {"backward": call} for i, call in enumerate(calls) if call is not nodes[i].backward})


def fold_batch_norm(plan: Plan, params: Tensors, state: Tensors, dtype: np.dtype) -> Plan:
    """A per-channel affine inference (:class:`AffineInference`: batch norm) folded into the layer before it.

    Applies where the affine node has one input, made by a single-input layer that can absorb the
    map (:class:`AbsorbsAffine`: conv, dense) and is read by nobody else, and where that layer's
    ``affine_axis`` is the channel axis of its output (a dense layer's units only for a flat
    input), as the graph's shapes say. The absorbing node then runs ``infer`` with the folded
    parameters (``infer_params``), and the affine node is an alias of its output: conv + batch
    norm runs as one convolution. Made from the current parameters, for each ``predict``.
    """
    changes: dict[int, dict[str, Any]] = {}
    folded_params: dict[int, Mapping[str, np.ndarray]] = {}
    aliased: set[int] = {rec.index for rec in plan.nodes if rec.infer is InferCall.ALIAS}
    for rec in plan.nodes:
        producer = plan.producer(rec.inputs[0])
        if (producer is None or not rec.single or not producer.single or len(producer.readers) != 1
                or producer.index in aliased or not declares(rec.layer, AffineInference)
                or not declares(producer.layer, AbsorbsAffine)
                or getattr(producer.layer, "affine_axis", 0) % len(producer.output_shape) != 0):
            continue
        affine = cast(AffineInference, rec.layer).inference_affine(params[rec.name], state[rec.name])
        if affine is None:
            continue
        scale, shift = (np.asarray(a, dtype=dtype) for a in affine)
        own = folded_params.get(producer.index, params[producer.name])
        folded = cast(AbsorbsAffine, producer.layer).fold_affine(own, scale, shift)
        if folded is not None:
            folded_params[producer.index] = folded
            changes[producer.index] = {"infer_params": folded}
            changes[rec.index] = {"infer": InferCall.ALIAS, "alias": producer.output}
            aliased.add(rec.index)
    return plan.replace(changes)


def inplace_inference(plan: Plan) -> Plan:
    """``infer_inplace`` wherever a single-input node is the last reader of a value only the network holds.

    Fresh-buffer planning for inference: a value is the network's own when made by a layer
    declaring ``infer_fresh`` or by an ``infer_inplace`` (never the input batch); an alias owns
    what its source owns. A pool with an activation after it (:func:`pool_first`) runs that
    activation in place on its own fresh output.
    """
    owned = [False] * (len(plan.nodes) + 1)
    changes: dict[int, dict[str, Any]] = {}
    for rec in plan.nodes:
        if rec.infer is InferCall.ALIAS:
            owned[rec.output] = owned[rec.alias] if rec.alias is not None else False
            continue
        source = rec.inputs[0]
        inplace = (rec.single and owned[source] and plan.last_use(source) == rec.index
                   and overrides(rec.layer, "infer_inplace"))
        owned[rec.output] = inplace or bool(getattr(rec.layer, "infer_fresh", False))
        change: dict[str, Any] = {"infer": InferCall.INFER_INPLACE if inplace else InferCall.INFER}
        if rec.then is not None:
            act = plan.nodes[rec.then].layer
            fresh = bool(getattr(rec.layer, "infer_fresh", False)) and overrides(act, "infer_inplace")
            change["then_infer"] = InferCall.INFER_INPLACE if fresh else InferCall.INFER
        changes[rec.index] = change
    return plan.replace(changes)
