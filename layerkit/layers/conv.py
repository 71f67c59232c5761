"""2-D convolution (cross-correlation, as every framework computes it).

Forward is im2col + one batched GEMM per chunk of samples: ``W (g, F/g, K)``
times ``cols (n, g, K, Ho*Wo)`` lands directly in ``(n, F, Ho, Wo)``, so the
result is NCHW without a transpose. Large layers are memory bound on the
column buffer, so the batch is processed in chunks whose columns stay in
cache; backward then rebuilds the columns chunk by chunk instead of keeping
them. Small layers (the whole batch in one chunk) keep their columns.
"""

from __future__ import annotations

import numpy as np

from .. import hookimpl
from ..errors import ShapeError
from ..initializers import INITIALIZERS
from ..layer import Example, Layer, ParamSpec, require_rank
from ._windows import chunk_size, col2im_add, im2col, int_or_pair_schema, pad, unpad, window


class Conv2D(Layer):
    type = "conv2d"
    description = ("2-D convolution over a (C, H, W) input: stride, padding ('same'/'valid'/explicit), "
                   "dilation and grouped / depthwise (groups = channels) variants.")
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

    # -- compute ----------------------------------------------------------------
    def forward(self, params, x, training=False, rng=None, state=None):
        n, c, h, w = x.shape
        g = self._window((h, w))
        groups, f = self.groups, self.filters
        k = c // groups * g.kh * g.kw
        cells = g.ho * g.wo
        w3 = params["W"].reshape(groups, f // groups, k)
        y = np.empty((n, f, g.ho, g.wo), dtype=x.dtype)
        y4 = y.reshape(n, groups, f // groups, cells)

        pointwise = g.kh == g.kw == 1 and g.sh == g.sw == 1 and not g.padded
        if pointwise:  # a 1x1 convolution's columns are the input itself
            xp = np.ascontiguousarray(x)
            cols = xp.reshape(n, c, 1, 1, h, w)
            np.matmul(w3, cols.reshape(n, groups, k, cells), out=y4)
        else:
            xp = pad(x, g)
            nb = chunk_size(c * g.kh * g.kw * cells * x.itemsize, n)
            buf = np.empty((nb, c, g.kh, g.kw, g.ho, g.wo), dtype=x.dtype)
            for n0 in range(0, n, nb):
                n1 = min(n, n0 + nb)
                chunk = im2col(xp[n0:n1], g, buf[:n1 - n0])
                np.matmul(w3, chunk.reshape(n1 - n0, groups, k, cells), out=y4[n0:n1])
            cols = buf if nb == n else None
        if self.use_bias:
            y += params["b"].reshape(f, 1, 1)
        return y, (xp, (h, w), g, cols)

    def backward(self, params, cache, dy):
        xp, (h, w), g, cols = cache
        n, c = xp.shape[:2]
        groups, f = self.groups, self.filters
        k = c // groups * g.kh * g.kw
        cells = g.ho * g.wo
        w3 = params["W"].reshape(groups, f // groups, k)
        w3t = w3.transpose(0, 2, 1)
        dy4 = dy.reshape(n, groups, f // groups, cells)
        dw = np.zeros_like(w3, dtype=dy.dtype)
        dxp = np.zeros(xp.shape, dtype=dy.dtype)

        if cols is not None:
            nb, buf = n, None
        else:
            nb = chunk_size(c * g.kh * g.kw * cells * dy.itemsize, n)
            buf = np.empty((nb, c, g.kh, g.kw, g.ho, g.wo), dtype=dy.dtype)
        for n0 in range(0, n, nb):
            n1 = min(n, n0 + nb)
            m = n1 - n0
            chunk = cols[n0:n1] if buf is None else im2col(xp[n0:n1], g, buf[:m])
            chunk4 = chunk.reshape(m, groups, k, cells)
            dyc = dy4[n0:n1]
            dw += np.matmul(dyc, chunk4.transpose(0, 1, 3, 2)).sum(axis=0)
            dcols = np.matmul(w3t, dyc).reshape(m, c, g.kh, g.kw, g.ho, g.wo)
            col2im_add(dcols, g, dxp[n0:n1])

        grads = {"W": dw.reshape(params["W"].shape)}
        if self.use_bias:
            grads["b"] = dy.sum(axis=(0, 2, 3))
        return unpad(dxp, g, h, w), grads


@hookimpl
def layerkit_register_layers(register):
    register(Conv2D)
