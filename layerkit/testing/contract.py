"""Sample coupling's helper for the check engine: two halves of a batch exchanging ``batch_sum``s.

The checks themselves live in :mod:`layerkit.testing.engine` (``split_batch_equals_whole`` and the
rest); this module keeps :class:`TwoHalvesReducer` and its timeout.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np

from layerkit.parallel import collectives

__all__ = ["TwoHalvesReducer", "EXCHANGE_TIMEOUT_S"]

#: seconds a half waits for the other at a batch_sum before the check gives up on it
EXCHANGE_TIMEOUT_S = 30.0


class TwoHalvesReducer:
    """A ``batch_sum`` reducer for two threads, each computing one half of a batch.

    Each half writes its partial sums, both meet at a barrier, and each gets the sum of
    both halves in the same order (first half + second half), as the sample-parallel
    processes do. A second barrier keeps a fast half from overwriting its slot before the
    other has read it.
    """

    def __init__(self, halves: int = 2, timeout: float | None = None) -> None:
        self.barrier = threading.Barrier(halves, timeout=EXCHANGE_TIMEOUT_S if timeout is None else timeout)
        self.slots: list[np.ndarray | None] = [None] * halves
        self.local = threading.local()
        self.calls = [0] * halves

    def __call__(self, values: np.ndarray) -> np.ndarray:
        me = self.local.half
        self.calls[me] += 1
        self.slots[me] = np.array(values, dtype=np.float64).ravel()
        self.barrier.wait()
        try:
            parts = [np.zeros(0) if part is None else part for part in self.slots]
            sizes = [len(part) for part in parts]
            if len(set(sizes)) > 1:
                raise threading.BrokenBarrierError(f"the halves passed {sizes} values to the same batch_sum call")
            total = parts[0].copy()
            for part in parts[1:]:
                total = total + part
        finally:
            self.barrier.wait()
        return total.reshape(np.shape(values))

    def run(self, work: list[Callable[[], Any]]) -> list[Any]:
        """Run ``work[i]`` in thread ``i`` with this reducer as ``batch_sum``; re-raise the first failure."""
        results: list[Any] = [None] * len(work)
        errors: list[BaseException | None] = [None] * len(work)

        def body(i: int) -> None:
            self.local.half = i
            try:
                results[i] = work[i]()
            except BaseException as exc:  # noqa: BLE001 -- handed to the caller below
                errors[i] = exc
                self.barrier.abort()

        threads = [threading.Thread(target=body, args=(i,), name=f"layerkit-half-{i}") for i in range(len(work))]
        # installed once for the process (batch_sum reads one process-wide group), around both threads
        with collectives.reducing(self):
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        real = [e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)]
        if real:
            raise real[0]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
        return results
