"""Direct convolution for layers with few channels: the numpy reference and the registry entry.

A stride-1 convolution on the flat "wide" layout (:mod:`layerkit.kernels.windows`): every padded
input channel is one row of values, and the output is computed on a grid of Ho x Wf positions,
whose last Wf - Wo columns per row are junk and cropped off. Two operations, each on one chunk of
samples and writing into buffers the layer allocates:

- ``forward(xf, w, b, g, f, y)``: ``y`` (m, F, Ho, Wo) = the convolution of the flat padded chunk
  ``xf`` (m, C, f.size) with ``w`` (F, C, kh, kw), plus ``b`` (F,) unless None;
- ``weight_grad(xf, dyw, start, g, f, dw)``: ``dw`` (F, C, kh, kw) += the weight gradient of that
  chunk, from ``dyw[:, :, start:start + Ho * Wf]``, the output gradient on the wide grid with zeros in
  the junk columns (``start`` lets the layer pass its padded output gradient, which holds exactly that).

The input gradient needs no operation of its own: it is ``forward`` on the padded output gradient
with the rotated kernel (:mod:`layerkit.layers.conv` builds that problem).

The reference below is im2col and one GEMM per chunk. The compiled twin
(:mod:`layerkit.kernels.conv_direct_numba`) slides the kernel over the rows without the column
buffer, which is what makes it fast where the GEMM is small (LeNet's 8 and 16 filters); it adds the
same products in another order, so it agrees within float32 rounding (:data:`TOLERANCE`), not bit
for bit.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from layerkit.kernels.kernel import Kernel, KernelExample, Tolerance
from layerkit.kernels.windows import Flat, Window, flat, im2col_wide, pad_flat, window

#: outputs and weight gradients are sums of up to a few thousand float32 products in another order
#: than the GEMM's: relative to values of order one (the examples' scale) a few units in the last place
TOLERANCE = Tolerance(rtol=1e-4, atol=1e-5)


class DirectConvNumpy:
    """The reference: im2col on the wide grid and one GEMM per chunk of samples."""

    path = "numpy"

    def forward(self, xf: np.ndarray, w: np.ndarray, b: np.ndarray | None, g: Window, f: Flat, y: np.ndarray) -> None:
        m, c = xf.shape[:2]
        filters = w.shape[0]
        run = g.ho * f.wf
        cols = im2col_wide(xf, g, f, np.empty((m, c, g.kh, g.kw, run), dtype=xf.dtype))
        wide = np.matmul(w.reshape(filters, -1), cols.reshape(m, -1, run))
        crop = wide.reshape(m, filters, g.ho, f.wf)[..., :g.wo]
        if b is None:
            np.copyto(y, crop)
        else:
            np.add(crop, b.reshape(-1, 1, 1), out=y)

    def weight_grad(self, xf: np.ndarray, dyw: np.ndarray, start: int, g: Window, f: Flat, dw: np.ndarray) -> None:
        m, c = xf.shape[:2]
        run = g.ho * f.wf
        dyw = dyw[:, :, start:start + run]
        cols = im2col_wide(xf, g, f, np.empty((m, c, g.kh, g.kw, run), dtype=xf.dtype))
        # (m, F, run) @ (m, run, K) summed over the chunk
        dw += np.matmul(dyw, cols.reshape(m, -1, run).transpose(0, 2, 1)).sum(axis=0).reshape(dw.shape)


def wide_grad(dy: np.ndarray, g: Window, f: Flat) -> np.ndarray:
    """``dy`` (m, F, Ho, Wo) on the wide grid (m, F, Ho * Wf), zeros in the junk columns."""
    m, filters = dy.shape[:2]
    dyw = np.zeros((m, filters, g.ho, f.wf), dtype=dy.dtype)
    dyw[..., :g.wo] = dy
    return dyw.reshape(m, filters, g.ho * f.wf)


def run(impl: Any, ex: KernelExample) -> dict[str, np.ndarray]:
    """Forward and weight gradient of ``impl`` on one example (the whole batch as one chunk)."""
    x, w, b, dy, padding = ex.args
    g = window(x.shape[2:], w.shape[2:], 1, padding)
    f = flat(g, *x.shape[2:])
    xf = pad_flat(x, g, f)
    y = np.empty((x.shape[0], w.shape[0], g.ho, g.wo), dtype=x.dtype)
    impl.forward(xf, w, b, g, f, y)
    dw = np.zeros_like(w)
    impl.weight_grad(xf, wide_grad(dy, g, f), 0, g, f, dw)
    return {"output": y, "weight gradient": dw}


#: (C, F, kernel, padding, H, W): LeNet's two layers, 'same' 3x3 and 5x5, an odd filter count, a
#: rectangle, one filter, and a kernel the compiled code does not cover (it runs the reference)
GEOMETRIES = (
    (1, 8, 5, 0, 12, 12), (3, 4, 5, 0, 9, 11), (2, 5, 3, "same", 7, 7), (1, 6, 5, "same", 6, 8),
    (4, 1, 3, 0, 5, 5), (2, 3, (3, 5), 1, 8, 7), (2, 2, 2, 0, 5, 6),
)


def examples(rng: np.random.Generator) -> Iterator[KernelExample]:
    for c, filters, k, padding, h, wd in GEOMETRIES:
        where = f"{c}->{filters} channels, kernel {k}, padding {padding!r} on {h}x{wd}"
        kh, kw = (k, k) if isinstance(k, int) else k
        x = rng.standard_normal((3, c, h, wd)).astype(np.float32)
        w = (rng.standard_normal((filters, c, kh, kw)) / np.sqrt(c * kh * kw)).astype(np.float32)
        b = rng.standard_normal(filters).astype(np.float32)
        g = window((h, wd), (kh, kw), 1, padding)
        dy = rng.standard_normal((3, filters, g.ho, g.wo)).astype(np.float32)
        yield KernelExample(f"random, {where}", (x, w, b, dy, padding))
        yield KernelExample(f"no bias, {where}", (x, w, None, dy, padding))
    x = rng.standard_normal((2, 3, 10, 9)).astype(np.float32)
    nchw = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # NHWC memory, NCHW view
    w = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    wt = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    yield KernelExample("non-contiguous input and weights", (nchw, wt, None, rng.standard_normal(
        (2, 4, 6, 5)).astype(np.float32), 0))


KERNEL = Kernel(
    name="conv2d_direct",
    description="stride-1 2-D convolution on the flat wide layout, forward and weight gradient (Conv2D, "
                "small layers); the input gradient is its forward on the rotated kernel",
    reference=DirectConvNumpy(),
    compiled_module="layerkit.kernels.conv_direct_numba",
    tolerance=TOLERANCE,
    examples=examples,
    run=run,
    covers="kernels 3 or 5 wide (any height), stride 1, no dilation, one group; Conv2D takes it for layers "
           "with at most 16 filters (LeNet's), other layers keep their GEMM",
    # what it saves per input value pays for numba's load after some 2^25 values (docs/performance.md)
    load_after=1 << 25,
)
