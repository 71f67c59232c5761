"""A small shared thread pool for the per-sample-chunk loops of the big layers.

numpy releases the GIL inside ufunc loops, copies and BLAS calls, so the chunk
loops of convolution, batch norm, ReLU and max pooling can run on several cores
from plain Python threads. Their GEMMs are small (one chunk each), which
OpenBLAS would run single-threaded or thread badly, and their memory passes are
single-threaded in numpy, so without this layerkit used one core whatever the
machine had.

``LAYERKIT_NUM_THREADS`` sets the pool size (default 1, the serial path with no
pool at all; opt-in because small nets lose, see docs/performance.md). Results never depend on
the thread count: work is split into chunks whose boundaries depend only on the
shapes, each chunk writes its own slice of the output, and every cross-chunk
reduction is summed in a fixed order (see ``spans``).
"""

from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

# Number of groups a reduction is split into, whatever the thread count: the partial sums
# (and so the rounding) are the same with 1 thread or 8. More groups than threads also
# evens out the load a little.
REDUCE_PARTS = 8

# Below this much data a pass is not worth a thread hand-off (tens of microseconds);
# measured on the AlexNet/LeNet layers, see docs/performance.md.
MIN_PARALLEL_BYTES = 1 << 19

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_threads: int | None = None
_blas = None  # (get, set) from the OpenBLAS numpy loaded, False when not found


def _default_threads() -> int:
    value = os.environ.get("LAYERKIT_NUM_THREADS", "").strip()
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            pass
    # opt-in: on 2 cores the pool bought AlexNet +25% but cost LeNet -21% and the MLP -13%
    # (OpenBLAS held to one thread), see docs/performance.md
    return 1


_blas_saved: int | None = None


def num_threads() -> int:
    global _threads
    if _threads is None:
        _threads = _default_threads()
        _hold_blas(_threads > 1)
    return _threads


def _hold_blas(single: bool) -> None:
    """With our own pool, OpenBLAS stays on one thread in the whole process.

    Each OpenBLAS call from the main thread with 2 BLAS threads wakes a BLAS worker
    that then busy-waits for ~0.1 s (its THREAD_TIMEOUT) on the core our pool needs:
    measured on AlexNet, conv3/conv4 backward went 20/31 ms -> 30/48 ms. The GEMMs
    left on the main thread (Dense) run single-threaded: an MLP loses its ~10%
    from OpenBLAS's second thread (documented in docs/performance.md).
    """
    global _blas_saved
    blas = _blas_funcs()
    if not blas:
        return
    if single and _blas_saved is None:
        _blas_saved = blas[0]()
        if _blas_saved > 1:
            blas[1](1)
    elif not single and _blas_saved is not None:
        if _blas_saved > 1:
            blas[1](_blas_saved)
        _blas_saved = None


def set_num_threads(n: int | None) -> None:
    """Change the pool size for this process (None: back to the environment's value)."""
    global _threads, _pool
    with _lock:
        _threads = None if n is None else max(1, int(n))
        _hold_blas((_threads or _default_threads()) > 1)
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


def _find_blas():
    """OpenBLAS's get/set thread-count functions, or False; any failure just means "leave BLAS alone"."""
    try:
        import numpy  # noqa: F401  (loads the library)
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line})
        for path in paths:
            lib = ctypes.CDLL(path)
            for prefix, suffix in (("scipy_openblas_", "64_"), ("scipy_openblas_", ""), ("openblas_", "64_"),
                                   ("openblas_", "")):
                get = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype, get.argtypes = ctypes.c_int, []
                    put.restype, put.argtypes = None, [ctypes.c_int]
                    return get, put
    except Exception:
        pass
    return False


def _blas_funcs():
    global _blas
    if _blas is None:
        _blas = _find_blas()
    return _blas


def spans(n: int, step: int, parts: int) -> list[tuple[int, int]]:
    """At most ``parts`` contiguous sample ranges, each a whole number of ``step``-sample chunks.

    Chunk boundaries depend only on ``step``, never on which range a chunk falls in,
    so per-chunk work is the same however the ranges are handed out.
    """
    chunks = -(-n // step)
    parts = max(1, min(parts, chunks))
    bounds = [i * chunks // parts for i in range(parts + 1)]
    return [(b0 * step, min(n, b1 * step)) for b0, b1 in zip(bounds, bounds[1:])]


def run(fn, args: list, nbytes: int = 1 << 62) -> list:
    """``[fn(*a) for a in args]``, on the pool when there are several threads and enough work."""
    if num_threads() == 1 or len(args) < 2 or nbytes < MIN_PARALLEL_BYTES:
        return [fn(*a) for a in args]
    return list(_get_pool().map(lambda a: fn(*a), args))



def blocks(n: int, size: int) -> list[tuple[int, int]]:
    """Fixed ``size``-wide ranges over ``n``: the same split whatever the thread count."""
    return [(i, min(n, i + size)) for i in range(0, n, size)]


def split(n: int, step: int, nbytes: int) -> list[tuple[int, int]]:
    """Sample ranges for an element-wise pass (no reduction): one per thread when it is worth it."""
    parts = num_threads() if nbytes >= MIN_PARALLEL_BYTES else 1
    return spans(n, step, parts)
