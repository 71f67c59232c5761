"""The OpenBLAS that numpy itself loaded, for what numpy does not expose: thread count and
the fused level-1 updates ``y = a*x + b*y`` (axpby) and ``y += a*x`` (axpy).

Why the level-1 calls: an optimizer step is memory bound, and numpy needs two passes
for each of them (``tmp = a*x; y += tmp``). SGD with momentum went from four passes to
two, and the MLP benchmark's update from 295 to 182 us a step (see docs/performance.md).

Everything here degrades to plain numpy: another BLAS (MKL, Accelerate), a missing
symbol, a non-contiguous or non-float32/64 array all take the numpy path, which gives
the same values up to rounding.
"""

from __future__ import annotations

import ctypes
from contextlib import contextmanager

import numpy as np

_PREFIXES = ("scipy_", "")  # numpy's wheels rename the symbols with scipy_
_SUFFIXES = ("64_", "")  # "64_": the ILP64 build, 64-bit integer arguments


def _library_paths() -> list[str]:
    try:
        with open("/proc/self/maps") as maps:
            return sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line})
    except OSError:
        return []


def _find() -> dict:
    """Callables by name (``get_num_threads``, ``set_num_threads``, ``saxpy``...), only those found."""
    found: dict = {}
    try:  # numpy, imported above, has loaded its BLAS by now
        for path in _library_paths():
            lib = ctypes.CDLL(path)
            for prefix in _PREFIXES:
                for suffix in _SUFFIXES:
                    _threads(lib, prefix, suffix, found)
                    _level1(lib, prefix, suffix, found)
                if found:
                    return found
    except Exception:  # any surprise just means "numpy only"
        return {}
    return found


def _threads(lib, prefix: str, suffix: str, found: dict) -> None:
    get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
    put = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
    if get is not None and put is not None and "get_num_threads" not in found:
        get.restype, get.argtypes = ctypes.c_int, []
        put.restype, put.argtypes = None, [ctypes.c_int]
        found["get_num_threads"], found["set_num_threads"] = get, put


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
    """OpenBLAS on one thread inside the block, its thread count restored after.

    For work made of many tiny GEMMs (gradient checks: batches of 2 in float64), where a
    second BLAS thread only adds synchronisation, and on a busy machine waits a scheduler
    time slice at every call (``check-grads models/alexnet_mnist.json`` with another job
    on the other core: 78 s with two threads, 11 s with one).
    """
    funcs = functions()
    if "get_num_threads" not in funcs:
        yield
        return
    before = funcs["get_num_threads"]()
    funcs["set_num_threads"](1)
    try:
        yield
    finally:
        funcs["set_num_threads"](before)
