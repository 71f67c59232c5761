"""Batch normalisation's passes compiled with numba: the twin of :class:`layerkit.kernels.batchnorm.BatchNormNumpy`.

Imported only on the numba path (:mod:`layerkit.kernels.select`). Each operation is one pass over the
data, row by row ((sample, channel) rows of H x W values): the sums keep two float32 accumulators per
row ('reassoc' lets LLVM split them over vector lanes, as BLAS splits the reference's row totals) and
add the row totals in float64; the elementwise passes compute ``x * scale + shift`` and
``dy * scale + k * (x - shift) + c0`` per element with the channel's constants in registers.
Arrays that are not C-contiguous float32 run the reference.
"""

from __future__ import annotations

import numba
import numpy as np

from layerkit.kernels.batchnorm import BatchNormNumpy

REFERENCE = BatchNormNumpy()


@numba.njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})
def _sums(a, b, shift, both, total, dot):  # pragma: no cover - compiled
    n, c, s = a.shape
    for ch in range(c):
        t64 = 0.0
        d64 = 0.0
        k = shift[ch]
        for i in range(n):
            ar = a[i, ch]
            br = b[i, ch]
            t = np.float32(0.0)
            d = np.float32(0.0)
            if both:
                for p in range(s):
                    v = ar[p] - k
                    t += v
                    d += v * v
            else:
                for p in range(s):
                    v = ar[p]
                    t += v
                    d += v * (br[p] - k)
            t64 += t
            d64 += d
        total[ch] = t64
        dot[ch] = d64


@numba.njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})
def _plain_sums(a, total):  # pragma: no cover - compiled
    n, c, s = a.shape
    for ch in range(c):
        t64 = 0.0
        for i in range(n):
            ar = a[i, ch]
            t = np.float32(0.0)
            for p in range(s):
                t += ar[p]
            t64 += t
        total[ch] = t64


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _affine(x, scale, shift, out):  # pragma: no cover - compiled
    n, c, s = x.shape
    for i in range(n):
        for ch in range(c):
            xr = x[i, ch]
            o = out[i, ch]
            g = scale[ch]
            h = shift[ch]
            for p in range(s):
                o[p] = xr[p] * g + h


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _input_grad(dy, x, scale, k, c0, shift, out):  # pragma: no cover - compiled
    n, c, s = dy.shape
    for i in range(n):
        for ch in range(c):
            dr = dy[i, ch]
            xr = x[i, ch]
            o = out[i, ch]
            g, kk, cc, m = scale[ch], k[ch], c0[ch], shift[ch]
            for p in range(s):
                o[p] = dr[p] * g + (kk * (xr[p] - m) + cc)


def _ok(*arrays: np.ndarray) -> bool:
    return all(a.dtype == np.float32 and a.flags.c_contiguous and a.ndim == 4 for a in arrays)


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0], a.shape[1], -1)


def _vec(v: np.ndarray) -> np.ndarray:
    """A per-channel vector (any shape with C values: (C,) or the (1, C, 1, 1) of a broadcast) as (C,) float32."""
    return np.ascontiguousarray(v, dtype=np.float32).reshape(-1)


class BatchNormNumba:
    """The compiled batch-normalisation passes; arrays they do not cover run the reference."""

    path = "numba"

    def sums(self, a: np.ndarray, b: np.ndarray | None, shift: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray | None]:
        c = a.shape[1]
        total = np.empty(c, dtype=np.float64)
        if b is None or shift is None:
            if b is not None or not _ok(a):
                return REFERENCE.sums(a, b, shift)
            _plain_sums(_rows(a), total)
            return total, None
        if not _ok(a, b):
            return REFERENCE.sums(a, b, shift)
        dot = np.empty(c, dtype=np.float64)
        _sums(_rows(a), _rows(b), _vec(shift), b is a, total, dot)
        return total, dot

    def affine(self, x: np.ndarray, scale: np.ndarray, shift: np.ndarray, out: np.ndarray) -> None:
        if not _ok(x, out):
            REFERENCE.affine(x, scale, shift, out)
            return
        _affine(_rows(x), _vec(scale), _vec(shift), _rows(out))

    def input_grad(self, dy: np.ndarray, x: np.ndarray, scale: np.ndarray, k: np.ndarray, c0: np.ndarray,
                   shift: np.ndarray, out: np.ndarray) -> None:
        if not _ok(dy, x, out):
            REFERENCE.input_grad(dy, x, scale, k, c0, shift, out)
            return
        _input_grad(_rows(dy), _rows(x), _vec(scale), _vec(k), _vec(c0), _vec(shift), _rows(out))


IMPL = BatchNormNumba()
