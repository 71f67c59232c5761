"""Batch normalisation's per-channel passes over an NCHW batch: the numpy reference and the registry entry.

Three operations, on (N, C, H, W) float arrays with per-channel vectors of length C:

- ``sums(a, b, shift) -> (total, dot)``: per channel, the float64 sums of ``a`` and of
  ``a * (b - shift)``; with ``b is a`` the shift applies to both factors (the sums of ``a - shift``
  and of ``(a - shift)**2``). Each (sample, channel) row is added in float32 and the row totals in
  float64, as :func:`layerkit.layers.normalization._channel_sums` does;
- ``affine(x, scale, shift, out)``: ``out = x * scale + shift`` per channel (forward, inference);
- ``input_grad(dy, x, scale, k, c0, shift, out)``: ``out = dy * scale + k * (x - shift) + c0`` per
  channel (the training backward's input gradient, every term folded into per-channel constants).

The compiled twin (:mod:`layerkit.kernels.batchnorm_numba`) does each in one pass over the data where
the numpy code makes three to five; it adds each row in another order, so the sums agree within
float32 rounding of a row total (:data:`TOLERANCE`), and ``affine`` / ``input_grad`` round each
element as numpy does up to the fused multiply-add.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from layerkit.kernels.kernel import Kernel, KernelExample, Tolerance

#: a row total of a few thousand float32 values in another order: a few units in the last place of
#: the row's magnitude
TOLERANCE = Tolerance(rtol=1e-5, atol=1e-5)


class BatchNormNumpy:
    """The reference: whole-array numpy passes, rows added in float32, row totals in float64."""

    path = "numpy"

    def sums(self, a: np.ndarray, b: np.ndarray | None, shift: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray | None]:
        n, c = a.shape[:2]
        both = b is a
        k = None if shift is None else shift.astype(a.dtype).reshape(1, c, 1)
        a3 = a.reshape(n, c, -1)
        b3 = None if b is None else b.reshape(n, c, -1)
        if k is not None and b3 is not None:
            b3 = b3 - k
            if both:
                a3 = b3
        total = a3.sum(axis=2).sum(axis=0, dtype=np.float64)
        dot = None if b3 is None else np.einsum("ncs,ncs->nc", a3, b3).sum(axis=0, dtype=np.float64)
        return total, dot

    def affine(self, x: np.ndarray, scale: np.ndarray, shift: np.ndarray, out: np.ndarray) -> None:
        c = x.shape[1]
        np.multiply(x, scale.astype(x.dtype).reshape(1, c, 1, 1), out=out)
        out += shift.astype(x.dtype).reshape(1, c, 1, 1)

    def input_grad(self, dy: np.ndarray, x: np.ndarray, scale: np.ndarray, k: np.ndarray, c0: np.ndarray,
                   shift: np.ndarray, out: np.ndarray) -> None:
        c = dy.shape[1]

        def per_channel(v: np.ndarray) -> np.ndarray:
            return v.astype(dy.dtype).reshape(1, c, 1, 1)

        t = (x - per_channel(shift)) * per_channel(k) + per_channel(c0)
        np.multiply(dy, per_channel(scale), out=out)
        out += t


def run(impl: Any, ex: KernelExample) -> dict[str, np.ndarray]:
    x, dy, shift, scale = ex.args
    total, squares = impl.sums(x, x, shift)
    dbeta, dyx = impl.sums(dy, x, shift)
    plain, _ = impl.sums(dy, None, None)
    y = np.empty_like(x)
    impl.affine(x, scale, -scale, y)
    dx = np.empty_like(dy)
    impl.input_grad(dy, x, scale, scale * 0.5, -scale, shift, dx)
    return {"sum": total, "sum of squares": squares, "gradient sum": dbeta, "gradient dot": dyx,
            "plain sum": plain, "output": y, "input gradient": dx}


#: (N, C, H, W): alexnet_mnist's two sizes (shrunk), one pixel per channel, odd sizes, one sample
SHAPES = ((4, 3, 28, 28), (3, 5, 14, 14), (6, 4, 1, 1), (2, 3, 5, 7), (1, 2, 9, 9))


def examples(rng: np.random.Generator) -> Iterator[KernelExample]:
    for shape in SHAPES:
        c = shape[1]
        x = rng.standard_normal(shape).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        shift = x[0].reshape(c, -1).mean(axis=1).astype(np.float32)
        scale = rng.uniform(0.5, 2.0, c)
        yield KernelExample(f"random {shape}", (x, dy, shift, scale))
        far = (x * 0.01 + 100).astype(np.float32)  # mean far from zero against the spread
        yield KernelExample(f"large mean, small spread {shape}", (far, dy, far[0].reshape(c, -1).mean(
            axis=1).astype(np.float32), scale))
    x = rng.standard_normal((3, 4, 6, 5)).astype(np.float32)
    nchw = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # NHWC memory, NCHW view
    yield KernelExample("non-contiguous input", (nchw, rng.standard_normal(x.shape).astype(np.float32),
                                                 np.zeros(4, np.float32), np.ones(4)))


KERNEL = Kernel(
    name="batch_norm",
    description="batch normalisation's per-channel sums, scale-and-shift and training input gradient over "
                "an NCHW batch (BatchNorm on (C, H, W) inputs)",
    reference=BatchNormNumpy(),
    compiled_module="layerkit.kernels.batchnorm_numba",
    tolerance=TOLERANCE,
    examples=examples,
    run=run,
    covers="C-contiguous float32 batches; other arrays run the numpy reference",
    # what it saves per input value pays for numba's load after some 2^27 values (docs/performance.md)
    load_after=1 << 27,
)
