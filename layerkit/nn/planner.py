"""The planner: builds a graph's :class:`~layerkit.nn.plan.Plan` by running the graph passes.

Separate from the executor (:class:`layerkit.nn.network.Network`), which only follows the records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from layerkit.nn import passes
from layerkit.nn.plan import Plan, wiring

if TYPE_CHECKING:  # the plan is made from a graph that modelfile built; it never imports that tier
    from layerkit.modelfile.shapes import Node

#: the passes that shape training, in the order they run
TRAINING_PASSES: tuple[Callable[[Plan], Plan], ...] = (passes.pool_first, passes.choose_backward_calls)


def plan_training(nodes: Sequence[Node], run: Sequence[Callable[[Plan], Plan]] = TRAINING_PASSES,
                  frozen: frozenset[str] = frozenset()) -> Plan:
    """The plan of a graph's nodes: their wiring, rewritten by the passes ``run`` (all of them by default).
    ``frozen``: the names of the layers that do not learn (``"trainable": false``)."""
    plan = wiring(nodes, frozen)
    for rewrite in run:
        plan = rewrite(plan)
    return plan


def plan_inference(plan: Plan, params: passes.Tensors, state: passes.Tensors, dtype: np.dtype) -> Plan:
    """The training plan with the inference passes run on it: folds (from the current parameters), in-place calls."""
    return passes.inplace_inference(passes.fold_batch_norm(plan, params, state, np.dtype(dtype)))
