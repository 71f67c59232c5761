"""The collectives interface: what a group of processes computing one batch together needs.

A :class:`Collectives` is one member of such a group: its ``rank`` and the group's
``size``, an all-reduce sum (gradients, loss and accuracy counts), the whole-batch sums
layers ask for (:meth:`Collectives.batch_sum`) and a barrier. This base class is the
group of one (plain training, gradient checks, inference). The two other
implementations are the forked processes of one machine (``ShardGroup`` in
``layerkit.parallel.processes``: shared memory and a process-shared barrier) and MPI
(``MpiCollectives`` in ``layerkit.parallel.mpi``: ranks on one or many hosts); they compose, a forked group
inside each MPI rank, with the forked group's sums passed on to MPI by its first
member. The trainer and the layers know only this interface.

Layers never see a group object: a layer that needs whole-batch statistics (batch
norm) computes its partial sums over the samples it holds and calls the module-level
:func:`batch_sum`. In one process the partials are already the whole batch; while a
split step runs, the step installs its group (:func:`reducing`) and the partials of
every member are added in a fixed order.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np


class Collectives:
    """One member of a group computing one batch together; this base class is the group of one.

    Every member must make the same calls in the same order (each call is a collective);
    sums are added in rank order, so every member gets bit-identical results.
    """

    rank: int = 0
    size: int = 1

    def allreduce_sum(self, array: np.ndarray) -> np.ndarray:
        """``array`` summed over the group, in place (every member gets the same values)."""
        return array

    def batch_sum(self, values: np.ndarray) -> np.ndarray:
        """The group's sum of the float64 1-d partial sums ``values`` (what layers' sums go through)."""
        return values

    def barrier(self) -> None:
        """Return once every member has called it."""


SINGLE = Collectives()

_group = None  # while a split step runs in this process: the group it is a member of


def splitting() -> bool:
    """Whether this process is computing one share of a split batch right now."""
    return _group is not None


def batch_sum(values: np.ndarray) -> np.ndarray:
    """The sum over the whole batch of this share's partial sums ``values`` (float64, 1-d).

    Outside a split step (one process, gradient checks, inference) the share is the
    whole batch and ``values`` come back unchanged. Every share runs the same layers,
    so every share makes the same calls in the same order.
    """
    return values if _group is None else _group.batch_sum(values)


class _Reducer(Collectives):
    def __init__(self, fn) -> None:
        self.batch_sum = fn


@contextmanager
def reducing(group):
    """Install ``group`` (a :class:`Collectives`, or a function partials -> whole-batch sums)
    as this process's :func:`batch_sum` for the duration of one share's step."""
    global _group
    previous = _group
    _group = group if isinstance(group, Collectives) else _Reducer(group)
    try:
        yield
    finally:
        _group = previous
