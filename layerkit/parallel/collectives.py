"""Collectives that layers may call while a batch is split over processes.

A layer that needs whole-batch statistics (batch norm) computes its partial sums over
the samples it holds and calls :func:`batch_sum`. In one process the partials are
already the whole batch; while a process-parallel step runs, the step installs a
reducer (:func:`reducing`) that adds the partials of every shard in a fixed order.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

_reducer = None  # while a sharded step runs in this process: sums partials over all shards


def splitting() -> bool:
    """Whether this process is computing one shard of a split batch right now."""
    return _reducer is not None


def batch_sum(values: np.ndarray) -> np.ndarray:
    """The sum over the whole batch of this shard's partial sums ``values`` (float64, 1-d).

    Outside a sample-parallel step (one process, gradient checks, inference) the shard
    is the whole batch and ``values`` come back unchanged. Every shard runs the same
    layers, so every shard makes the same calls in the same order.
    """
    return values if _reducer is None else _reducer(values)


@contextmanager
def reducing(reducer):
    """Install ``reducer`` (partials -> whole-batch sums) for the duration of one shard's step."""
    global _reducer
    _reducer = reducer
    try:
        yield
    finally:
        _reducer = None
