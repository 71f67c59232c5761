"""Direct convolution compiled with numba: the twin of :class:`layerkit.kernels.conv_direct.DirectConvNumpy`.

Imported only on the numba path (:mod:`layerkit.kernels.select`). For kernels 3 and 5 wide it slides
the kernel along the flat rows of the input: per kernel row, one pass over the output row adds the
kw shifted input values times their weights, for two filters at once (each input value loaded once
serves both). The pass over the output is a plain loop over contiguous values, which LLVM turns into
16-wide vector code; the index arithmetic is kept in slices, whose non-negative offsets it can see,
because a signed index read from an array makes numba check for wraparound and stops vectorizing.
Other kernel widths run the reference.
"""

from __future__ import annotations

import numba
import numpy as np

from layerkit.kernels.conv_direct import DirectConvNumpy
from layerkit.kernels.windows import Flat, Window

REFERENCE = DirectConvNumpy()
WIDTHS = (3, 5)


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _forward_kw5(xf, w, b, base, wf, ho, wo, y):  # pragma: no cover - compiled
    n, c, _ = xf.shape
    filters, _, kh, _ = w.shape
    run = ho * wf
    acc0 = np.empty(run, np.float32)
    acc1 = np.empty(run, np.float32)
    for a in range(n):
        for f in range(0, filters, 2):
            g = min(f + 1, filters - 1)  # an odd last filter is computed twice, into the same place
            acc0[:] = b[f]
            acc1[:] = b[g]
            for ch in range(c):
                for ky in range(kh):
                    s = base + ky * wf
                    xs = xf[a, ch, s:s + run + 4]
                    wf0, wg0 = w[f, ch, ky], w[g, ch, ky]
                    u0, u1, u2, u3, u4 = wf0[0], wf0[1], wf0[2], wf0[3], wf0[4]
                    v0, v1, v2, v3, v4 = wg0[0], wg0[1], wg0[2], wg0[3], wg0[4]
                    for p in range(run):
                        x0, x1, x2, x3, x4 = xs[p], xs[p + 1], xs[p + 2], xs[p + 3], xs[p + 4]
                        acc0[p] += u0 * x0 + u1 * x1 + u2 * x2 + u3 * x3 + u4 * x4
                        acc1[p] += v0 * x0 + v1 * x1 + v2 * x2 + v3 * x3 + v4 * x4
            for r in range(ho):
                ya = y[a, f, r]
                yb = y[a, g, r]
                for q in range(wo):
                    ya[q] = acc0[r * wf + q]
                    yb[q] = acc1[r * wf + q]


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _forward_kw3(xf, w, b, base, wf, ho, wo, y):  # pragma: no cover - compiled
    # four filters per pass: a 3-wide row has too few products per output to pay for two
    n, c, _ = xf.shape
    filters, _, kh, _ = w.shape
    run = ho * wf
    acc = np.empty((4, run), np.float32)
    for a in range(n):
        for f0 in range(0, filters, 4):
            f1, f2, f3 = min(f0 + 1, filters - 1), min(f0 + 2, filters - 1), min(f0 + 3, filters - 1)
            acc0, acc1, acc2, acc3 = acc[0], acc[1], acc[2], acc[3]
            acc0[:] = b[f0]
            acc1[:] = b[f1]
            acc2[:] = b[f2]
            acc3[:] = b[f3]
            for ch in range(c):
                for ky in range(kh):
                    s = base + ky * wf
                    xs = xf[a, ch, s:s + run + 2]
                    t0, t1, t2 = w[f0, ch, ky, 0], w[f0, ch, ky, 1], w[f0, ch, ky, 2]
                    u0, u1, u2 = w[f1, ch, ky, 0], w[f1, ch, ky, 1], w[f1, ch, ky, 2]
                    v0, v1, v2 = w[f2, ch, ky, 0], w[f2, ch, ky, 1], w[f2, ch, ky, 2]
                    z0, z1, z2 = w[f3, ch, ky, 0], w[f3, ch, ky, 1], w[f3, ch, ky, 2]
                    for p in range(run):
                        x0, x1, x2 = xs[p], xs[p + 1], xs[p + 2]
                        acc0[p] += t0 * x0 + t1 * x1 + t2 * x2
                        acc1[p] += u0 * x0 + u1 * x1 + u2 * x2
                        acc2[p] += v0 * x0 + v1 * x1 + v2 * x2
                        acc3[p] += z0 * x0 + z1 * x1 + z2 * x2
            for r in range(ho):
                y0, y1, y2, y3 = y[a, f0, r], y[a, f1, r], y[a, f2, r], y[a, f3, r]
                for q in range(wo):
                    y0[q] = acc0[r * wf + q]
                    y1[q] = acc1[r * wf + q]
                    y2[q] = acc2[r * wf + q]
                    y3[q] = acc3[r * wf + q]


# the weight gradient's sums over the output grid are reductions: 'reassoc' lets LLVM split them
# over vector lanes (the order is then not the reference's, as the tolerance allows)
@numba.njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})
def _weight_grad_kw5(xf, dyw, start, base, wf, run, dw):  # pragma: no cover - compiled
    n, c, _ = xf.shape
    filters, _, kh, _ = dw.shape
    for a in range(n):
        for ch in range(c):
            for ky in range(kh):
                s = base + ky * wf
                xs = xf[a, ch, s:s + run + 4]
                for f in range(0, filters, 2):
                    g = min(f + 1, filters - 1)
                    d0 = dyw[a, f, start:start + run]
                    d1 = dyw[a, g, start:start + run]
                    t00 = t01 = t02 = t03 = t04 = np.float32(0.0)
                    t10 = t11 = t12 = t13 = t14 = np.float32(0.0)
                    for p in range(run):
                        x0, x1, x2, x3, x4 = xs[p], xs[p + 1], xs[p + 2], xs[p + 3], xs[p + 4]
                        e0 = d0[p]
                        e1 = d1[p]
                        t00 += e0 * x0
                        t01 += e0 * x1
                        t02 += e0 * x2
                        t03 += e0 * x3
                        t04 += e0 * x4
                        t10 += e1 * x0
                        t11 += e1 * x1
                        t12 += e1 * x2
                        t13 += e1 * x3
                        t14 += e1 * x4
                    dw[f, ch, ky, 0] += t00
                    dw[f, ch, ky, 1] += t01
                    dw[f, ch, ky, 2] += t02
                    dw[f, ch, ky, 3] += t03
                    dw[f, ch, ky, 4] += t04
                    if g != f:
                        dw[g, ch, ky, 0] += t10
                        dw[g, ch, ky, 1] += t11
                        dw[g, ch, ky, 2] += t12
                        dw[g, ch, ky, 3] += t13
                        dw[g, ch, ky, 4] += t14


@numba.njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})
def _weight_grad_kw3(xf, dyw, start, base, wf, run, dw):  # pragma: no cover - compiled
    n, c, _ = xf.shape
    filters, _, kh, _ = dw.shape
    for a in range(n):
        for ch in range(c):
            for ky in range(kh):
                s = base + ky * wf
                xs = xf[a, ch, s:s + run + 2]
                for f0 in range(0, filters, 4):
                    f1, f2, f3 = min(f0 + 1, filters - 1), min(f0 + 2, filters - 1), min(f0 + 3, filters - 1)
                    e = start + run
                    d0, d1, d2, d3 = dyw[a, f0, start:e], dyw[a, f1, start:e], dyw[a, f2, start:e], dyw[a, f3, start:e]
                    t0 = t1 = t2 = u0 = u1 = u2 = v0 = v1 = v2 = z0 = z1 = z2 = np.float32(0.0)
                    for p in range(run):
                        x0, x1, x2 = xs[p], xs[p + 1], xs[p + 2]
                        e0, e1, e2, e3 = d0[p], d1[p], d2[p], d3[p]
                        t0 += e0 * x0
                        t1 += e0 * x1
                        t2 += e0 * x2
                        u0 += e1 * x0
                        u1 += e1 * x1
                        u2 += e1 * x2
                        v0 += e2 * x0
                        v1 += e2 * x1
                        v2 += e2 * x2
                        z0 += e3 * x0
                        z1 += e3 * x1
                        z2 += e3 * x2
                    # a filter index repeated at the end (odd counts) is added once
                    dw[f0, ch, ky, 0] += t0
                    dw[f0, ch, ky, 1] += t1
                    dw[f0, ch, ky, 2] += t2
                    if f1 != f0:
                        dw[f1, ch, ky, 0] += u0
                        dw[f1, ch, ky, 1] += u1
                        dw[f1, ch, ky, 2] += u2
                    if f2 != f1:
                        dw[f2, ch, ky, 0] += v0
                        dw[f2, ch, ky, 1] += v1
                        dw[f2, ch, ky, 2] += v2
                    if f3 != f2:
                        dw[f3, ch, ky, 0] += z0
                        dw[f3, ch, ky, 1] += z1
                        dw[f3, ch, ky, 2] += z2


_FORWARD = {3: _forward_kw3, 5: _forward_kw5}
_WEIGHT_GRAD = {3: _weight_grad_kw3, 5: _weight_grad_kw5}


class DirectConvNumba:
    """The compiled direct convolution; kernel widths it has no code for run the reference."""

    path = "numba"

    def covers(self, g: Window, c: int, f: int) -> bool:
        return g.kw in WIDTHS and g.sh == g.sw == 1 and g.dh == g.dw == 1

    def forward(self, xf: np.ndarray, w: np.ndarray, b: np.ndarray | None, g: Window, f: Flat, y: np.ndarray) -> None:
        if not self.covers(g, xf.shape[1], w.shape[0]) or not y.flags.c_contiguous:
            REFERENCE.forward(xf, w, b, g, f, y)
            return
        bias = np.zeros(w.shape[0], dtype=np.float32) if b is None else np.ascontiguousarray(b, dtype=np.float32)
        _FORWARD[g.kw](np.ascontiguousarray(xf), np.ascontiguousarray(w), bias, f.base, f.wf, g.ho, g.wo, y)

    def weight_grad(self, xf: np.ndarray, dyw: np.ndarray, start: int, g: Window, f: Flat, dw: np.ndarray) -> None:
        if not self.covers(g, xf.shape[1], dw.shape[0]) or not dw.flags.c_contiguous:
            REFERENCE.weight_grad(xf, dyw, start, g, f, dw)
            return
        _WEIGHT_GRAD[g.kw](np.ascontiguousarray(xf), np.ascontiguousarray(dyw), start, f.base, f.wf, g.ho * f.wf, dw)


IMPL = DirectConvNumba()
