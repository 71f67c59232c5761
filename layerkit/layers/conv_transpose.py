"""2-D transposed convolution (the gradient of a convolution with respect to its input), the usual
learnable upsampling of autoencoders and segmentation nets.

With the geometry ``g`` of the convolution that maps the output (H', W') back to the input (H, W)
(same kernel, stride, padding, dilation), forward is that convolution's input gradient: one GEMM
``W^T x`` to columns (C_out, kh, kw, H, W) per pixel, then col2im into the padded output. Backward
is the convolution itself: im2col of the padded dy, then ``W cols`` for dx and ``x cols^T`` for dW.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from layerkit import hookimpl
from layerkit.errors import ShapeError
from layerkit.kernels.windows import Window, col2im_add, im2col, pad, pair, unpad, window
from layerkit.nn.paramschema import int_or_pair_schema
from layerkit.nn.initializers import INITIALIZERS
from layerkit.nn.capabilities import InputGradientOnly
from layerkit.nn.layer import Coupling, Example, Layer, Params, ParamSpec, require_rank, Shape


class Conv2DTranspose(InputGradientOnly, Layer):
    """Transposed 2-D convolution: the input gradient of a convolution, as a layer (upsampling)."""

    type = "conv2d_transpose"
    sample_coupling = Coupling.NONE
    description = ("2-D transposed convolution over a (C, H, W) input, as PyTorch's ConvTranspose2d: output "
                   "size (H - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1. W has "
                   "PyTorch's shape (C_in, filters, kh, kw); `padding` crops the full output, `output_padding` "
                   "adds rows/columns at the bottom/right (it must be smaller than the stride or the dilation). "
                   "No groups.")
    params_schema = {
        "type": "object",
        "properties": {
            "filters": {"type": "integer", "minimum": 1, "description": "number of output channels"},
            "kernel_size": int_or_pair_schema(1, "window size: an integer or [kh, kw]"),
            "stride": int_or_pair_schema(1, "upsampling step: an integer or [sh, sw]", 1),
            "padding": int_or_pair_schema(0, "rows/columns cropped from each side of the full output", 0),
            "output_padding": int_or_pair_schema(0, "extra rows/columns at the bottom/right of the output, to "
                                                    "pick one of the sizes a strided convolution maps "
                                                    "to the same input size", 0),
            "dilation": int_or_pair_schema(1, "spacing between kernel taps: an integer or [dh, dw]", 1),
            "use_bias": {"type": "boolean", "default": True, "description": "add a learnable bias per filter"},
            "init": {"enum": list(INITIALIZERS), "default": "he_normal", "description": "weight initializer"},
        },
        "required": ["filters", "kernel_size"],
        "additionalProperties": False,
    }
    examples = (
        Example({"filters": 2, "kernel_size": 3}, (3, 4, 4), "stride 1: a 'full' convolution"),
        Example({"filters": 3, "kernel_size": 2, "stride": 2}, (2, 3, 4), "2x upsampling"),
        Example({"filters": 2, "kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1}, (2, 3, 3),
                "PyTorch's 2x upsampling with padding 1 and output_padding 1"),
        Example({"filters": 2, "kernel_size": [3, 2], "stride": [2, 1], "padding": [1, 0], "dilation": [1, 2],
                 "use_bias": False}, (3, 3, 4), "rectangular, dilated, no bias"),
        Example({"filters": 2, "kernel_size": 2, "dilation": 2, "output_padding": 1}, (2, 3, 4),
                "output_padding at the stride, below the dilation (as PyTorch allows)"),
        Example({"filters": 1, "kernel_size": 2, "dilation": 3, "padding": 1, "output_padding": [2, 1]}, (1, 3, 4),
                "output_padding above the padding and the stride"),
    )

    # -- static ----------------------------------------------------------------
    def _geometry(self, hw: Sequence[int]) -> tuple[tuple[int, int], Window]:
        """(output (H', W'), the window of the matching convolution over the output)."""
        h, w = hw
        (kh, kw), (sh, sw) = pair(self.kernel_size, "kernel_size"), pair(self.stride, "stride")
        (ph, pw), (dh, dw) = pair(self.padding, "padding"), pair(self.dilation, "dilation")
        oph, opw = pair(self.output_padding, "output_padding")
        if not (oph < max(sh, dh) and opw < max(sw, dw)):
            raise ShapeError(f"output_padding {[oph, opw]} must be smaller than the stride {[sh, sw]} or the "
                             f"dilation {[dh, dw]}")
        ho = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
        wo = (w - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
        if ho < 1 or wo < 1:
            raise ShapeError(f"padding {[ph, pw]} crops the whole {h}x{w} -> {ho}x{wo} output")
        # the convolution over the output has one window per input pixel: output_padding at or above
        # the stride (allowed below the dilation) leaves rows no input pixel reaches, and the window
        # count computed from the output size would count them as well
        g = window((ho, wo), (kh, kw), (sh, sw), (ph, pw), (dh, dw))._replace(ho=h, wo=w)
        return (ho, wo), g

    def output_shape(self, input_shape: Shape) -> Shape:
        require_rank(input_shape, 3, "(channels, height, width)")
        (ho, wo), _ = self._geometry(input_shape[1:])
        return (self.filters, ho, wo)

    def param_specs(self, input_shape: Shape) -> dict[str, ParamSpec]:
        c = input_shape[0]
        kh, kw = pair(self.kernel_size, "kernel_size")
        # fans as PyTorch computes them for this weight: dim 1 (filters) times the kernel is the fan-in
        specs = {"W": ParamSpec((c, self.filters, kh, kw), self.init, fan_in=self.filters * kh * kw,
                                fan_out=c * kh * kw, decay=True)}
        if self.use_bias:
            specs["b"] = ParamSpec((self.filters,), "zeros")
        return specs

    def flops(self, input_shape: Shape) -> int:
        c, h, w = input_shape
        kh, kw = pair(self.kernel_size, "kernel_size")
        (ho, wo), _ = self._geometry((h, w))
        return 2 * c * self.filters * kh * kw * h * w + (self.filters * ho * wo if self.use_bias else 0)

    # -- compute ----------------------------------------------------------------
    def workspace_bytes(self, input_shape: Shape, batch_size: int) -> int:
        """Float32 scratch for a batch: the (F, kh, kw, H, W) columns of every sample and the padded output."""
        c, h, w = input_shape
        (ho, wo), g = self._geometry((h, w))
        hp, wp = g.padded_hw(ho, wo)
        return (self.filters * g.kh * g.kw * h * w + self.filters * hp * wp) * 4 * batch_size

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        # ONNX's ConvTranspose is PyTorch's: the same weight layout, padding and output_padding
        (kh, kw), (sh, sw) = pair(self.kernel_size, "kernel_size"), pair(self.stride, "stride")
        (ph, pw), (dh, dw) = pair(self.padding, "padding"), pair(self.dilation, "dilation")
        oph, opw = pair(self.output_padding, "output_padding")
        attrs = {"kernel_shape": [kh, kw], "strides": [sh, sw], "dilations": [dh, dw]}
        if oph < sh and opw < sw:
            inputs = [x, g.const(params["W"], "W")] + ([g.const(params["b"], "b")] if self.use_bias else [])
            return g.op("ConvTranspose", inputs, pads=[ph, pw, ph, pw], output_padding=[oph, opw], **attrs)
        # onnxruntime refuses output_padding at or above the stride: crop less at the bottom/right
        # instead, and where output_padding exceeds the padding, add the rows no input reaches as zeros
        y = g.op("ConvTranspose", [x, g.const(params["W"], "W")], pads=[ph, pw, max(ph - oph, 0), max(pw - opw, 0)],
                 **attrs)
        if oph > ph or opw > pw:
            y = g.op("Pad", [y, g.const([0, 0, 0, 0, 0, 0, max(oph - ph, 0), max(opw - pw, 0)], "pads", np.int64)])
        if self.use_bias:
            y = g.op("Add", [y, g.const(params["b"].reshape(-1, 1, 1), "b")])
        return y

    def forward(self, params: Params, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        n, c, h, w = x.shape
        (ho, wo), g = self._geometry((h, w))
        wmat = params["W"].reshape(c, -1)  # (C_in, F * kh * kw)
        cols = np.matmul(wmat.T, x.reshape(n, c, h * w))  # (N, F*kh*kw, H*W)
        yp = np.zeros((n, self.filters, *g.padded_hw(ho, wo)), dtype=x.dtype)
        col2im_add(cols.reshape(n, self.filters, g.kh, g.kw, h, w), g, yp)
        y = np.ascontiguousarray(unpad(yp, g, ho, wo))
        if self.use_bias:
            y += params["b"].reshape(-1, 1, 1)
        return y, x

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        return self._backward(params, cache, dy, True)

    def backward_params(self, params: Params, cache: Any, dy: np.ndarray) -> dict[str, np.ndarray]:
        """Only the parameter gradients: the model calls this when the input is the data."""
        return self._backward(params, cache, dy, False)[1]

    def backward_input(self, params: Params, cache: Any, dy: np.ndarray) -> np.ndarray:
        """Only the input gradient: the model calls this for a frozen layer (no GEMM for dW)."""
        return self._backward(params, cache, dy, True, need_dw=False)[0]

    def _backward(self, params: Params, x: np.ndarray, dy: np.ndarray, need_dx: bool, need_dw: bool = True
                  ) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        n, c, h, w = x.shape
        (ho, wo), g = self._geometry((h, w))
        cols = im2col(pad(dy, g), g, np.empty((n, self.filters, g.kh, g.kw, h, w), dtype=dy.dtype))
        cols = cols.reshape(n, -1, h * w)  # (N, F*kh*kw, H*W)
        grads: dict[str, np.ndarray] = {}
        if need_dw:
            x3 = x.reshape(n, c, h * w)
            dw = np.matmul(x3, cols.transpose(0, 2, 1)).sum(axis=0)  # (C_in, F*kh*kw)
            grads["W"] = dw.reshape(params["W"].shape)
            if self.use_bias:
                grads["b"] = dy.sum(axis=(0, 2, 3))
        dx = np.matmul(params["W"].reshape(c, -1), cols).reshape(x.shape) if need_dx else None
        return dx, grads


@hookimpl
def layerkit_register_layers(register: Callable[[type[Layer]], None]) -> None:
    register(Conv2DTranspose)
