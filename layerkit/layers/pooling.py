"""Max, average and global average / max pooling.

Windowed pooling loops over the pool *offsets* (k*k iterations), each one a
strided view of the whole batch, so any stride/padding is handled by the same
code. Max pooling's forward and backward are the ``max_pool2d`` kernel
(:mod:`layerkit.kernels.maxpool`; compiled with the ``fast`` extra): backward finds,
per output pixel, the first offset (row-major window order) whose input equals the
maximum and writes ``dy`` only there.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from layerkit import hookimpl
from layerkit.errors import ShapeError
from layerkit.nn.capabilities import FreshGradient, FreshInferOutput, MaxPooling
from layerkit.nn.layer import Coupling, Example, Layer, Params, require_rank, Shape
from layerkit.kernels.maxpool import grad_buffer
from layerkit.kernels.select import kernel
from layerkit.kernels.windows import Window, pad, pair, unpad, window
from layerkit.nn.paramschema import int_or_pair_schema
from layerkit.parallel.chunks import over_chunks


def _pool_schema(kind: str, padding_note: str, **extra) -> dict:
    return {
        "type": "object",
        "properties": {
            "pool_size": int_or_pair_schema(1, f"{kind} window: an integer or [kh, kw]"),
            "stride": int_or_pair_schema(1, "step between windows (default: pool_size)"),
            "padding": int_or_pair_schema(0, f"padding on each side: an integer or [ph, pw]; {padding_note}", 0),
            "ceil_mode": {"type": "boolean", "default": False,
                          "description": "round the output size up, as PyTorch: a last window that starts inside "
                                         "the input (or its left/top padding) but runs past the end is kept, "
                                         "and only its part inside counts"},
            **extra,
        },
        "required": ["pool_size"],
        "additionalProperties": False,
    }


class _WindowPool(Layer):
    """What the windowed 2-D pools share: the window schema, geometry and ONNX export."""

    def _window(self, hw: Sequence[int]) -> Window:
        stride = getattr(self, "stride", None) or self.pool_size
        g = window(hw, self.pool_size, stride, self.padding)
        if max(g.pad_top, g.pad_bottom) >= g.kh or max(g.pad_left, g.pad_right) >= g.kw:
            # a window made of padding only has no value to pool
            raise ShapeError(f"padding {list(pair(self.padding, 'padding'))} must be smaller than "
                             f"pool_size {g.kh}x{g.kw}")
        if getattr(self, "ceil_mode", False):
            g = _ceil_window(g, hw)
        return g

    def output_shape(self, input_shape: Shape) -> Shape:
        require_rank(input_shape, 3, "(channels, height, width)")
        g = self._window(input_shape[1:])
        return (input_shape[0], g.ho, g.wo)

    def flops(self, input_shape: Shape) -> int:
        g = self._window(input_shape[1:])
        return input_shape[0] * g.ho * g.wo * g.kh * g.kw

    def _onnx_pool(self, g: Any, op: str, x: str, input_shape: Shape, **attrs: Any) -> str:
        # ONNX pools with floor-mode output sizes and leaves padding out of max and (with
        # count_include_pad=0) of the average: the same rules as here; ceil_mode's overhang is
        # already part of the window's bottom/right padding
        w = self._window(input_shape[1:])
        return g.op(op, [x], kernel_shape=[w.kh, w.kw], strides=[w.sh, w.sw],
                    pads=[w.pad_top, w.pad_left, w.pad_bottom, w.pad_right], **attrs)


def _ceil_window(g: Window, hw: Sequence[int]) -> Window:
    """PyTorch's ceil_mode: one more output row/column where a partial window fits, its overhang
    past the padded input added as extra bottom/right padding."""
    h, w = hw
    ho = -(-(h + g.pad_top + g.pad_bottom - g.kh) // g.sh) + 1
    wo = -(-(w + g.pad_left + g.pad_right - g.kw) // g.sw) + 1
    # the last window must start inside the input or its top/left padding
    if (ho - 1) * g.sh >= h + g.pad_top:
        ho -= 1
    if (wo - 1) * g.sw >= w + g.pad_left:
        wo -= 1
    extra_h = max(0, (ho - 1) * g.sh + g.kh - (h + g.pad_top + g.pad_bottom))
    extra_w = max(0, (wo - 1) * g.sw + g.kw - (w + g.pad_left + g.pad_right))
    return g._replace(pad_bottom=g.pad_bottom + extra_h, pad_right=g.pad_right + extra_w, ho=ho, wo=wo)


class MaxPool2D(MaxPooling, FreshGradient, FreshInferOutput, _WindowPool):
    """2-D max pooling over windows of each channel."""

    type = "max_pool2d"
    sample_coupling = Coupling.NONE
    description = ("2-D max pooling; pads with -inf, so padding never wins. Ties send the whole gradient to "
                   "the first maximum of the window (row-major).")
    params_schema = _pool_schema("pooling", "padding is -inf and never selected")
    examples = (
        Example({"pool_size": 2}, (2, 4, 6), "non-overlapping"),
        Example({"pool_size": 3, "stride": 2, "padding": 1}, (2, 5, 5), "overlapping with padding"),
        Example({"pool_size": [2, 3], "stride": [1, 2]}, (1, 4, 7), "rectangular window and stride"),
        Example({"pool_size": 2, "ceil_mode": True}, (2, 5, 5), "ceil_mode keeps the partial last window"),
    )
    has_kinks = True

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        return self._onnx_pool(g, "MaxPool", x, input_shape)

    def forward(self, params: Params, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        g = self._window(x.shape[2:])
        xp = pad(x, g, -np.inf)
        y = np.empty((x.shape[0], x.shape[1], g.ho, g.wo), dtype=x.dtype)
        impl = kernel("max_pool2d", x.dtype, x.size)  # numpy or compiled (layerkit.kernels.select)
        arg = impl.argmax_buffer(y.shape, g)
        # sample chunks keep the input lines every offset touches in cache for the next offset
        over_chunks(xp, lambda slices, step: impl.forward(xp, g, y, arg, slices))
        # xp is the input itself unless padded, so the cache adds no memory in the common case
        return y, (x.shape, g, xp, y, impl, arg)

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        (n, c, h, w), g, xp, y, impl, arg = cache
        overlap = g.sh < g.kh or g.sw < g.kw
        dxp = grad_buffer(xp.shape, g, dy.dtype, overlap)
        over_chunks(xp, lambda slices, step: impl.backward(xp, y, arg, dy, g, dxp, overlap, slices, step))
        return unpad(dxp, g, h, w), {}


class AvgPool2D(FreshInferOutput, _WindowPool):
    """2-D average pooling over windows of each channel."""

    type = "avg_pool2d"
    sample_coupling = Coupling.NONE
    description = ("2-D average pooling. By default padding is excluded from the average (each output divides "
                   "by the number of real input pixels in its window); count_include_pad: true divides by the "
                   "window size including the padding, PyTorch's default. layerkit keeps excluding by default "
                   "because changing it would silently change the outputs of existing model files with padded "
                   "average pooling: set it when porting a PyTorch model. With ceil_mode the overhang past the "
                   "padding is never counted (as PyTorch).")
    params_schema = _pool_schema(
        "averaging", "see count_include_pad",
        count_include_pad={"type": "boolean", "default": False,
                           "description": "count the zero padding in each window's divisor (PyTorch's default "
                                          "is true; layerkit's false, see the description)"})
    examples = (
        Example({"pool_size": 2}, (2, 4, 4), "non-overlapping"),
        Example({"pool_size": 3, "stride": 2, "padding": 1}, (2, 5, 6), "overlapping with padding"),
        Example({"pool_size": 3, "stride": 2, "padding": 1, "count_include_pad": True, "ceil_mode": True},
                (2, 6, 5), "PyTorch's divisor, ceil_mode"),
    )

    def _inverse_count(self, g: Window, h: int, w: int, dtype: np.dtype) -> float | np.ndarray:
        """1 / (pixels counted per window): a Python float, or an (Ho, Wo) array with padding."""
        if not g.padded:
            return 1.0 / (g.kh * g.kw)
        counted = np.zeros(g.padded_hw(h, w))
        if getattr(self, "count_include_pad", False):
            # the explicit padding counts, the ceil_mode overhang beyond it does not
            ph, pw = pair(self.padding, "padding")
            if g.pad_bottom == ph and g.pad_right == pw:  # no overhang: every window is full
                return 1.0 / (g.kh * g.kw)
            counted[:h + 2 * ph, :w + 2 * pw] = 1
        else:
            counted[g.pad_top:g.pad_top + h, g.pad_left:g.pad_left + w] = 1
        count = sum(counted[rows, cols] for _, _, rows, cols in g.offsets())
        return (1.0 / count).astype(dtype)

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        w = self._window(input_shape[1:])
        ph, pw = pair(self.padding, "padding")
        if getattr(self, "count_include_pad", False) and (ph or pw):
            # the real padding counts in the divisor, a ceil_mode overhang does not (as PyTorch):
            # zero-pad explicitly, then pool the overhang only as uncounted padding
            x = g.op("Pad", [x, g.const([0, 0, ph, pw, 0, 0, ph, pw], "pads", dtype=np.int64)], mode="constant")
            return g.op("AveragePool", [x], kernel_shape=[w.kh, w.kw], strides=[w.sh, w.sw], count_include_pad=0,
                        pads=[0, 0, w.pad_bottom - ph, w.pad_right - pw])
        return self._onnx_pool(g, "AveragePool", x, input_shape, count_include_pad=0)

    def forward(self, params: Params, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
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

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        (n, c, h, w), g, inv = cache
        overlap = g.sh < g.kh or g.sw < g.kw
        share = dy * inv
        dxp = grad_buffer((n, c, *g.padded_hw(h, w)), g, dy.dtype, overlap)
        for _, _, rows, cols in g.offsets():
            if overlap:
                dxp[:, :, rows, cols] += share
            else:
                dxp[:, :, rows, cols] = share
        return unpad(dxp, g, h, w), {}


class GlobalAvgPool2D(FreshInferOutput, Layer):
    """The mean over all spatial positions of each channel: (C, H, W) -> (C,)."""

    type = "global_avg_pool2d"
    sample_coupling = Coupling.NONE
    description = "Average over all spatial positions: (C, H, W) -> (C,) (PyTorch's AdaptiveAvgPool2d(1) + flatten)."
    params_schema = {"type": "object", "properties": {}, "additionalProperties": False}
    examples = (Example({}, (3, 4, 5)),)

    def output_shape(self, input_shape: Shape) -> Shape:
        require_rank(input_shape, 3, "(channels, height, width)")
        return (input_shape[0],)

    def flops(self, input_shape: Shape) -> int:
        return int(np.prod(input_shape))

    def forward(self, params: Params, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        return x.mean(axis=(2, 3)), x.shape

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        return g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        n, c, h, w = cache
        dx = np.empty(cache, dtype=dy.dtype)
        dx[...] = (dy * (1.0 / (h * w)))[:, :, None, None]
        return dx, {}


class GlobalMaxPool2D(MaxPooling, FreshGradient, Layer):
    """The maximum over all spatial positions of each channel: (C, H, W) -> (C,)."""

    type = "global_max_pool2d"
    sample_coupling = Coupling.NONE
    description = ("Maximum over all spatial positions: (C, H, W) -> (C,). The gradient goes to the first "
                   "maximum in row-major order (PyTorch's AdaptiveMaxPool2d(1) picks one maximum too).")
    params_schema = {"type": "object", "properties": {}, "additionalProperties": False}
    examples = (Example({}, (3, 4, 5)),)
    has_kinks = True

    def output_shape(self, input_shape: Shape) -> Shape:
        require_rank(input_shape, 3, "(channels, height, width)")
        return (input_shape[0],)

    def flops(self, input_shape: Shape) -> int:
        return int(np.prod(input_shape))

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        return g.op("Flatten", [g.op("GlobalMaxPool", [x])], axis=1)

    def forward(self, params: Params, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        idx = flat.argmax(axis=2)  # the first maximum
        y = np.take_along_axis(flat, idx[:, :, None], axis=2)[:, :, 0]
        return y, (x.shape, idx)

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        shape, idx = cache
        dx = np.zeros((shape[0], shape[1], shape[2] * shape[3]), dtype=dy.dtype)
        np.put_along_axis(dx, idx[:, :, None], dy[:, :, None], axis=2)
        return dx.reshape(shape), {}


@hookimpl
def layerkit_register_layers(register: Callable[[type[Layer]], None]) -> None:
    for cls in (MaxPool2D, AvgPool2D, GlobalAvgPool2D, GlobalMaxPool2D):
        register(cls)
