"""3x3 stride-1 convolution for layers with many channels: the numpy reference and the registry entry.

Three operations on NCHW batches, with zero padding ``pads`` = (top, bottom, left, right), each 0 or 1:

- ``forward(x, w, b, pads, out=None) -> y``: ``x`` (N, C, H, W) convolved with ``w`` (F, C, 3, 3), plus
  ``b`` (F,) unless None;
- ``backward_input(dy, w, pads, hw, out=None) -> dx``: the input gradient (N, C, H, W), ``hw`` = (H, W);
- ``backward_weights(x, dy, pads) -> dw``: the weight gradient (F, C, 3, 3), summed over the batch.

The reference below is im2col and GEMMs (one per sample, as numpy's batched matmul runs them). The
compiled twin (:mod:`layerkit.kernels.winograd_numba`) is Winograd's F(2x2, 3x3) algorithm, 2.25x
fewer multiplies; its transforms add and subtract up to 16 values per product, so it agrees with the
reference within float32 rounding (:data:`TOLERANCE`), not bit for bit. The compiled twin's
``covers`` says which convolutions the layer hands it (the layer asks only the compiled path):
those where it measured faster than the GEMM (8 channels and 8 filters or more).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from layerkit.kernels.kernel import Kernel, KernelExample, Tolerance
from layerkit.kernels.windows import Window, col2im_add, im2col, pad, unpad

#: values of order one (the examples' scale) through the transforms: within 1e-5 absolute, or 1e-4
#: relative for the larger weight-gradient sums
TOLERANCE = Tolerance(rtol=1e-4, atol=1e-5)


def _window(hw: tuple[int, int], pads: tuple[int, int, int, int]) -> Window:
    pt, pb, pl, pr = pads
    return Window(3, 3, 1, 1, 1, 1, pt, pb, pl, pr, hw[0] + pt + pb - 2, hw[1] + pl + pr - 2)


class WinogradNumpy:
    """The reference: im2col and one GEMM per sample."""

    path = "numpy"

    def _cols(self, x: np.ndarray, g: Window) -> np.ndarray:
        n, c = x.shape[:2]
        return im2col(pad(x, g), g, np.empty((n, c, 3, 3, g.ho, g.wo), dtype=x.dtype)).reshape(n, c * 9, -1)

    def forward(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, pads: tuple[int, int, int, int],
                out: np.ndarray | None = None) -> np.ndarray:
        g = _window(x.shape[2:], pads)
        y = np.matmul(w.reshape(w.shape[0], -1), self._cols(x, g)).reshape(len(x), w.shape[0], g.ho, g.wo)
        if b is not None:
            y += b.reshape(-1, 1, 1)
        if out is None:
            return y
        out[...] = y
        return out

    def backward_input(self, dy: np.ndarray, w: np.ndarray, pads: tuple[int, int, int, int], hw: tuple[int, int],
                       out: np.ndarray | None = None) -> np.ndarray:
        g = _window(hw, pads)
        n, c = dy.shape[0], w.shape[1]
        dcols = np.matmul(w.reshape(w.shape[0], -1).T, dy.reshape(n, w.shape[0], -1))
        dxp = np.zeros((n, c, *g.padded_hw(*hw)), dtype=dy.dtype)
        dx = unpad(col2im_add(dcols.reshape(n, c, 3, 3, g.ho, g.wo), g, dxp), g, *hw)
        if out is None:
            return np.ascontiguousarray(dx)
        out[...] = dx
        return out

    def backward_weights(self, x: np.ndarray, dy: np.ndarray, pads: tuple[int, int, int, int]) -> np.ndarray:
        g = _window(x.shape[2:], pads)
        f = dy.shape[1]
        dw = np.matmul(dy.reshape(len(x), f, -1), self._cols(x, g).transpose(0, 2, 1)).sum(axis=0)
        return dw.reshape(f, x.shape[1], 3, 3)


def run(impl: Any, ex: KernelExample) -> dict[str, np.ndarray]:
    x, w, b, dy, pads = ex.args
    return {"output": impl.forward(x, w, b, pads),
            "input gradient": impl.backward_input(dy, w, pads, x.shape[2:]),
            "weight gradient": impl.backward_weights(x, dy, pads)}


#: (C, F, pads, H, W): alexnet_mnist's 'same' layers (shrunk), no padding, uneven padding, odd and tiny
#: sizes (partial and single tiles), one channel, odd channel counts
GEOMETRIES = (
    (8, 8, (1, 1, 1, 1), 12, 12), (9, 16, (1, 1, 1, 1), 7, 7), (8, 5, (0, 0, 0, 0), 9, 6),
    (3, 8, (1, 0, 0, 1), 5, 8), (1, 2, (1, 1, 1, 1), 3, 3), (4, 3, (0, 1, 1, 0), 2, 2), (2, 2, (0, 0, 0, 0), 3, 3),
)


def examples(rng: np.random.Generator) -> Iterator[KernelExample]:
    for c, f, pads, h, wd in GEOMETRIES:
        where = f"{c}->{f} channels, pads {pads} on {h}x{wd}"
        x = rng.standard_normal((3, c, h, wd)).astype(np.float32)
        w = (rng.standard_normal((f, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype(np.float32)  # He scale
        b = rng.standard_normal(f).astype(np.float32)
        g = _window((h, wd), pads)
        dy = rng.standard_normal((3, f, g.ho, g.wo)).astype(np.float32)
        yield KernelExample(f"random, {where}", (x, w, b, dy, pads))
        yield KernelExample(f"no bias, {where}", (x, w, None, dy, pads))
    x = rng.standard_normal((2, 8, 6, 7)).astype(np.float32)
    nchw = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # NHWC memory, NCHW view
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * np.float32(0.15)
    dy = rng.standard_normal((2, 8, 6, 7)).astype(np.float32)
    yield KernelExample("non-contiguous input and gradient", (nchw, w, None, dy[:, :, ::-1], (1, 1, 1, 1)))


KERNEL = Kernel(
    name="conv2d_winograd",
    description="3x3 stride-1 2-D convolution, forward, input and weight gradients (Conv2D, layers with many "
                "channels): Winograd F(2x2, 3x3) compiled, im2col as the reference",
    reference=WinogradNumpy(),
    compiled_module="layerkit.kernels.winograd_numba",
    tolerance=TOLERANCE,
    examples=examples,
    run=run,
    covers="3x3 kernels, stride 1, no dilation, one group, padding 0 or 1 on each side, at least 8 input "
           "channels and 8 filters (alexnet_mnist's conv2-conv4); Conv2D takes it before any other path",
    # what it saves per input value pays for numba's load after some 2^26 values (docs/performance.md)
    load_after=1 << 26,
)
