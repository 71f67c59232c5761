"""Several shares of one batch in one process, in lockstep threads: the machinery under fixed shares.

With ``training.virtual_shares`` S a batch is always computed as the same S shares, whatever the
number of processes (``layerkit.training.virtual``): a process holding several of them runs
each in its own thread (:func:`run`), and the threads meet wherever a layer asks for whole-batch
sums (:func:`layerkit.parallel.collectives.batch_sum`, batch norm). numpy releases the GIL in
its loops and BLAS calls, so the threads also spread over the cores.

:class:`Lockstep` is the threads' member of the collectives interface. Its ``batch_sum``
gathers every share's partials, this process's and (through ``outer``, the process's own group:
alone, forked or MPI) every other process's, as one row per share, and adds the rows in share
order. The gather is exact (each row is summed with zeros only), so every process count adds
the same numbers in the same order and gets bit-identical sums.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, cast

import numpy as np

from layerkit.errors import TrainingError
from layerkit.parallel.collectives import SINGLE, Collectives

WAIT_TIMEOUT_S = 600.0  # a share this late at a batch_sum is taken for failed


class Lockstep(Collectives):
    """The threads computing shares ``first .. first + local - 1`` of a batch split into ``total``
    shares; ``outer`` is this process's group (the other shares' processes). Every thread must
    make the same calls in the same order."""

    def __init__(self, local: int, total: int, first: int, outer: Collectives = SINGLE) -> None:
        self.local, self.total, self.first, self.outer = local, total, first, outer
        self.rank, self.size = first, total
        self._barrier = threading.Barrier(local)
        self._rows: list[np.ndarray | None] = [None] * local
        self._result: np.ndarray | None = None
        self._thread = threading.local()

    def enter(self, share: int) -> None:
        """The calling thread computes local share ``share`` (0 .. local - 1) from now on."""
        self._thread.share = share

    def abort(self) -> None:
        """Break the barrier: no thread waits any longer for one that failed."""
        self._barrier.abort()

    def _wait(self) -> None:
        try:
            self._barrier.wait(WAIT_TIMEOUT_S)
        except threading.BrokenBarrierError:
            raise TrainingError("a share of the batch failed while the others waited for its sums") from None

    def batch_sum(self, values: np.ndarray) -> np.ndarray:
        share = getattr(self._thread, "share", 0)
        values = np.asarray(values, dtype=np.float64).ravel()
        self._rows[share] = values
        if self.local > 1:
            self._wait()
        if share == 0:
            k = values.size
            rows = np.zeros((self.total, k), dtype=np.float64)
            rows[self.first:self.first + self.local] = np.stack(self._rows)  # type: ignore[arg-type]
            if self.outer.size > 1:  # the other processes' rows (zeros here, as ours are there): exact
                rows = self.outer.batch_sum(rows.ravel()).reshape(self.total, k)
            total = rows[0].copy()
            for row in rows[1:]:
                total += row
            self._result = total
        if self.local > 1:
            self._wait()
        return cast(np.ndarray, self._result).copy()

    def allreduce_sum(self, array: np.ndarray) -> np.ndarray:
        np.copyto(array, self.batch_sum(array).reshape(array.shape))
        return array


_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _threads(n: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    if _pool is None or _pool_size < n:
        if _pool is not None:
            _pool.shutdown(wait=True)
        _pool, _pool_size = ThreadPoolExecutor(max_workers=n, thread_name_prefix="layerkit-share"), n
    return _pool


def run(group: Lockstep, fn: Callable[[int], Any], together: bool = True) -> list[Any]:
    """``[fn(s) for s in range(group.local)]``, each call in its own thread (the first in this one),
    all in lockstep at ``group``'s sums. numpy's error state (``np.errstate``) is the caller's.

    ``together=False``: the calls make no sums, so they run one after the other in this thread
    (the same numbers, without the threads' cost)."""
    if group.local == 1 or not together:
        results = []
        for s in range(group.local):
            group.enter(s)
            results.append(fn(s))
        return results
    errors = np.geterr()

    def one(s: int) -> Any:
        group.enter(s)
        try:
            with np.errstate(**errors):
                return fn(s)
        except BaseException:
            group.abort()
            raise

    futures = [_threads(group.local - 1).submit(one, s) for s in range(1, group.local)]
    first: BaseException | None = None
    results: list[Any] = [None] * group.local
    try:
        results[0] = one(0)
    except BaseException as exc:  # the others stop at their next sum; wait for them all the same
        first = exc
    for s, future in enumerate(futures, 1):
        try:
            results[s] = future.result()
        except BaseException as exc:
            if first is None or isinstance(first, TrainingError):
                first = exc  # the share that failed first, rather than one that saw it fail
    if first is not None:
        raise first
    return results


def _after_fork_in_child() -> None:
    # the parent's threads did not come along with a fork
    global _pool, _pool_size
    _pool, _pool_size = None, 0


os.register_at_fork(after_in_child=_after_fork_in_child)
