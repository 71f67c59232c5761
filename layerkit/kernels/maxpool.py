"""Max pooling's kernels: the numpy reference and the kernel's entry in the registry.

Forward takes the maximum over each window of the padded batch (padding is -inf and never wins);
backward sends each output's gradient to the first offset, in row-major window order, whose input
equals the maximum. The compiled twin (:mod:`layerkit.kernels.maxpool_numba`) must agree bit for
bit, outputs and gradients, so a training run is the same on either path.

Both implementations work on groups of sample chunks (``slices``, as
:func:`layerkit.parallel.chunks.over_chunks` hands them out) and write into buffers the layer
allocates: ``y``, ``dxp``, and ``arg``, the argmax an implementation may keep between forward and
backward (:meth:`argmax_buffer`, None for the reference, which finds the maxima again).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from layerkit.kernels.kernel import Kernel, KernelExample, Tolerance
from layerkit.kernels.windows import Window, pad, window


class MaxPoolNumpy:
    """Max pooling as a loop over the window offsets, each a strided view of the whole chunk."""

    path = "numpy"

    def argmax_buffer(self, shape: tuple[int, ...], g: Window) -> np.ndarray | None:
        return None

    def forward(self, xp: np.ndarray, g: Window, y: np.ndarray, arg: Any, slices: list[slice]) -> None:
        # np.maximum over strided views, not a reshape + max over two axes, which is many times
        # slower (docs/performance.md); sample chunks keep the input lines every offset touches
        # in cache for the next offset
        for sl in slices:
            xc, yc = xp[sl], y[sl]
            offsets = g.offsets()
            _, _, rows, cols = next(offsets)
            np.copyto(yc, xc[:, :, rows, cols])
            for _, _, rows, cols in offsets:
                np.maximum(yc, xc[:, :, rows, cols], out=yc)

    def backward(self, xp: np.ndarray, y: np.ndarray, arg: Any, dy: np.ndarray, g: Window, dxp: np.ndarray,
                 overlap: bool, slices: list[slice], step: int) -> None:
        """Fill ``dxp`` (zeros where no window reaches, unless the windows tile it exactly)."""
        taken_buf = np.empty((step, *y.shape[1:]), dtype=bool)
        hit_buf = np.empty_like(taken_buf)
        for sl in slices:
            m = sl.stop - sl.start
            xc, yc, dyc, dxc = xp[sl], y[sl], dy[sl], dxp[sl]
            taken, hit = taken_buf[:m], hit_buf[:m]
            taken.fill(False)
            for _, _, rows, cols in g.offsets():
                np.equal(xc[:, :, rows, cols], yc, out=hit)
                np.greater(hit, taken, out=hit)  # for booleans a > b is a and not b: first maximum only
                taken |= hit
                if overlap:
                    dxc[:, :, rows, cols] += dyc * hit
                else:
                    np.multiply(dyc, hit, out=dxc[:, :, rows, cols])


def grad_buffer(shape: tuple[int, ...], g: Window, dtype: Any, overlap: bool) -> np.ndarray:
    """The input-gradient buffer both implementations fill: uninitialised only when the windows tile
    the input exactly (every element written once), zeros otherwise."""
    tiles = not overlap and not g.padded and shape[2] == g.ho * g.kh and shape[3] == g.wo * g.kw
    return np.empty(shape, dtype=dtype) if tiles else np.zeros(shape, dtype=dtype)


def run(impl: Any, ex: KernelExample) -> dict[str, np.ndarray]:
    """Forward and backward of ``impl`` on one example (whole batch, one chunk group)."""
    x, dy, pool, stride, padding = ex.args
    g = window(x.shape[2:], pool, stride, padding)
    xp = pad(x, g, -np.inf)
    y = np.empty((x.shape[0], x.shape[1], g.ho, g.wo), dtype=x.dtype)
    arg = impl.argmax_buffer(y.shape, g)
    whole = [slice(0, x.shape[0])]
    impl.forward(xp, g, y, arg, whole)
    overlap = g.sh < g.kh or g.sw < g.kw
    dxp = grad_buffer(xp.shape, g, dy.dtype, overlap)
    impl.backward(xp, y, arg, dy, g, dxp, overlap, whole, x.shape[0])
    return {"output": y, "input gradient": dxp}


#: (pool, stride, padding, per-sample shape): the benchmark nets' 2x2/2 and 3x3/2, rectangles,
#: overlapping windows, padding, inputs the windows do not tile, one window per channel
GEOMETRIES = (
    (2, 2, 0, (3, 8, 8)), (2, 2, 0, (2, 7, 9)), (3, 2, 0, (2, 7, 7)), (3, 2, 1, (2, 6, 5)),
    ((2, 3), (1, 2), 0, (1, 5, 8)), (3, 1, 1, (2, 4, 4)), (4, 4, 0, (1, 4, 4)), (1, 1, 0, (2, 3, 3)),
)


def examples(rng: np.random.Generator) -> Iterator[KernelExample]:
    for pool, stride, padding, shape in GEOMETRIES:
        where = f"pool {pool} stride {stride} padding {padding} on {shape}"
        x = rng.standard_normal((2, *shape)).astype(np.float32)
        g = window(shape[1:], pool, stride, padding)
        dy = rng.standard_normal((2, shape[0], g.ho, g.wo)).astype(np.float32)
        yield KernelExample(f"random, {where}", (x, dy, pool, stride, padding))
        # few distinct values: ties everywhere, signed zeros among them (the first maximum takes the gradient)
        ties = rng.integers(-2, 2, size=x.shape).astype(np.float32) * np.float32(0.5)
        ties[rng.random(x.shape) < 0.2] = -0.0
        yield KernelExample(f"ties and signed zeros, {where}", (ties, dy, pool, stride, padding))
        special = x.copy()
        pick = rng.random(x.shape)
        special[pick < 0.08] = np.nan
        special[(pick >= 0.08) & (pick < 0.16)] = np.inf
        special[(pick >= 0.16) & (pick < 0.3)] = -np.inf
        dy_special = dy.copy()
        dy_special.flat[:: max(1, dy.size // 3)] = np.nan  # NaN gradients spread as the reference spreads them
        yield KernelExample(f"NaN and infinities, {where}", (special, dy_special, pool, stride, padding))
    x = rng.standard_normal((3, 4, 10, 8)).astype(np.float32)
    nchw = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # NHWC memory, NCHW view
    dy = rng.standard_normal((3, 4, 5, 4)).astype(np.float32)
    yield KernelExample("non-contiguous input and gradient", (nchw, dy[:, :, :, ::-1], 2, 2, 0))


KERNEL = Kernel(
    name="max_pool2d",
    description="2-D max pooling forward and backward (MaxPool2D): the first maximum takes the gradient",
    reference=MaxPoolNumpy(),
    compiled_module="layerkit.kernels.maxpool_numba",
    tolerance=Tolerance(),
    examples=examples,
    run=run,
    covers="2x2 windows of stride 2 (any padding, ceil_mode); other windows run the numpy reference",
)
