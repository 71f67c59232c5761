"""Max, average and global average pooling.

Windowed pooling loops over the pool *offsets* (k*k iterations), each one a
strided view of the whole batch, so any stride/padding is handled by the same
code. Max pooling backward finds, per output pixel, the first offset (row-major
window order) whose input equals the maximum and writes ``dy`` only there.
"""

from __future__ import annotations

import numpy as np

from layerkit import hookimpl
from layerkit.errors import ShapeError
from layerkit.nn.layer import Coupling, Example, Layer, require_rank
from layerkit.kernels.windows import int_or_pair_schema, pad, pair, unpad, window
from layerkit.layers.activations import over_chunks


def _pool_schema(kind: str, padding_note: str) -> dict:
    return {
        "type": "object",
        "properties": {
            "pool_size": int_or_pair_schema(1, f"{kind} window: an integer or [kh, kw]"),
            "stride": int_or_pair_schema(1, "step between windows (default: pool_size)"),
            "padding": int_or_pair_schema(0, f"padding on each side: an integer or [ph, pw]; {padding_note}", 0),
        },
        "required": ["pool_size"],
        "additionalProperties": False,
    }


class _WindowPool(Layer):
    def _window(self, hw):
        stride = getattr(self, "stride", None) or self.pool_size
        g = window(hw, self.pool_size, stride, self.padding)
        if max(g.pad_top, g.pad_bottom) >= g.kh or max(g.pad_left, g.pad_right) >= g.kw:
            # a window made of padding only has no value to pool
            raise ShapeError(f"padding {list(pair(self.padding, 'padding'))} must be smaller than "
                             f"pool_size {g.kh}x{g.kw}")
        return g

    def output_shape(self, input_shape):
        require_rank(input_shape, 3, "(channels, height, width)")
        g = self._window(input_shape[1:])
        return (input_shape[0], g.ho, g.wo)

    def flops(self, input_shape):
        g = self._window(input_shape[1:])
        return input_shape[0] * g.ho * g.wo * g.kh * g.kw

    @staticmethod
    def _grad_buffer(shape, g, dtype, overlap):
        # when the windows tile the input exactly every element is written once, so no zero fill
        tiles = not overlap and not g.padded and shape[2] == g.ho * g.kh and shape[3] == g.wo * g.kw
        return np.empty(shape, dtype=dtype) if tiles else np.zeros(shape, dtype=dtype)


class MaxPool2D(_WindowPool):
    type = "max_pool2d"
    sample_coupling = Coupling.NONE
    description = ("2-D max pooling; pads with -inf, so padding never wins. Ties send the whole gradient to "
                   "the first maximum of the window (row-major).")
    params_schema = _pool_schema("pooling", "padding is -inf and never selected")
    examples = (
        Example({"pool_size": 2}, (2, 4, 6), "non-overlapping"),
        Example({"pool_size": 3, "stride": 2, "padding": 1}, (2, 5, 5), "overlapping with padding"),
        Example({"pool_size": [2, 3], "stride": [1, 2]}, (1, 4, 7), "rectangular window and stride"),
    )
    has_kinks = True
    fresh_dx = True

    def forward(self, params, x, training=False, rng=None, state=None):
        g = self._window(x.shape[2:])
        xp = pad(x, g, -np.inf)
        y = np.empty((x.shape[0], x.shape[1], g.ho, g.wo), dtype=x.dtype)
        # np.maximum over strided views beats a reshape + max over two axes by ~30x; sample
        # chunks keep the input lines every offset touches in cache for the next offset
        def work(slices, step):
            for sl in slices:
                xc, yc = xp[sl], y[sl]
                offsets = g.offsets()
                _, _, rows, cols = next(offsets)
                np.copyto(yc, xc[:, :, rows, cols])
                for _, _, rows, cols in offsets:
                    np.maximum(yc, xc[:, :, rows, cols], out=yc)

        over_chunks(xp, work)
        # xp is the input itself unless padded, so the cache adds no memory in the common case
        return y, (x.shape, g, xp, y)

    def backward(self, params, cache, dy):
        (n, c, h, w), g, xp, y = cache
        overlap = g.sh < g.kh or g.sw < g.kw
        dxp = self._grad_buffer(xp.shape, g, dy.dtype, overlap)

        def work(slices, step):
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

        over_chunks(xp, work)
        return unpad(dxp, g, h, w), {}


class AvgPool2D(_WindowPool):
    type = "avg_pool2d"
    sample_coupling = Coupling.NONE
    description = ("2-D average pooling. Padding is excluded from the average: each output divides by the "
                   "number of real input pixels in its window.")
    params_schema = _pool_schema("averaging", "padded positions are not counted in the average")
    examples = (
        Example({"pool_size": 2}, (2, 4, 4), "non-overlapping"),
        Example({"pool_size": 3, "stride": 2, "padding": 1}, (2, 5, 6), "overlapping with padding"),
    )

    def _inverse_count(self, g, h, w, dtype):
        """1 / (real pixels per window): a Python float, or an (Ho, Wo) array with padding."""
        if not g.padded:
            return 1.0 / (g.kh * g.kw)
        real = np.zeros(g.padded_hw(h, w))
        real[g.pad_top:g.pad_top + h, g.pad_left:g.pad_left + w] = 1
        count = sum(real[rows, cols] for _, _, rows, cols in g.offsets())
        return (1.0 / count).astype(dtype)

    def forward(self, params, x, training=False, rng=None, state=None):
        n, c, h, w = x.shape
        g = self._window((h, w))
        xp = pad(x, g)
        offsets = g.offsets()
        _, _, rows, cols = next(offsets)
        y = xp[:, :, rows, cols].copy()
        for _, _, rows, cols in offsets:
            y += xp[:, :, rows, cols]
        inv = self._inverse_count(g, h, w, x.dtype)
        y *= inv
        return y, (x.shape, g, inv)

    def backward(self, params, cache, dy):
        (n, c, h, w), g, inv = cache
        overlap = g.sh < g.kh or g.sw < g.kw
        share = dy * inv
        dxp = self._grad_buffer((n, c, *g.padded_hw(h, w)), g, dy.dtype, overlap)
        for _, _, rows, cols in g.offsets():
            if overlap:
                dxp[:, :, rows, cols] += share
            else:
                dxp[:, :, rows, cols] = share
        return unpad(dxp, g, h, w), {}


class GlobalAvgPool2D(Layer):
    type = "global_avg_pool2d"
    sample_coupling = Coupling.NONE
    description = "Average over all spatial positions: (C, H, W) -> (C,)."
    params_schema = {"type": "object", "properties": {}, "additionalProperties": False}
    examples = (Example({}, (3, 4, 5)),)

    def output_shape(self, input_shape):
        require_rank(input_shape, 3, "(channels, height, width)")
        return (input_shape[0],)

    def flops(self, input_shape):
        return int(np.prod(input_shape))

    def forward(self, params, x, training=False, rng=None, state=None):
        return x.mean(axis=(2, 3)), x.shape

    def backward(self, params, cache, dy):
        n, c, h, w = cache
        dx = np.empty(cache, dtype=dy.dtype)
        dx[...] = (dy * (1.0 / (h * w)))[:, :, None, None]
        return dx, {}


@hookimpl
def layerkit_register_layers(register):
    for cls in (MaxPool2D, AvgPool2D, GlobalAvgPool2D):
        register(cls)
