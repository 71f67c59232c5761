"""2-D convolution (cross-correlation, as every framework computes it).

Forward is im2col + one batched GEMM per chunk of samples: ``W (g, F/g, K)``
times ``cols (n, g, K, Ho*Wo)`` lands directly in ``(n, F, Ho, Wo)``, so the
result is NCHW without a transpose. Large layers are memory bound on the
column buffer, so the batch is processed in chunks whose columns stay in
cache; backward then rebuilds the columns chunk by chunk instead of keeping
them. Small layers (the whole batch in one chunk) keep their columns.

The weight gradient is computed transposed, ``cols (K, Ho*Wo) @ dy^T``, which
OpenBLAS runs faster than ``dy @ cols^T`` for these shapes: a short M with a long
inner dimension is its slow case (docs/performance.md).

With the compiled kernels (``pip install 'layerkit[fast]'``, float32), two more paths come first:

- 3x3 stride-1 layers with 8 or more channels and filters: Winograd's F(2x2, 3x3), forward, input
  and weight gradients (the ``conv2d_winograd`` kernel, :mod:`layerkit.kernels.winograd`);
- other stride-1 layers with at most 16 filters and kernels 3 or 5 wide: the direct convolution
  (the ``conv2d_direct`` kernel, :mod:`layerkit.kernels.conv_direct`), no column buffer.

They agree with the numpy paths within float32 rounding. The numpy paths, chosen from the shapes
alone (so forward, infer and backward agree):

- small stride-1 layers (at most 16 filters, the batch's columns in cache): one GEMM over
  the whole batch, columns laid out channel-major (``_conv_batch``, below);
- other stride-1 layers (nearly all the rest): per-sample GEMMs over cache-sized chunks on
  the "wide" flat layout of ``layerkit.kernels.windows`` (long contiguous copies); dx is a
  second stride-1 convolution with the rotated kernel while F <= C (one GEMM instead of a
  GEMM plus kh*kw scattered adds), else col2im;
- strided layers: plain im2col and col2im.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, NamedTuple, Sequence

import numpy as np

from layerkit import hookimpl
from layerkit.parallel import threads as parallel
from layerkit.errors import ShapeError
from layerkit.nn.initializers import INITIALIZERS
from layerkit.nn.capabilities import AbsorbsAffine, FreshInferOutput, InputGradientOnly
from layerkit.nn.layer import Coupling, Example, Layer, Params, ParamSpec, require_rank, Shape
from layerkit.kernels.conv_direct import wide_grad
from layerkit.kernels.select import kernel
from layerkit.kernels.windows import (Flat, Window, col2im_add, col2im_wide_add, flat, im2col, im2col_wide, image_rows,
                                      pad, pad_flat, unpad, window)
from layerkit.nn.paramschema import int_or_pair_schema
from layerkit.parallel.chunks import CHUNK_BYTES, chunk_size


class ConvCache(NamedTuple):
    """What :meth:`Conv2D.backward` needs from a forward: the path taken and its buffers."""

    #: the algorithm forward used (see the module docstring), which backward mirrors
    path: Literal["winograd", "direct", "batch", "wide", "strided"]
    #: the input (winograd), the padded input (flat for the other stride-1 paths), or None where the
    #: columns were kept
    source: np.ndarray | None
    #: the im2col columns, or None: backward rebuilds them from ``source`` chunk by chunk
    cols: np.ndarray | None
    #: the input's (height, width)
    hw: tuple[int, int]
    window: Window
    #: samples per batch GEMM (the "batch" path only)
    chunk: int = 0


class Conv2D(AbsorbsAffine, FreshInferOutput, InputGradientOnly, Layer):
    """2-D convolution (see the module docstring for the three algorithms it picks from)."""

    type = "conv2d"
    sample_coupling = Coupling.NONE
    description = ("2-D convolution over a (C, H, W) input: stride, padding ('same'/'valid'/explicit), "
                   "dilation and grouped / depthwise (groups = channels) variants, as PyTorch's Conv2d (same "
                   "weight shape (F, C / groups, kh, kw)); 'same' also works with strides, where PyTorch refuses it.")
    params_schema = {
        "type": "object",
        "properties": {
            "filters": {"type": "integer", "minimum": 1, "description": "number of output channels"},
            "kernel_size": int_or_pair_schema(1, "window size: an integer or [kh, kw]"),
            "stride": int_or_pair_schema(1, "step between windows: an integer or [sh, sw]", 1),
            "padding": {
                "oneOf": [
                    {"type": "integer", "minimum": 0},
                    {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2},
                    {"enum": ["same", "valid"]},
                ],
                "default": 0,
                "description": "zero padding on each side: an integer, [ph, pw], 'valid' (none) or 'same' "
                               "(output = ceil(input / stride); an odd total puts the extra pixel last)",
            },
            "dilation": int_or_pair_schema(1, "spacing between kernel taps: an integer or [dh, dw]", 1),
            "groups": {"type": "integer", "minimum": 1, "default": 1,
                       "description": "split channels and filters into this many independent groups; "
                                      "groups = channels gives a depthwise convolution"},
            "use_bias": {"type": "boolean", "default": True, "description": "add a learnable bias per filter"},
            "init": {"enum": list(INITIALIZERS), "default": "he_normal", "description": "weight initializer"},
        },
        "required": ["filters", "kernel_size"],
        "additionalProperties": False,
    }
    examples = (
        Example({"filters": 3, "kernel_size": 3}, (2, 6, 6), "plain valid convolution"),
        Example({"filters": 2, "kernel_size": [3, 2], "stride": 2, "padding": 1}, (2, 7, 6),
                "stride and explicit padding, non-square kernel"),
        Example({"filters": 4, "kernel_size": 3, "padding": "same", "dilation": 2, "groups": 2, "use_bias": False},
                (4, 7, 7), "dilated grouped 'same' convolution"),
        Example({"filters": 3, "kernel_size": 3, "stride": 2, "padding": "same", "groups": 3}, (3, 6, 5),
                "depthwise with stride 2 and asymmetric 'same' padding"),
    )

    # -- static ----------------------------------------------------------------
    def _window(self, hw: Sequence[int]) -> Window:
        return window(hw, self.kernel_size, self.stride, self.padding, self.dilation)

    def output_shape(self, input_shape: Shape) -> Shape:
        require_rank(input_shape, 3, "(channels, height, width)")
        c, h, w = input_shape
        if c % self.groups:
            raise ShapeError(f"channels {c} not divisible by groups {self.groups}")
        if self.filters % self.groups:
            raise ShapeError(f"filters {self.filters} not divisible by groups {self.groups}")
        g = self._window((h, w))
        return (self.filters, g.ho, g.wo)

    def param_specs(self, input_shape: Shape) -> dict[str, ParamSpec]:
        c = input_shape[0]
        g = self._window(input_shape[1:])
        fan_in = c // self.groups * g.kh * g.kw
        fan_out = self.filters // self.groups * g.kh * g.kw
        specs = {"W": ParamSpec((self.filters, c // self.groups, g.kh, g.kw), self.init,
                                fan_in=fan_in, fan_out=fan_out, decay=True)}
        if self.use_bias:
            specs["b"] = ParamSpec((self.filters,), "zeros")
        return specs

    def flops(self, input_shape: Shape) -> int:
        c = input_shape[0]
        g = self._window(input_shape[1:])
        outputs = self.filters * g.ho * g.wo
        return 2 * outputs * (c // self.groups) * g.kh * g.kw + (outputs if self.use_bias else 0)

    def workspace_bytes(self, input_shape: Shape, batch_size: int) -> int:
        """Float32 scratch for a batch beyond the outputs: im2col columns and the padded copy, one
        sample's at least per worker thread (chunks are cache-sized but never under one sample)."""
        c, h, w = input_shape
        g = self._window((h, w))
        f = flat(g, h, w)
        cols = c * g.kh * g.kw * g.ho * max(f.wf, g.wo) * 4
        return cols * min(batch_size, parallel.num_threads()) + c * max(f.size, f.rows * g.wo) * 4 * batch_size

    # -- compute ----------------------------------------------------------------
    def _weights(self, params: Params) -> np.ndarray:
        w = params["W"]
        return w.reshape(self.groups, self.filters // self.groups, -1)

    def forward(self, params: Params, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        # in inference nothing is kept for a backward (it rebuilds), and the path is infer's
        return self._forward(params, x, params["b"] if self.use_bias else None, keep=training)

    def infer(self, params: Params, x: np.ndarray, state: dict[str, np.ndarray] | None = None) -> np.ndarray:
        # no columns kept for a backward; the bias may come from a folded batch norm
        return self._forward(params, x, params.get("b"), keep=False)[0]

    def fold_affine(self, params: Params, scale: np.ndarray, shift: np.ndarray) -> dict[str, np.ndarray] | None:
        w = params["W"] * scale.reshape(-1, 1, 1, 1)
        b = shift + params["b"] * scale if "b" in params else shift.copy()
        return {"W": w.astype(params["W"].dtype, copy=False), "b": b.astype(params["W"].dtype, copy=False)}

    def _forward(self, params: Params, x: np.ndarray, b: np.ndarray | None, keep: bool
                 ) -> tuple[np.ndarray, ConvCache]:
        n, c, h, w = x.shape
        g = self._window((h, w))
        w3 = self._weights(params)
        bias = None if b is None else b.reshape(-1, 1, 1)
        wino = _winograd_kernel(g, c, self.filters, self.groups, x)
        if wino is not None:
            return (_conv_winograd(wino, x, params["W"], b, _pads(g)),
                    ConvCache("winograd", x if keep else None, None, (h, w), g))
        direct = _direct_kernel(g, c, self.filters, self.groups, x)
        if direct is not None:
            f = flat(g, h, w)
            xf = pad_flat(x, g, f)
            return _conv_direct(direct, xf, params["W"], b, g, f), ConvCache("direct", xf, None, (h, w), g)
        nb = _batch_chunk(g, n, c, w3.shape[0] * w3.shape[1], x.itemsize, whole=keep)
        if nb:
            f = flat(g, h, w)
            xf = pad_flat(x, g, f)
            y, cols = _conv_batch(xf, w3, g, f, nb, bias)
            return y, ConvCache("batch", None if keep and cols is not None else xf, cols if keep else None,
                                (h, w), g, nb)
        if _wide_ok(g):
            f = flat(g, h, w)
            xf = pad_flat(x, g, f)
            y, cols = _conv_wide(xf, w3, g, f, bias, keep)
            return y, ConvCache("wide", None if cols is not None else xf, cols, (h, w), g)
        xp = pad(x, g)
        y, cols = _conv_strided(xp, w3, g, keep)
        if bias is not None:
            y += bias
        return y, ConvCache("strided", xp, cols, (h, w), g)

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        return self._backward(params, cache, dy, need_dx=True)

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        w = self._window(input_shape[1:])  # 'same' resolved to explicit (possibly uneven) pads
        inputs = [x, g.const(params["W"], "W")] + ([g.const(params["b"], "b")] if self.use_bias else [])
        return g.op("Conv", inputs, kernel_shape=[w.kh, w.kw], strides=[w.sh, w.sw], dilations=[w.dh, w.dw],
                    pads=[w.pad_top, w.pad_left, w.pad_bottom, w.pad_right], group=int(self.groups))

    def backward_params(self, params: Params, cache: Any, dy: np.ndarray) -> dict[str, np.ndarray]:
        """Only the parameter gradients: the model calls this when the input is the data."""
        return self._backward(params, cache, dy, need_dx=False)[1]

    def backward_input(self, params: Params, cache: Any, dy: np.ndarray) -> np.ndarray:
        """Only the input gradient: the model calls this for a frozen layer (no GEMM for dW, no columns rebuilt)."""
        return self._backward(params, cache, dy, need_dx=True, need_dw=False)[0]

    def _backward(self, params: Params, cache: ConvCache, dy: np.ndarray, need_dx: bool, need_dw: bool = True
                  ) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        w3, g = self._weights(params), cache.window
        if cache.path == "winograd":
            dx, dw = _backward_winograd(params["W"], cache.source, cache.hw, g, dy, need_dx, need_dw)
        elif cache.path == "direct":
            dx, dw = _backward_direct(params["W"], cache.source, cache.hw, g, dy, need_dx, need_dw)
        elif cache.path == "batch":
            dx, dw = _backward_batch(w3, cache.source, cache.cols, cache.hw, g, dy, cache.chunk, need_dx, need_dw)
        elif cache.path == "wide":
            dx, dw = _backward_wide(params["W"], w3, cache.source, cache.cols, cache.hw, g, dy, need_dx, need_dw)
        else:
            dx, dw = _backward_strided(w3, cache.source, cache.cols, cache.hw, g, dy, need_dx, need_dw)
        grads: dict[str, np.ndarray] = {}
        if dw is not None:
            grads["W"] = dw.reshape(params["W"].shape)
            if self.use_bias:
                grads["b"] = dy.sum(axis=(0, 2, 3))
        return dx, grads


def _wide_ok(g: Window) -> bool:
    """Stride 1 and padding below the dilated kernel: then dx is itself a stride-1 convolution."""
    keh, kew = (g.kh - 1) * g.dh + 1, (g.kw - 1) * g.dw + 1
    return g.sh == g.sw == 1 and max(g.pad_top, g.pad_bottom) < keh and max(g.pad_left, g.pad_right) < kew


# -- 3x3 layers with many channels, compiled: the Winograd kernel -------------------------------------
#
# With the compiled kernels, 3x3 stride-1 layers with 8 or more channels and filters run Winograd's
# F(2x2, 3x3) (layerkit.kernels.winograd): 2.25x fewer multiplies than the GEMM on the columns.


def _pads(g: Window) -> tuple[int, int, int, int]:
    return g.pad_top, g.pad_bottom, g.pad_left, g.pad_right


def _winograd_kernel(g: Window, c: int, filters: int, groups: int, x: np.ndarray) -> Any:
    """The compiled Winograd convolution when it is active and covers this layer, else None."""
    if g.kh != 3 or g.kw != 3:
        return None
    impl = kernel("conv2d_winograd", x.dtype, x.size)
    if impl.path == "numpy" or not impl.covers(c, filters, g.kh, g.kw, (g.sh, g.sw), (g.dh, g.dw), groups, _pads(g)):
        return None
    return impl


def _conv_winograd(impl: Any, x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
                   pads: tuple[int, int, int, int]) -> np.ndarray:
    n, _, h, wd = x.shape
    y = np.empty((n, w.shape[0], h + pads[0] + pads[1] - 2, wd + pads[2] + pads[3] - 2), dtype=x.dtype)

    _over_samples(lambda a, z: impl.forward(x[a:z], w, b, pads, out=y[a:z]), n, x.nbytes * 9)
    return y


def _over_samples(work: Callable[[int, int], object], n: int, nbytes: int) -> None:
    """``work(a, z)`` over sample ranges that together cover ``n``: one per thread when the work is worth it."""
    parallel.run(work, parallel.split(n, 1, nbytes, "conv"), nbytes, "conv")


def _backward_winograd(w: np.ndarray, x: np.ndarray, hw: tuple[int, int], g: Window, dy: np.ndarray, need_dx: bool,
                       need_dw: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    impl = kernel("conv2d_winograd", dy.dtype)
    n = dy.shape[0]
    pads = _pads(g)
    nbytes = dy.nbytes * 9
    dx = dw = None
    if need_dx:
        out = dx = np.empty((n, w.shape[1], *hw), dtype=dy.dtype)
        _over_samples(lambda a, z: impl.backward_input(dy[a:z], w, pads, hw, out=out[a:z]), n, nbytes)
    if need_dw:
        dw = _ordered_sum(lambda a, z: impl.backward_weights(x[a:z], dy[a:z], pads), n, 1, nbytes, w.shape, dy.dtype)
    return dx, dw


# -- small layers, compiled: the direct convolution kernel --------------------------------------------
#
# With the compiled kernels (pip install 'layerkit[fast]'), layers whose GEMMs are too small for BLAS
# to run fast skip the column buffer altogether: the conv2d_direct kernel slides the kernel over
# the flat rows (layerkit.kernels.conv_direct). The input gradient is the same kernel run on the
# padded output gradient with the rotated kernel, as the wide path's.

#: more filters and OpenBLAS's GEMM wins (alexnet_mnist's conv1, 32 filters, against LeNet's 8 and 16:
#: docs/performance.md, "Compiled kernels")
DIRECT_MAX_FILTERS = 16


def _direct_kernel(g: Window, c: int, filters: int, groups: int, x: np.ndarray) -> Any:
    """The compiled direct convolution when it is active and covers this layer, else None."""
    if groups != 1 or not _wide_ok(g) or filters > DIRECT_MAX_FILTERS:
        return None
    impl = kernel("conv2d_direct", x.dtype, x.size)
    return impl if impl.path != "numpy" and impl.covers(g, c, filters) else None


def _conv_direct(impl: Any, xf: np.ndarray, w: np.ndarray, b: np.ndarray | None, g: Window, f: Flat) -> np.ndarray:
    n = xf.shape[0]
    y = np.empty((n, w.shape[0], g.ho, g.wo), dtype=xf.dtype)

    _over_samples(lambda a, z: impl.forward(xf[a:z], w, b, g, f, y[a:z]), n, xf.nbytes * g.kh * g.kw)
    return y


def _backward_direct(w: np.ndarray, xf: np.ndarray, hw: tuple[int, int], g: Window, dy: np.ndarray, need_dx: bool,
                     need_dw: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    impl = kernel("conv2d_direct", dy.dtype)
    n = dy.shape[0]
    f = flat(g, *hw)
    dx = dw = dyw = None
    start = 0
    if need_dx:
        gt, wt = _rotated(g, w, hw)
        flt = flat(gt, g.ho, g.wo)
        dyf = pad_flat(dy, gt, flt)
        dx = _conv_direct(impl, dyf, wt, None, gt, flt)
        offset = _wide_start(gt, flt, f)
        if offset is not None:
            dyw, start = dyf, offset
    if need_dw:
        if dyw is None:
            dyw = wide_grad(dy, g, f)

        def work(a: int, z: int) -> np.ndarray:
            part = np.zeros(w.shape, dtype=dy.dtype)
            impl.weight_grad(xf[a:z], dyw[a:z], start, g, f, part)
            return part

        dw = _ordered_sum(work, n, 1, xf.nbytes * g.kh * g.kw, w.shape, dy.dtype)
    return dx, dw


def _wide_start(gt: Window, flt: Flat, fl: Flat) -> int | None:
    """Where ``dy`` on the forward's wide grid starts in each row of the rotated convolution's padded
    ``dy`` (``gt``, ``flt``), or None when the two grids differ (they never do: W + max pad = Wo + max
    pad of the rotated window, but it is cheap to check). From its first real pixel the padded dy is
    dy on the wide grid with zero junk columns: they fall on the next row's leading zeros."""
    return gt.pad_top * flt.wf + flt.lead if flt.wf == fl.wf else None


def _rotated(g: Window, w: np.ndarray, hw: tuple[int, int]) -> tuple[Window, np.ndarray]:
    """The input gradient of a stride-1 convolution as a stride-1 convolution of the output gradient:
    its window and its kernel (rotated by 180 degrees, channels and filters swapped; one group)."""
    return _rotated_window(g, hw), np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))


def _rotated_window(g: Window, hw: tuple[int, int]) -> Window:
    """The window of the convolution that gives a stride-1 convolution's input gradient (input ``hw``):
    the output gradient padded so that every tap that reached the input reaches it back."""
    keh, kew = (g.kh - 1) * g.dh + 1, (g.kw - 1) * g.dw + 1
    return Window(g.kh, g.kw, 1, 1, g.dh, g.dw, keh - 1 - g.pad_top, keh - 1 - g.pad_bottom,
                  kew - 1 - g.pad_left, kew - 1 - g.pad_right, *hw)


# -- small layers: one GEMM over the whole batch ----------------------------------------------------------
#
# A small layer's per-sample GEMMs (LeNet's conv2: 16 x 200 x 96) are too small for BLAS to
# run fast, and numpy's batched matmul makes one call per sample. Here the columns are laid
# out channel-major over the batch, (C*kh*kw, n * Ho*Wf), so forward, the weight gradient and
# the column gradient are each one large GEMM (8 x 25 x 43,008 for LeNet's conv1). The price
# is a transposing copy into and out of the (F, n, ...) layout, cheap while F is small, and
# it only wins while the batch's columns stay in cache: small layers (LeNet's, CIFAR-sized)
# win, wide ones lose (docs/performance.md has the per-shape measurements).

BATCH_GEMM_MAX_FILTERS = 16  # more filters: the transposing copy of the output costs more than the GEMM saves
BATCH_GEMM_MAX_BYTES = 6 * CHUNK_BYTES  # columns of a whole batch in one GEMM; larger ones stream from memory and lose
BATCH_GEMM_CHUNK_BYTES = 3 * CHUNK_BYTES  # columns per GEMM when the batch is split (inference only)
BATCH_GEMM_MIN_CHUNK = 16  # samples per GEMM at least, else the per-sample path


def _batch_chunk(g: Window, n: int, c: int, f: int, itemsize: int, whole: bool) -> int:
    """Samples per batch GEMM, or 0 when the per-sample path is faster. ``whole``: only if the
    whole batch fits (training keeps the columns for backward); else cache-sized chunks of at
    least BATCH_GEMM_MIN_CHUNK samples (inference: fewer, larger numpy calls than per sample)."""
    if not _wide_ok(g) or f > BATCH_GEMM_MAX_FILTERS:
        return 0
    run = g.ho * (g.wo + (g.kw - 1) * g.dw - min(g.pad_left, g.pad_right))  # Ho * Wf (windows.flat)
    per_sample = max(c * g.kh * g.kw * run * itemsize, 1)
    if n * per_sample <= BATCH_GEMM_MAX_BYTES:
        return n
    fits = BATCH_GEMM_CHUNK_BYTES // per_sample  # a cache-sized chunk (docs/performance.md)
    return 0 if whole or fits < BATCH_GEMM_MIN_CHUNK else fits


def _im2col_batch(xf: np.ndarray, g: Window, f: Flat, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` (C, kh, kw, n, Ho*Wf) from the flat padded batch ``xf`` (n, C, f.size)."""
    run = g.ho * f.wf
    xt = xf.transpose(1, 0, 2)
    for i in range(g.kh):
        for j in range(g.kw):
            start = f.start(g, i, j)
            out[:, i, j] = xt[:, :, start:start + run]
    return out


def _conv_batch(xf: np.ndarray, w3: np.ndarray, g: Window, f: Flat, nb: int, bias: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Stride-1 convolution as one GEMM per ``nb`` samples over channel-major columns; returns y
    and, when one chunk held the whole batch, its columns."""
    n, c = xf.shape[:2]
    groups, fg, k = w3.shape
    run = g.ho * f.wf
    y = np.empty((n, groups * fg, g.ho, g.wo), dtype=xf.dtype)
    buf = np.empty((c, g.kh, g.kw, nb, run), dtype=xf.dtype)
    for n0 in range(0, n, nb):
        m = min(n, n0 + nb) - n0
        cols = _im2col_batch(xf[n0:n0 + m], g, f, buf if m == nb else buf[:, :, :, :m])
        yw = np.matmul(w3, cols.reshape(groups, k, m * run))
        wide = yw.reshape(groups * fg, m, g.ho, f.wf)[..., :g.wo].transpose(1, 0, 2, 3)
        if bias is None:
            np.copyto(y[n0:n0 + m], wide)
        else:
            np.add(wide, bias, out=y[n0:n0 + m])
    return y, (buf if nb == n else None)


def _stride1_sizes(w3: np.ndarray, hw: tuple[int, int], g: Window, dy: np.ndarray
                   ) -> tuple[int, int, int, int, int, int, Flat, int]:
    """A stride-1 backward's sizes: (n, F, groups, F/groups, K per group, C, flat layout, Ho*Wf)."""
    n, f = dy.shape[:2]
    groups, fg, k = w3.shape
    fl = flat(g, *hw)
    return n, f, groups, fg, k, k // (g.kh * g.kw) * groups, fl, g.ho * fl.wf


def _backward_batch(w3: np.ndarray, xf: np.ndarray | None, cols: np.ndarray | None, hw: tuple[int, int], g: Window,
                    dy: np.ndarray, nb: int, need_dx: bool = True, need_dw: bool = True
                    ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Backward of :func:`_conv_batch`: from its columns, or rebuilt from ``xf`` chunk by chunk."""
    n, f, groups, fg, k, c, fl, run = _stride1_sizes(w3, hw, g, dy)
    dwt = np.zeros((groups, k, fg), dtype=dy.dtype) if need_dw else None
    dxf = np.zeros((c, n, fl.size), dtype=dy.dtype) if need_dx else None
    dyw = np.zeros((f, nb, g.ho, fl.wf), dtype=dy.dtype)  # junk columns stay zero: they add nothing
    for n0 in range(0, n, nb):
        m = min(n, n0 + nb) - n0
        dyw[:, :m, :, :g.wo] = dy[n0:n0 + m].transpose(1, 0, 2, 3)
        dy3 = (dyw if m == nb else np.ascontiguousarray(dyw[:, :m])).reshape(groups, fg, m * run)
        if dwt is not None:
            chunk = cols if cols is not None else _im2col_batch(
                xf[n0:n0 + m], g, fl, np.empty((c, g.kh, g.kw, m, run), dtype=dy.dtype))
            dwt += np.matmul(chunk.reshape(groups, k, m * run), dy3.transpose(0, 2, 1))
        if need_dx:
            dcols = np.matmul(w3.transpose(0, 2, 1), dy3).reshape(c, g.kh, g.kw, m, run)
            target = dxf[:, n0:n0 + m]
            for i in range(g.kh):
                for j in range(g.kw):
                    start = fl.start(g, i, j)
                    target[:, :, start:start + run] += dcols[:, i, j]
    dx = image_rows(dxf, g, fl, *hw).transpose(1, 0, 2, 3) if need_dx else None
    return dx, (None if dwt is None else dwt.transpose(0, 2, 1))


def _conv_wide(xf: np.ndarray, w3: np.ndarray, g: Window, f: Flat, bias: np.ndarray | None = None,
               keep: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Stride-1 convolution of the flat padded batch ``xf`` (N, C, f.size) on the wide grid.

    Returns the cropped (N, F, Ho, Wo) result and the columns when ``keep`` and the whole
    batch fits one chunk (else None). Each
    chunk's GEMM lands in a cache-sized wide scratch and is cropped (and biased) from
    there, so the wide result with its junk columns never goes out to memory.
    """
    n, c = xf.shape[:2]
    groups, fg, k = w3.shape
    run = g.ho * f.wf
    y = np.empty((n, groups * fg, g.ho, g.wo), dtype=xf.dtype)
    nb = chunk_size(c * g.kh * g.kw * run * xf.itemsize, n)
    kept = []

    def work(a: int, b: int) -> None:
        # scratch per task: each worker thread fills its own
        buf = np.empty((min(nb, b - a), c, g.kh, g.kw, run), dtype=xf.dtype)
        yw = np.empty((len(buf), groups, fg, run), dtype=xf.dtype)
        for n0 in range(a, b, nb):
            m = min(b, n0 + nb) - n0
            chunk = im2col_wide(xf[n0:n0 + m], g, f, buf[:m])
            np.matmul(w3, chunk.reshape(m, groups, k, run), out=yw[:m])
            wide = yw[:m].reshape(m, groups * fg, g.ho, f.wf)[..., :g.wo]
            if bias is None:
                np.copyto(y[n0:n0 + m], wide)
            else:
                np.add(wide, bias, out=y[n0:n0 + m])
        if nb == n and keep:
            kept.append(buf)

    col_bytes = n * c * g.kh * g.kw * run * xf.itemsize
    parallel.run(work, parallel.split(n, nb, col_bytes, "conv"), col_bytes, "conv")
    return y, (kept[0] if kept else None)


def _backward_wide(w: np.ndarray, w3: np.ndarray, xf: np.ndarray | None, cols: np.ndarray | None, hw: tuple[int, int],
                   g: Window, dy: np.ndarray, need_dx: bool = True, need_dw: bool = True
                   ) -> tuple[np.ndarray | None, np.ndarray | None]:
    h, wd = hw
    n, f, groups, fg, k, c, fl, run = _stride1_sizes(w3, hw, g, dy)
    # dx either as a stride-1 convolution of dy with the rotated kernel (copies F*kh*kw values
    # per pixel) or as col2im (adds C*kh*kw values per pixel): the convolution moves no more
    # values only while F <= C, and only then wins (docs/performance.md)
    rotate = f <= c
    dx = dyw = None
    if not need_dx:
        rotate = True  # nothing to scatter
    elif rotate:
        gt = _rotated_window(g, hw)
        wt = w.reshape(groups, fg, c // groups, g.kh, g.kw)[..., ::-1, ::-1].transpose(0, 2, 1, 3, 4)
        flt = flat(gt, g.ho, g.wo)
        dyf = pad_flat(dy, gt, flt)
        dx, _ = _conv_wide(dyf, np.ascontiguousarray(wt).reshape(groups, c // groups, -1), gt, flt)
        start = _wide_start(gt, flt, fl)
        if start is not None:
            dyw = dyf[:, :, start:start + run]
    else:
        w3t = w3.transpose(0, 2, 1)
        dxf = np.zeros((n, c, fl.size), dtype=dy.dtype)

    if rotate and not need_dw:
        return dx, None  # dx came from the rotated convolution: nothing left to do
    if dyw is None:
        dyw = wide_grad(dy, g, fl)  # zero junk columns, so they contribute nothing
    dyw4 = dyw.reshape(n, groups, fg, run)
    nb = n if cols is not None else chunk_size(c * g.kh * g.kw * run * dy.itemsize, n)

    def work(a: int, b: int) -> np.ndarray:
        part = np.zeros((groups, k, fg), dtype=dy.dtype)
        buf = (None if cols is not None or not need_dw
               else np.empty((min(nb, b - a), c, g.kh, g.kw, run), dtype=dy.dtype))
        for n0 in range(a, b, nb):
            m = min(b, n0 + nb) - n0
            dyc = dyw4[n0:n0 + m]
            if need_dw:
                chunk = cols if buf is None else im2col_wide(xf[n0:n0 + m], g, fl, buf[:m])
                part += np.matmul(chunk.reshape(m, groups, k, run), dyc.transpose(0, 1, 3, 2)).sum(axis=0)
            if not rotate:
                dcols = np.matmul(w3t, dyc).reshape(m, c, g.kh, g.kw, run)
                col2im_wide_add(dcols, g, fl, dxf[n0:n0 + m])
        return part

    dwt = _ordered_sum(work, n, nb, n * c * g.kh * g.kw * run * dy.itemsize, (groups, k, fg), dy.dtype)
    if not rotate:
        dx = image_rows(dxf, g, fl, h, wd)
    return dx, (dwt.transpose(0, 2, 1) if need_dw else None)


def _conv_strided(xp: np.ndarray, w3: np.ndarray, g: Window, keep: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """General convolution of the padded batch: (N, F, Ho, Wo) and kept columns (or None)."""
    n, c = xp.shape[:2]
    groups, fg, k = w3.shape
    cells = g.ho * g.wo
    y = np.empty((n, groups * fg, g.ho, g.wo), dtype=xp.dtype)
    y4 = y.reshape(n, groups, fg, cells)
    nb = chunk_size(c * g.kh * g.kw * cells * xp.itemsize, n)
    kept = []

    def work(a: int, b: int) -> None:
        buf = np.empty((min(nb, b - a), c, g.kh, g.kw, g.ho, g.wo), dtype=xp.dtype)
        for n0 in range(a, b, nb):
            m = min(b, n0 + nb) - n0
            chunk = im2col(xp[n0:n0 + m], g, buf[:m])
            np.matmul(w3, chunk.reshape(m, groups, k, cells), out=y4[n0:n0 + m])
        if nb == n and keep:
            kept.append(buf)

    col_bytes = n * c * g.kh * g.kw * cells * xp.itemsize
    parallel.run(work, parallel.split(n, nb, col_bytes, "conv"), col_bytes, "conv")
    return y, (kept[0] if kept else None)


def _backward_strided(w3: np.ndarray, xp: np.ndarray | None, cols: np.ndarray | None, hw: tuple[int, int], g: Window,
                      dy: np.ndarray, need_dx: bool = True, need_dw: bool = True
                      ) -> tuple[np.ndarray | None, np.ndarray | None]:
    n, c = xp.shape[:2]
    groups, fg, k = w3.shape
    cells = g.ho * g.wo
    w3t = w3.transpose(0, 2, 1)
    dy4 = dy.reshape(n, groups, fg, cells)
    dxp = np.zeros(xp.shape, dtype=dy.dtype) if need_dx else None
    nb = n if cols is not None else chunk_size(c * g.kh * g.kw * cells * dy.itemsize, n)

    def work(a: int, b: int) -> np.ndarray:
        part = np.zeros((groups, k, fg), dtype=dy.dtype)
        buf = (None if cols is not None or not need_dw
               else np.empty((min(nb, b - a), c, g.kh, g.kw, g.ho, g.wo), dtype=dy.dtype))
        for n0 in range(a, b, nb):
            m = min(b, n0 + nb) - n0
            dyc = dy4[n0:n0 + m]
            if need_dw:
                chunk = cols[n0:n0 + m] if buf is None else im2col(xp[n0:n0 + m], g, buf[:m])
                part += np.matmul(chunk.reshape(m, groups, k, cells), dyc.transpose(0, 1, 3, 2)).sum(axis=0)
            if need_dx:
                # strides > 1 leave gaps between windows, so scatter the column gradient back (col2im)
                dcols = np.matmul(w3t, dyc).reshape(m, c, g.kh, g.kw, g.ho, g.wo)
                col2im_add(dcols, g, dxp[n0:n0 + m])
        return part

    dwt = _ordered_sum(work, n, nb, n * c * g.kh * g.kw * cells * dy.itemsize, (groups, k, fg), dy.dtype)
    return (unpad(dxp, g, *hw) if need_dx else None), (dwt.transpose(0, 2, 1) if need_dw else None)


def _ordered_sum(work: Callable[[int, int], np.ndarray], n: int, nb: int, col_bytes: int, shape: tuple[int, ...],
                 dtype: np.dtype) -> np.ndarray:
    """Run ``work(a, b) -> partial`` over fixed sample ranges and add the partials in range order.

    The ranges (``parallel.REDUCE_PARTS`` of them) do not depend on the thread count,
    so the weight gradient is bit-identical with 1 thread or many.
    """
    parts = parallel.run(work, parallel.spans(n, nb, parallel.REDUCE_PARTS), col_bytes, "conv")
    total = np.zeros(shape, dtype=dtype)
    for part in parts:
        total += part
    return total


@hookimpl
def layerkit_register_layers(register: Callable[[type[Layer]], None]) -> None:
    register(Conv2D)
