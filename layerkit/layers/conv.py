"""2-D convolution (cross-correlation, as every framework computes it).

Forward is im2col + one batched GEMM per chunk of samples: ``W (g, F/g, K)``
times ``cols (n, g, K, Ho*Wo)`` lands directly in ``(n, F, Ho, Wo)``, so the
result is NCHW without a transpose. Large layers are memory bound on the
column buffer, so the batch is processed in chunks whose columns stay in
cache; backward then rebuilds the columns chunk by chunk instead of keeping
them. Small layers (the whole batch in one chunk) keep their columns.

The weight gradient is computed transposed, ``cols (K, Ho*Wo) @ dy^T``, which
OpenBLAS runs ~1.5x faster than ``dy @ cols^T`` for these shapes (a short M
with a long inner dimension is its slow case).

Stride-1 layers (nearly all of them) use the "wide" layout of ``layerkit.kernels.windows``
(long contiguous copies) and compute dx as a second stride-1 convolution with
the rotated kernel, which is one GEMM instead of a GEMM plus kh*kw scattered
adds. Strided layers use plain im2col and col2im.
"""

from __future__ import annotations

import numpy as np

from layerkit import hookimpl
from layerkit.parallel import threads as parallel
from layerkit.errors import ShapeError
from layerkit.nn.initializers import INITIALIZERS
from layerkit.nn.layer import Coupling, Example, Layer, ParamSpec, require_rank
from layerkit.kernels.windows import (Window, chunk_size, col2im_add, col2im_wide_add, im2col, im2col_wide, int_or_pair_schema, pad, pad_flat, unpad,
                       window)


class Conv2D(Layer):
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
    def _window(self, hw):
        return window(hw, self.kernel_size, self.stride, self.padding, self.dilation)

    def output_shape(self, input_shape):
        require_rank(input_shape, 3, "(channels, height, width)")
        c, h, w = input_shape
        if c % self.groups:
            raise ShapeError(f"channels {c} not divisible by groups {self.groups}")
        if self.filters % self.groups:
            raise ShapeError(f"filters {self.filters} not divisible by groups {self.groups}")
        g = self._window((h, w))
        return (self.filters, g.ho, g.wo)

    def param_specs(self, input_shape):
        c = input_shape[0]
        g = self._window(input_shape[1:])
        fan_in = c // self.groups * g.kh * g.kw
        fan_out = self.filters // self.groups * g.kh * g.kw
        specs = {"W": ParamSpec((self.filters, c // self.groups, g.kh, g.kw), self.init,
                                fan_in=fan_in, fan_out=fan_out, decay=True)}
        if self.use_bias:
            specs["b"] = ParamSpec((self.filters,), "zeros")
        return specs

    def flops(self, input_shape):
        c = input_shape[0]
        g = self._window(input_shape[1:])
        outputs = self.filters * g.ho * g.wo
        return 2 * outputs * (c // self.groups) * g.kh * g.kw + (outputs if self.use_bias else 0)

    def workspace_bytes(self, input_shape, batch_size):
        """Float32 scratch for a batch beyond the outputs: im2col columns and the padded copy, one
        sample's at least per worker thread (chunks are cache-sized but never under one sample)."""
        c, h, w = input_shape
        g = self._window((h, w))
        hp, wp = g.padded_hw(h, w)
        cols = c * g.kh * g.kw * g.ho * max(wp, g.wo) * 4
        return cols * min(batch_size, parallel.num_threads()) + c * (hp + 1) * wp * 4 * batch_size

    # -- compute ----------------------------------------------------------------
    def _weights(self, params):
        w = params["W"]
        return w.reshape(self.groups, self.filters // self.groups, -1)

    def forward(self, params, x, training=False, rng=None, state=None):
        return self._forward(params, x, params["b"] if self.use_bias else None, keep=True)

    infer_fresh = True

    def infer(self, params, x, state=None):
        # no columns kept for a backward; the bias may come from a folded batch norm
        return self._forward(params, x, params.get("b"), keep=False)[0]

    def fold_affine(self, params, scale, shift):
        w = params["W"] * scale.reshape(-1, 1, 1, 1)
        b = shift + params["b"] * scale if "b" in params else shift.copy()
        return {"W": w.astype(params["W"].dtype, copy=False), "b": b.astype(params["W"].dtype, copy=False)}

    def _forward(self, params, x, b, keep):
        n, c, h, w = x.shape
        g = self._window((h, w))
        w3 = self._weights(params)
        bias = None if b is None else b.reshape(-1, 1, 1)
        if _wide_ok(g):
            xf = pad_flat(x, g)
            y, cols = _conv_wide(xf, w3, g, g.padded_hw(h, w)[1], bias, keep)
            return y, ("wide", None if cols is not None else xf, cols, (h, w), g)
        xp = pad(x, g)
        y, cols = _conv_strided(xp, w3, g, keep)
        if bias is not None:
            y += bias
        return y, ("strided", xp, cols, (h, w), g)

    def backward(self, params, cache, dy):
        return self._backward(params, cache, dy, need_dx=True)

    def to_onnx(self, g, x, input_shape, params, state):
        w = self._window(input_shape[1:])  # 'same' resolved to explicit (possibly uneven) pads
        inputs = [x, g.const(params["W"], "W")] + ([g.const(params["b"], "b")] if self.use_bias else [])
        return g.op("Conv", inputs, kernel_shape=[w.kh, w.kw], strides=[w.sh, w.sw], dilations=[w.dh, w.dw],
                    pads=[w.pad_top, w.pad_left, w.pad_bottom, w.pad_right], group=int(self.groups))

    def backward_params(self, params, cache, dy):
        """Only the parameter gradients: the model calls this when the input is the data."""
        return self._backward(params, cache, dy, need_dx=False)[1]

    def _backward(self, params, cache, dy, need_dx):
        path, xsrc, cols, (h, w), g = cache
        w3 = self._weights(params)
        if path == "wide":
            dx, dw = _backward_wide(params["W"], w3, xsrc, cols, (h, w), g, dy, need_dx)
        else:
            dx, dw = _backward_strided(w3, xsrc, cols, (h, w), g, dy, need_dx)
        grads = {"W": dw.reshape(params["W"].shape)}
        if self.use_bias:
            grads["b"] = dy.sum(axis=(0, 2, 3))
        return dx, grads


def _wide_ok(g: Window) -> bool:
    """Stride 1 and padding below the dilated kernel: then dx is itself a stride-1 convolution."""
    keh, kew = (g.kh - 1) * g.dh + 1, (g.kw - 1) * g.dw + 1
    return g.sh == g.sw == 1 and max(g.pad_top, g.pad_bottom) < keh and max(g.pad_left, g.pad_right) < kew


def _conv_wide(xf, w3, g, wp, bias=None, keep=True):
    """Stride-1 convolution of the flat padded batch ``xf`` (N, C, (Hp + 1) * Wp) on the wide grid.

    Returns the cropped (N, F, Ho, Wo) result and the columns when ``keep`` and the whole
    batch fits one chunk (else None). Each
    chunk's GEMM lands in a cache-sized wide scratch and is cropped (and biased) from
    there, so the wide result with its junk columns never goes out to memory.
    """
    n, c = xf.shape[:2]
    groups, fg, k = w3.shape
    run = g.ho * wp
    y = np.empty((n, groups * fg, g.ho, g.wo), dtype=xf.dtype)
    nb = chunk_size(c * g.kh * g.kw * run * xf.itemsize, n)
    kept = []

    def work(a, b):
        # scratch per task: each worker thread fills its own
        buf = np.empty((min(nb, b - a), c, g.kh, g.kw, run), dtype=xf.dtype)
        yw = np.empty((len(buf), groups, fg, run), dtype=xf.dtype)
        for n0 in range(a, b, nb):
            m = min(b, n0 + nb) - n0
            chunk = im2col_wide(xf[n0:n0 + m], g, wp, buf[:m])
            np.matmul(w3, chunk.reshape(m, groups, k, run), out=yw[:m])
            wide = yw[:m].reshape(m, groups * fg, g.ho, wp)[..., :g.wo]
            if bias is None:
                np.copyto(y[n0:n0 + m], wide)
            else:
                np.add(wide, bias, out=y[n0:n0 + m])
        if nb == n and keep:
            kept.append(buf)

    col_bytes = n * c * g.kh * g.kw * run * xf.itemsize
    parallel.run(work, parallel.split(n, nb, col_bytes, "conv"), col_bytes, "conv")
    return y, (kept[0] if kept else None)


def _backward_wide(w, w3, xf, cols, hw, g, dy, need_dx=True):
    h, wd = hw
    n, f = dy.shape[:2]
    groups, fg, k = w3.shape
    c = k // (g.kh * g.kw) * groups
    hp, wp = g.padded_hw(h, wd)
    run = g.ho * wp
    # dx either as a stride-1 convolution of dy with the rotated kernel (copies F*kh*kw values
    # per pixel) or as col2im (adds C*kh*kw values per pixel); measured, the convolution wins
    # only while F <= C (LeNet's 8->16 conv: 2.4 ms with col2im, 3.8 ms rotated)
    rotate = f <= c
    dx = dyw = None
    if not need_dx:
        rotate = True  # nothing to scatter
    elif rotate:
        keh, kew = (g.kh - 1) * g.dh + 1, (g.kw - 1) * g.dw + 1
        gt = Window(g.kh, g.kw, 1, 1, g.dh, g.dw, keh - 1 - g.pad_top, keh - 1 - g.pad_bottom,
                    kew - 1 - g.pad_left, kew - 1 - g.pad_right, h, wd)
        wt = w.reshape(groups, fg, c // groups, g.kh, g.kw)[..., ::-1, ::-1].transpose(0, 2, 1, 3, 4)
        dyf = pad_flat(dy, gt)
        wpt = gt.padded_hw(g.ho, g.wo)[1]
        dx, _ = _conv_wide(dyf, np.ascontiguousarray(wt).reshape(groups, c // groups, -1), gt, wpt)
        if wpt == wp:
            # "same" padding: the padded dy, read from its first real pixel, is already dy on
            # the wide grid with zero junk columns (they fall on the right and left padding)
            start = gt.pad_top * wp + gt.pad_left
            dyw = dyf[:, :, start:start + run]
    else:
        w3t = w3.transpose(0, 2, 1)
        dxf = np.zeros((n, c, (hp + 1) * wp), dtype=dy.dtype)

    if dyw is None:
        # dy on the wide grid with zero junk columns, so they contribute nothing
        dyw = np.zeros((n, f, g.ho, wp), dtype=dy.dtype)
        dyw[..., :g.wo] = dy
        dyw = dyw.reshape(n, f, run)
    dyw4 = dyw.reshape(n, groups, fg, run)
    nb = n if cols is not None else chunk_size(c * g.kh * g.kw * run * dy.itemsize, n)

    def work(a, b):
        part = np.zeros((groups, k, fg), dtype=dy.dtype)
        buf = None if cols is not None else np.empty((min(nb, b - a), c, g.kh, g.kw, run), dtype=dy.dtype)
        for n0 in range(a, b, nb):
            m = min(b, n0 + nb) - n0
            chunk = cols if buf is None else im2col_wide(xf[n0:n0 + m], g, wp, buf[:m])
            dyc = dyw4[n0:n0 + m]
            part += np.matmul(chunk.reshape(m, groups, k, run), dyc.transpose(0, 1, 3, 2)).sum(axis=0)
            if not rotate:
                dcols = np.matmul(w3t, dyc).reshape(m, c, g.kh, g.kw, run)
                col2im_wide_add(dcols, g, wp, dxf[n0:n0 + m])
        return part

    dwt = _ordered_sum(work, n, nb, n * c * g.kh * g.kw * run * dy.itemsize, (groups, k, fg), dy.dtype)
    if not rotate:
        dx = dxf.reshape(n, c, hp + 1, wp)[:, :, g.pad_top:g.pad_top + h, g.pad_left:g.pad_left + wd]
    return dx, dwt.transpose(0, 2, 1)


def _conv_strided(xp, w3, g, keep=True):
    """General convolution of the padded batch: (N, F, Ho, Wo) and kept columns (or None)."""
    n, c = xp.shape[:2]
    groups, fg, k = w3.shape
    cells = g.ho * g.wo
    y = np.empty((n, groups * fg, g.ho, g.wo), dtype=xp.dtype)
    y4 = y.reshape(n, groups, fg, cells)
    nb = chunk_size(c * g.kh * g.kw * cells * xp.itemsize, n)
    kept = []

    def work(a, b):
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


def _backward_strided(w3, xp, cols, hw, g, dy, need_dx=True):
    n, c = xp.shape[:2]
    groups, fg, k = w3.shape
    cells = g.ho * g.wo
    w3t = w3.transpose(0, 2, 1)
    dy4 = dy.reshape(n, groups, fg, cells)
    dxp = np.zeros(xp.shape, dtype=dy.dtype) if need_dx else None
    nb = n if cols is not None else chunk_size(c * g.kh * g.kw * cells * dy.itemsize, n)

    def work(a, b):
        part = np.zeros((groups, k, fg), dtype=dy.dtype)
        buf = None if cols is not None else np.empty((min(nb, b - a), c, g.kh, g.kw, g.ho, g.wo), dtype=dy.dtype)
        for n0 in range(a, b, nb):
            m = min(b, n0 + nb) - n0
            chunk = cols[n0:n0 + m] if buf is None else im2col(xp[n0:n0 + m], g, buf[:m])
            dyc = dy4[n0:n0 + m]
            part += np.matmul(chunk.reshape(m, groups, k, cells), dyc.transpose(0, 1, 3, 2)).sum(axis=0)
            if need_dx:
                # strides > 1 leave gaps between windows, so scatter the column gradient back (col2im)
                dcols = np.matmul(w3t, dyc).reshape(m, c, g.kh, g.kw, g.ho, g.wo)
                col2im_add(dcols, g, dxp[n0:n0 + m])
        return part

    dwt = _ordered_sum(work, n, nb, n * c * g.kh * g.kw * cells * dy.itemsize, (groups, k, fg), dy.dtype)
    return (unpad(dxp, g, *hw) if need_dx else None), dwt.transpose(0, 2, 1)


def _ordered_sum(work, n, nb, col_bytes, shape, dtype):
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
def layerkit_register_layers(register):
    register(Conv2D)
