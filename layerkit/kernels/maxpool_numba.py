"""Max pooling compiled with numba: the twin of :class:`layerkit.kernels.maxpool.MaxPoolNumpy`.

Imported only when the numba path is chosen (:mod:`layerkit.kernels.select`), which points numba's
on-disk cache at a directory the user can write before numba loads. Compiled for 2x2 windows of
stride 2 (:func:`compiled_for`); every other window runs the reference. Forward keeps, per output,
the window offset of the first maximum (``arg``; 4 when the window holds a NaN, which the
reference's maximum propagates and whose gradient it sends nowhere), so backward is one pass.
Every rounding and tie rule of the reference is repeated exactly:

- the running maximum is ``np.maximum``'s: a NaN stays, a NaN arriving replaces it, and of two
  equal values the later one is kept (only the sign of a zero can tell them apart);
- the gradient is ``dy * hit`` per window cell (a multiply), so a NaN or infinite ``dy`` reaches every cell of
  its window as the reference's product does.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from layerkit.kernels.maxpool import MaxPoolNumpy
from layerkit.kernels.windows import Window

REFERENCE = MaxPoolNumpy()


@numba.njit(cache=True, nogil=True)
def _forward_2x2(xp, y, arg):  # pragma: no cover - compiled
    # branch-free selects, so the loop runs at the speed of the loads whatever the data
    n, c, ho, wo = y.shape
    for a in range(n):
        for b in range(c):
            for oy in range(ho):
                r0 = xp[a, b, 2 * oy]
                r1 = xp[a, b, 2 * oy + 1]
                ya = y[a, b, oy]
                aa = arg[a, b, oy]
                for ox in range(wo):
                    q = 2 * ox
                    m = r0[q]
                    k = 0
                    v = r0[q + 1]
                    k = 1 if v > m else k
                    m = m if (m > v or m != m) else v  # np.maximum: NaN stays, the later of equals
                    v = r1[q]
                    k = 2 if v > m else k
                    m = m if (m > v or m != m) else v
                    v = r1[q + 1]
                    k = 3 if v > m else k
                    m = m if (m > v or m != m) else v
                    ya[ox] = m
                    aa[ox] = 4 if m != m else k  # a NaN maximum: no cell takes the gradient


@numba.njit(cache=True, nogil=True)
def _backward_2x2(dy, arg, dxp):  # pragma: no cover - compiled
    # the windows tile: each covered cell is written once, dy * hit as the reference computes it
    # (a multiply, not a select: it runs several times faster, and NaN * 0 stays NaN as there)
    n, c, ho, wo = dy.shape
    for a in range(n):
        for b in range(c):
            for oy in range(ho):
                r0 = dxp[a, b, 2 * oy]
                r1 = dxp[a, b, 2 * oy + 1]
                da = dy[a, b, oy]
                aa = arg[a, b, oy]
                for ox in range(wo):
                    q = 2 * ox
                    k = aa[ox]
                    v = da[ox]
                    r0[q] = v * np.float32(k == 0)
                    r0[q + 1] = v * np.float32(k == 1)
                    r1[q] = v * np.float32(k == 2)
                    r1[q + 1] = v * np.float32(k == 3)


def compiled_for(g: Window) -> bool:
    """Whether the compiled kernel covers this window: 2x2, stride 2 (any padding, ceil_mode, odd
    sizes). Other windows run the numpy reference: a general compiled loop measured slower than it
    (docs/performance.md)."""
    return (g.kh, g.kw, g.sh, g.sw) == (2, 2, 2, 2)


class MaxPoolNumba:
    """Compiled max pooling (float32) for 2x2 windows of stride 2, the numpy reference for the rest;
    the same buffers and chunk groups as the reference."""

    path = "numba"

    def argmax_buffer(self, shape: tuple[int, ...], g: Window) -> np.ndarray | None:
        return np.empty(shape, dtype=np.uint8) if compiled_for(g) else None

    def forward(self, xp: np.ndarray, g: Window, y: np.ndarray, arg: Any, slices: list[slice]) -> None:
        if arg is None:
            return REFERENCE.forward(xp, g, y, arg, slices)
        # one call per group of chunks (they are a contiguous run of samples)
        sl = slice(slices[0].start, slices[-1].stop)
        _forward_2x2(np.ascontiguousarray(xp[sl]), y[sl], arg[sl])

    def backward(self, xp: np.ndarray, y: np.ndarray, arg: Any, dy: np.ndarray, g: Window, dxp: np.ndarray,
                 overlap: bool, slices: list[slice], step: int) -> None:
        if arg is None:
            return REFERENCE.backward(xp, y, arg, dy, g, dxp, overlap, slices, step)
        sl = slice(slices[0].start, slices[-1].stop)
        _backward_2x2(np.ascontiguousarray(dy[sl]), arg[sl], dxp[sl])


IMPL = MaxPoolNumba()
