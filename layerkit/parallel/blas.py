"""The BLAS numpy loaded: its thread count through threadpoolctl, and, from numpy's own
OpenBLAS, the fused level-1 updates ``y = a*x + b*y`` (axpby) and ``y += a*x`` (axpy),
which numpy does not expose and threadpoolctl has no equivalent for.

Why the level-1 calls: an optimizer step is memory bound, and numpy needs two passes
for each of them (``tmp = a*x; y += tmp``). SGD with momentum goes from four passes to
two (docs/performance.md has what that saves a step).

threadpoolctl finds the library (whatever its file name: numpy's wheels ship
``libscipy_openblas64_``); the level-1 symbols are looked up in that file. Everything
here degrades to plain numpy: another BLAS (MKL, Accelerate), a missing symbol, a
non-contiguous or non-float32/64 array all take the numpy path, which gives the same
values up to rounding.
"""

from __future__ import annotations

import ctypes
import threading
from contextlib import contextmanager

import numpy as np
from threadpoolctl import ThreadpoolController

_PREFIXES = ("scipy_", "")  # numpy's wheels rename the symbols with scipy_
_SUFFIXES = ("64_", "")  # "64_": the ILP64 build, 64-bit integer arguments

_controller: ThreadpoolController | None = None
_controller_lock = threading.Lock()


def controller() -> ThreadpoolController:
    """threadpoolctl's view of the BLAS and OpenMP libraries this process has loaded (made once)."""
    global _controller
    if _controller is None:
        with _controller_lock:
            if _controller is None:
                _controller = ThreadpoolController()
    return _controller


def num_threads() -> int | None:
    """Threads the BLAS numpy uses would run (the largest if several are loaded), None if none is found."""
    counts = [lib.num_threads for lib in controller().select(user_api="blas").lib_controllers]
    return max(counts) if counts else None


def limit_threads(n: int):
    """Cap every loaded BLAS at ``n`` threads until ``.restore_original_limits()`` on the result."""
    return controller().limit(limits=n, user_api="blas")


def _find() -> dict:
    """Level-1 callables by name (``saxpy``, ``saxpby``, ``daxpy``, ``daxpby``), only those found."""
    found: dict = {}
    try:
        for lib in controller().select(internal_api="openblas").lib_controllers:
            cdll = ctypes.CDLL(lib.filepath)
            for prefix in _PREFIXES:
                for suffix in _SUFFIXES:
                    _level1(cdll, prefix, suffix, found)
                if found:
                    return found
    except Exception:  # any surprise just means "numpy only"
        return {}
    return found


def _level1(lib, prefix: str, suffix: str, found: dict) -> None:
    integer = ctypes.c_int64 if suffix else ctypes.c_int
    ptr = ctypes.c_void_p
    for kind, real in (("s", ctypes.c_float), ("d", ctypes.c_double)):
        axpy = getattr(lib, f"{prefix}cblas_{kind}axpy{suffix}", None)
        axpby = getattr(lib, f"{prefix}cblas_{kind}axpby{suffix}", None)
        if axpy is None or axpby is None or f"{kind}axpy" in found:
            continue
        axpy.restype = axpby.restype = None
        axpy.argtypes = [integer, real, ptr, integer, ptr, integer]
        axpby.argtypes = [integer, real, ptr, integer, real, ptr, integer]
        found[f"{kind}axpy"], found[f"{kind}axpby"] = axpy, axpby


_funcs: dict | None = None


def functions() -> dict:
    """The fused level-1 updates found in numpy's OpenBLAS, by name (``saxpy``, ``saxpby``, ``daxpy``,
    ``daxpby``), looked up once; empty where there are none, and then every update takes the numpy path."""
    global _funcs
    if _funcs is None:
        _funcs = _find()
    return _funcs


_KIND = {np.dtype(np.float32): "s", np.dtype(np.float64): "d"}


def _blas_kind(x: np.ndarray, y: np.ndarray) -> str | None:
    kind = _KIND.get(x.dtype)
    if (kind is None or y.dtype != x.dtype or x.shape != y.shape or not x.flags.c_contiguous
            or not y.flags.c_contiguous or not y.flags.writeable or f"{kind}axpy" not in functions()):
        return None
    return kind


def axpy(a: float, x: np.ndarray, y: np.ndarray) -> None:
    """``y += a * x`` in place, in one pass where BLAS can; ``x`` and ``y`` must not overlap."""
    kind = _blas_kind(x, y)
    if kind is None:
        y += a * x
        return
    functions()[f"{kind}axpy"](x.size, a, x.ctypes.data, 1, y.ctypes.data, 1)


def axpby(a: float, x: np.ndarray, b: float, y: np.ndarray) -> None:
    """``y = a * x + b * y`` in place, in one pass where BLAS can; ``x`` and ``y`` must not overlap."""
    kind = _blas_kind(x, y)
    if kind is None:
        y *= b
        y += a * x
        return
    functions()[f"{kind}axpby"](x.size, a, x.ctypes.data, 1, b, y.ctypes.data, 1)


@contextmanager
def one_thread():
    """BLAS on one thread inside the block, its thread count restored after.

    For work made of many tiny GEMMs (gradient checks: batches of 2 in float64), where a
    second BLAS thread only adds synchronisation, and on a busy machine waits a scheduler
    time slice at every call, which makes a large net's gradient check many times slower
    (docs/performance.md).
    """
    with limit_threads(1):  # threadpoolctl's limiter restores the old count on exit, on errors too
        yield
