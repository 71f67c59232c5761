"""A small shared thread pool for the per-sample-chunk loops of the big layers.

numpy releases the GIL inside ufunc loops, copies and BLAS calls, so the chunk
loops of convolution, batch norm, ReLU and max pooling can run on several cores
from plain Python threads. Their GEMMs are small (one chunk each), which
OpenBLAS would run single-threaded or thread badly, and their memory passes are
single-threaded in numpy, so without this layerkit used one core whatever the
machine had.

``LAYERKIT_NUM_THREADS`` sets the pool size (default: the usable cores; 1 is the
serial path with no pool at all). Only passes big enough to win go to the pool
(``MIN_PARALLEL_BYTES``); smaller ones run the serial loop, so small nets lose
nothing, see docs/performance.md. Results never depend on
the thread count: work is split into chunks whose boundaries depend only on the
shapes, each chunk writes its own slice of the output, and every cross-chunk
reduction is summed in a fixed order (see ``spans``).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from layerkit.parallel import blas

# Number of groups a reduction is split into, whatever the thread count: the partial sums
# (and so the rounding) are the same with 1 thread or 8. More groups than threads also
# evens out the load a little.
REDUCE_PARTS = 8

# Below these sizes a pass stays on the serial loop with no pool call at all: handing
# chunks to the pool has a fixed cost per pass plus cold caches on the other core, which
# small passes never win back and large ones do (docs/performance.md has the measurements).
# "conv": the whole batch's im2col columns (n * C*kh*kw * cells * itemsize), which is
# what a conv pass's GEMMs read; "pass": bytes an element-wise pass (BN, ReLU, pool)
# reads and writes.
MIN_PARALLEL_BYTES = {"conv": 8 << 20, "pass": 4 << 20}

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_threads: int | None = None
_blas_limit = None  # threadpoolctl's limiter while BLAS is held to one thread (see hold_blas)
_serial = 0  # > 0 while sample-parallel shards already use every core (see ``serial``)


def _default_threads() -> int:
    value = os.environ.get("LAYERKIT_NUM_THREADS", "").strip()
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            pass
    try:
        return max(1, len(os.sched_getaffinity(0)))  # the cores this process may run on
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def num_threads() -> int:
    global _threads
    if _threads is None:
        _threads = _default_threads()
    return _threads


def hold_blas() -> None:
    """From now on (until :func:`release_blas`) BLAS runs one thread in this process.

    The pool calls it at the first pooled pass, and sample-parallel training when its
    workers start (the shards use the cores). Capping BLAS only for the pooled sections
    and restoring it after is slower (docs/performance.md): each 2-thread GEMM between
    sections (Dense, BN's GEMV) leaves an OpenBLAS worker busy-waiting for its
    THREAD_TIMEOUT on the core the pool needs. Holding
    it from the first pass big enough for the pool, rather than whenever the pool has >1
    thread, keeps both BLAS threads for processes that never get there (LeNet-style, the MLP).
    """
    global _blas_limit
    if _blas_limit is None:
        _blas_limit = blas.limit_threads(1)


def release_blas() -> None:
    """Give BLAS back the thread count it had before :func:`hold_blas`."""
    global _blas_limit
    if _blas_limit is not None:
        _blas_limit.restore_original_limits()
        _blas_limit = None


def blas_held() -> bool:
    """Whether :func:`hold_blas` is in effect."""
    return _blas_limit is not None


def set_num_threads(n: int | None) -> None:
    """Change the pool size for this process (None: back to the environment's value)."""
    global _threads, _pool
    with _lock:
        _threads = None if n is None else max(1, int(n))
        release_blas()
        if _pool is not None:
            _pool.shutdown(wait=True)
            _pool = None


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=num_threads(), thread_name_prefix="layerkit")
    return _pool


def spans(n: int, step: int, parts: int) -> list[tuple[int, int]]:
    """At most ``parts`` contiguous sample ranges, each a whole number of ``step``-sample chunks.

    Chunk boundaries depend only on ``step``, never on which range a chunk falls in,
    so per-chunk work is the same however the ranges are handed out.
    """
    chunks = -(-n // step)
    parts = max(1, min(parts, chunks))
    bounds = [i * chunks // parts for i in range(parts + 1)]
    return [(b0 * step, min(n, b1 * step)) for b0, b1 in zip(bounds, bounds[1:], strict=False)]


def worth_it(nbytes: int, kind: str) -> bool:
    return num_threads() > 1 and not _serial and nbytes >= MIN_PARALLEL_BYTES[kind]


@contextmanager
def serial():
    """No pool inside: the sample-parallel shards (``sample_parallel``) already keep every core busy."""
    global _serial
    _serial += 1
    try:
        yield
    finally:
        _serial -= 1


def _after_fork_in_child() -> None:
    """A forked child (a sample-parallel worker, or any fork) starts with no pool.

    The parent's pool object came along with the fork but its threads did not, so it is
    dropped without a shutdown (which would wait for threads that are not there); the lock
    may have been held by one of those threads.
    """
    global _pool, _serial, _lock
    _pool, _serial, _lock = None, 0, threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def run(fn, args: list, nbytes: int, kind: str) -> list:
    """``[fn(*a) for a in args]``, on the pool when there are several threads and enough work."""
    if len(args) < 2 or not worth_it(nbytes, kind):
        return [fn(*a) for a in args]
    hold_blas()
    return list(_get_pool().map(lambda a: fn(*a), args))


def run_whole(fn, args: list) -> list:
    """``[fn(*a) for a in args]`` with whole items spread over the pool's threads, in order.

    For independent items of work that each run many layers (the batches of ``predict`` and
    of an evaluation): inside an item every pass takes its serial loop (no pool call from a
    pool thread) and BLAS runs one thread, so T items run on T cores. BLAS gets its thread
    count back afterwards unless :func:`hold_blas` already held it.
    """
    if len(args) < 2 or num_threads() < 2 or _serial:
        return [fn(*a) for a in args]
    limiter = None if blas_held() else blas.limit_threads(1)
    try:
        with serial():
            return list(_get_pool().map(lambda a: fn(*a), args))
    finally:
        if limiter is not None:
            limiter.restore_original_limits()


def blocks(n: int, size: int) -> list[tuple[int, int]]:
    """Fixed ``size``-wide ranges over ``n``: the same split whatever the thread count."""
    return [(i, min(n, i + size)) for i in range(0, n, size)]


def split(n: int, step: int, nbytes: int, kind: str) -> list[tuple[int, int]]:
    """Sample ranges for an element-wise pass (no reduction): one per thread when it is worth it."""
    return spans(n, step, num_threads() if worth_it(nbytes, kind) else 1)
