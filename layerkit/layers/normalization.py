"""Batch normalisation, layer normalisation and AlexNet's local response normalisation."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from layerkit import hookimpl
from layerkit.errors import ShapeError
from layerkit.nn.capabilities import (AffineInference, FreshGradient, FreshInferOutput, InplaceBackward,
                                       InplaceInfer)
from layerkit.kernels.select import kernel
from layerkit.nn.layer import Coupling, Example, Layer, Params, ParamSpec, require_rank, Shape
from layerkit.parallel import threads as parallel
from layerkit.parallel.collectives import batch_sum, splitting
from layerkit.parallel.chunks import over_chunks


def _stat_axes(x: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Reduction axes and broadcast shape of per-channel statistics for (N, D) or (N, C, H, W)."""
    if x.ndim == 2:
        return (0,), (1, x.shape[1])
    return (0, 2, 3), (1, x.shape[1], 1, 1)


def _channel_sums(a: np.ndarray, b: np.ndarray | None = None, shift: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Per channel: the sum of ``a`` and the sum of ``a * (b - shift)``, as float64.

    With ``b is a`` the shift applies to both factors: the sums of ``a - shift`` and of
    ``(a - shift)**2``. A shift near the channel mean is what keeps float32 moments
    accurate when the mean is large against the spread: E[x^2] - mean^2 over unshifted
    float32 sums loses everything at mean/std = 1000 (relative variance error 2e-3).

    Each (sample, channel) row is reduced in the input dtype by BLAS / einsum in one
    pass, the shifted copy made chunk by chunk in a cache-sized scratch (numpy's
    reduction over axes (0, 2, 3) ran at a tenth of memory speed); only the few row
    totals are combined in float64. (N, D) input is reduced in float64 directly.
    """
    n, c = a.shape[:2]
    both = b is a
    if a.ndim == 4:
        impl = _compiled(a)
        if impl is not None:
            return _compiled_sums(impl, a, b, shift)
    if a.ndim == 2:
        if shift is not None:
            b = b.astype(np.float64) - shift
            if both:
                a = b
        total = a.sum(axis=0, dtype=np.float64)
        dot = None if b is None else np.einsum("nc,nc->c", a, b, dtype=np.float64)
        return total, dot
    a3 = a.reshape(n, c, -1)
    b3 = None if b is None else b.reshape(n, c, -1)
    k3 = None if shift is None else shift.astype(a.dtype).reshape(1, c, 1)
    ones = np.ones(a3.shape[2], dtype=a.dtype)
    rows = np.empty((n, c), dtype=a.dtype)
    rows_dot = None if b is None else np.empty((n, c), dtype=a.dtype)

    # each (sample, channel) row total is computed whole by one thread, and the float64 sum
    # over samples below is the same single pass as without threads: identical results
    def work(slices: list[slice], step: int) -> None:
        tmp = None if k3 is None else np.empty((step, *b3.shape[1:]), dtype=a.dtype)
        for sl in slices:
            bs = b3[sl] if b3 is not None else None
            if k3 is not None:
                bs = np.subtract(bs, k3, out=tmp[:sl.stop - sl.start])
            as_ = bs if both else a3[sl]
            np.matmul(as_, ones, out=rows[sl])
            if b3 is not None:
                np.einsum("ncs,ncs->nc", as_, bs, out=rows_dot[sl])

    over_chunks(a, work, a.nbytes * (1 if b is None else 2))
    total = rows.sum(axis=0, dtype=np.float64)
    dot = None if b is None else rows_dot.sum(axis=0, dtype=np.float64)
    return total, dot


def _compiled(a: np.ndarray) -> Any:
    """The compiled batch_norm kernel for this (N, C, H, W) batch, or None on the numpy path."""
    impl = kernel("batch_norm", a.dtype, a.size)
    return impl if impl.path != "numpy" else None


def _compiled_sums(impl: Any, a: np.ndarray, b: np.ndarray | None, shift: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`_channel_sums` by the compiled kernel, over fixed sample ranges added in order: the same
    result whatever the thread count."""
    def work(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray | None]:
        part = a[lo:hi]  # one view for both factors: the kernel tells the squares case by identity
        return impl.sums(part, part if b is a else (None if b is None else b[lo:hi]), shift)

    parts = parallel.run(work, parallel.spans(len(a), 1, parallel.REDUCE_PARTS), a.nbytes * 2, "pass")
    total = np.sum([p[0] for p in parts], axis=0)
    dot = None if b is None else np.sum([p[1] for p in parts], axis=0)
    return total, dot


def _whole_batch(a: np.ndarray, b: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-channel sums and element count of this shard, summed over the whole batch when
    the batch is split over processes (``layerkit.parallel.processes``); unchanged otherwise."""
    if not splitting():
        return a, b, count
    c = a.size
    summed = batch_sum(np.concatenate([a, b, [float(count)]]))
    return summed[:c], summed[c:2 * c], int(round(summed[-1]))


def _affine(x: np.ndarray, scale: np.ndarray, shift: np.ndarray, bshape: tuple[int, ...], out: np.ndarray | None = None
            ) -> np.ndarray:
    """x * scale + shift per channel, in x's dtype, in two passes over one new array (or ``out``)."""
    scale, shift = scale.astype(x.dtype).reshape(bshape), shift.astype(x.dtype).reshape(bshape)
    if x.ndim == 2 or x.shape[0] < 2:
        y = np.multiply(x, scale, out=out)
        y += shift
        return y
    y = np.empty_like(x) if out is None else out
    impl = _compiled(x)
    if impl is not None:
        def each(lo: int, hi: int) -> None:
            impl.affine(x[lo:hi], scale, shift, y[lo:hi])

        parallel.run(each, parallel.split(len(x), 1, 2 * x.nbytes, "pass"), 2 * x.nbytes, "pass")
        return y

    def work(slices: list[slice], step: int) -> None:
        for sl in slices:
            np.multiply(x[sl], scale, out=y[sl])
            y[sl] += shift

    over_chunks(x, work)
    return y


class BatchNorm(AffineInference, InplaceBackward, FreshGradient, InplaceInfer, FreshInferOutput, Layer):
    """Batch normalisation over the batch (and spatial) axes, per channel, with running statistics."""

    type = "batch_norm"
    description = (
        "Batch normalisation per feature of a (D,) input or per channel of a (C, H, W) input. Training uses "
        "batch statistics (biased variance, as PyTorch) and refuses a batch with one value per channel "
        "(PyTorch's 'Expected more than 1 value per channel'); inference uses the running values. "
        "Differences from PyTorch's BatchNorm1d/2d: `momentum` is the weight of the old running value "
        "(running = momentum * running + (1 - momentum) * batch; PyTorch's momentum=0.1 is 0.9 here), and "
        "running_var tracks the biased batch variance (PyTorch the unbiased one: larger by m/(m-1) for m "
        "values per channel). `affine: false` drops gamma and beta.")
    params_schema = {
        "type": "object",
        "properties": {
            "momentum": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.9,
                         "description": "weight of the old running statistics in each update "
                                        "(PyTorch's momentum is 1 minus this)"},
            "epsilon": {"type": "number", "exclusiveMinimum": 0, "default": 1e-5,
                        "description": "added to the variance before the square root"},
            "affine": {"type": "boolean", "default": True,
                       "description": "learn a per-channel scale gamma and shift beta"},
        },
        "additionalProperties": False,
    }
    examples = (
        Example({}, (4,), "per feature"),
        Example({"momentum": 0.5, "epsilon": 1e-3}, (3, 2, 2), "per channel"),
        Example({"affine": False}, (2, 3, 3), "no learnable scale and shift"),
    )
    # training statistics come from the whole batch through collectives.batch_sum, so the
    # batch may be split over processes
    sample_coupling = Coupling.BATCH_SUMS

    def output_shape(self, input_shape: Shape) -> Shape:
        require_rank(input_shape, (1, 3), "features, or channels x height x width")
        return tuple(input_shape)

    def param_specs(self, input_shape: Shape) -> dict[str, ParamSpec]:
        if not getattr(self, "affine", True):
            return {}
        c = input_shape[0]
        return {"gamma": ParamSpec((c,), "ones"), "beta": ParamSpec((c,), "zeros")}

    def state_specs(self, input_shape: Shape) -> dict[str, ParamSpec]:
        c = input_shape[0]
        return {"running_mean": ParamSpec((c,), "zeros"), "running_var": ParamSpec((c,), "ones")}

    def flops(self, input_shape: Shape) -> int:
        return 8 * int(np.prod(input_shape))

    def _gamma_beta(self, params: Params, c: int) -> tuple[np.ndarray, np.ndarray]:
        if getattr(self, "affine", True):
            return params["gamma"], params["beta"]
        return np.ones(c), np.zeros(c)

    def _running_affine(self, params: Params, state: Mapping[str, np.ndarray] | None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Inference's per-channel (mean, inv_std, scale): float64 statistics, as forward uses them."""
        gamma, _ = self._gamma_beta(params, len(state["running_mean"]))
        mean = state["running_mean"].astype(np.float64)
        inv_std = 1 / np.sqrt(state["running_var"].astype(np.float64) + float(self.epsilon))
        return mean, inv_std, gamma * inv_std

    def infer_inplace(self, params: Params, x: np.ndarray, state: dict[str, np.ndarray] | None = None) -> np.ndarray:
        # predict, where the batch norm could not be folded: scale and shift the model's own array
        mean, _, scale = self._running_affine(params, state)
        _, beta = self._gamma_beta(params, len(mean))
        return _affine(x, scale, beta - mean * scale, _stat_axes(x)[1], out=x)

    def inference_affine(self, params: Params, state: Mapping[str, np.ndarray] | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
        mean, _, scale = self._running_affine(params, state)
        _, beta = self._gamma_beta(params, len(mean))
        return scale, beta - mean * scale

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        # inference form: the per-channel scale and shift the inference pass uses
        scale, shift = self.inference_affine(params, state)
        shape = (-1, 1, 1) if len(input_shape) == 3 else (-1,)
        y = g.op("Mul", [x, g.const(np.asarray(scale).reshape(shape), "scale")])
        return g.op("Add", [y, g.const(np.asarray(shift).reshape(shape), "shift")])

    def forward(self, params: Params, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        _, bshape = _stat_axes(x)
        gamma, beta = self._gamma_beta(params, x.shape[1])
        eps = float(self.epsilon)
        if not training:
            mean, inv_std, scale = self._running_affine(params, state)
            # x is kept only so that gamma has a gradient in inference mode (gradient checks)
            return _affine(x, scale, beta - mean * scale, bshape), (False, (x, mean, inv_std, scale))

        # Moments about a shift near the mean (each channel's mean in the first sample), so
        # that float32 keeps the variance when the mean is large against the spread
        c = x.shape[1]
        shift = (x[0] if x.ndim == 2 else x[0].reshape(c, -1).mean(axis=1, dtype=np.float64)).astype(x.dtype)
        count = x.size // c
        total, squares = _channel_sums(x, x, shift)
        if splitting():
            # other shards used other shifts: exchange plain float64 sums of x and x^2 (the
            # float64 cancellation left in var below is ~1e-16 * (mean/std)^2)
            k = shift.astype(np.float64)
            total, squares = total + count * k, squares + 2 * k * total + count * k * k
            total, squares, m = _whole_batch(total, squares, count)
            mean = total / m
            var = np.maximum(squares / m - mean * mean, 0.0)
        else:
            m = count
            d = total / m
            mean = shift.astype(np.float64) + d
            var = np.maximum(squares / m - d * d, 0.0)
        if m < 2:
            raise ShapeError(f"batch_norm in training needs more than one value per channel, got input of shape "
                             f"{tuple(x.shape)} (as PyTorch: train with batches of 2 or more samples)")
        inv_std = 1 / np.sqrt(var + eps)
        scale = gamma * inv_std
        y = _affine(x, scale, beta - mean * scale, bshape)
        if state:
            momentum = float(self.momentum)
            for name, batch in (("running_mean", mean), ("running_var", var)):
                running = state[name]
                running *= momentum
                running += ((1 - momentum) * batch).astype(running.dtype)
        # x rather than xhat: the previous layer's output is alive anyway, so the cache costs nothing
        return y, (True, (x, mean, inv_std, scale))

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        return self._backward(cache, dy, None)

    def backward_inplace(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self._backward(cache, dy, dy)

    def _backward(self, cache: Any, dy: np.ndarray, out: np.ndarray | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        training, (x, mean, inv_std, scale) = cache
        axes, bshape = _stat_axes(dy)
        # sums about the mean rounded to the data's dtype: xhat is never materialised, and
        # sum(dy * x) - mean * sum(dy) never cancels in float32
        shift = mean.astype(dy.dtype)
        dbeta, dyx = _channel_sums(dy, x, shift)
        offset = mean - shift.astype(np.float64)
        dyx -= offset * dbeta  # sum(dy * (x - mean))
        dgamma = inv_std * dyx
        # this shard's share of the parameter gradients: the shards' shares are added later
        grads = {"gamma": dgamma.astype(dy.dtype), "beta": dbeta.astype(dy.dtype)} \
            if getattr(self, "affine", True) else {}
        if not training:
            return np.multiply(dy, scale.astype(dy.dtype).reshape(bshape), out=out), grads
        # dx needs the sums over the whole batch (centred on the common batch mean, so the
        # shards' partials add up)
        dbeta_all, dyx_all, m = _whole_batch(dbeta, dyx, dy.size // dy.shape[1])
        if dbeta_all is not dbeta:
            dbeta, dgamma = dbeta_all, inv_std * dyx_all
        # dx = scale * (dy - mean(dy) - xhat * mean(dy * xhat)) = scale*dy + k*(x - shift) + c0 per channel
        k = -scale * inv_std * dgamma / m
        c0 = -scale * dbeta / m - k * offset
        def cast(v: np.ndarray) -> np.ndarray:
            return v.astype(dy.dtype).reshape(bshape)

        if out is None:
            out = np.empty_like(dy)
        impl = _compiled(dy) if dy.ndim == 4 else None
        if impl is not None:
            def each(lo: int, hi: int) -> None:
                impl.input_grad(dy[lo:hi], x[lo:hi], scale, k, c0, shift, out[lo:hi])

            parallel.run(each, parallel.split(len(dy), 1, 3 * dy.nbytes, "pass"), 3 * dy.nbytes, "pass")
            return out, grads
        scale, k, c0, shift = cast(scale), cast(k), cast(c0), shift.reshape(bshape)
        # chunk by chunk, so k*(x - shift) + c0 lives in a cache-sized temporary

        def work(slices: list[slice], step: int) -> None:
            tmp = np.empty((step, *dy.shape[1:]), dtype=dy.dtype)
            for sl in slices:
                t = tmp[:sl.stop - sl.start]
                np.subtract(x[sl], shift, out=t)
                t *= k
                t += c0
                o = out[sl]
                np.multiply(dy[sl], scale, out=o)
                o += t

        over_chunks(dy, work, 2 * dy.nbytes)
        return out, grads


class LocalResponseNorm(Layer):
    """AlexNet's local response normalisation across neighbouring channels."""

    type = "local_response_norm"
    sample_coupling = Coupling.NONE
    description = ("AlexNet local response normalisation across channels: "
                   "y_c = x_c / (k + alpha * sum of x_j^2 over the `size` channels around c) ** beta "
                   "(alpha is not divided by size, as in the AlexNet paper; PyTorch's LocalResponseNorm divides "
                   "it, so its alpha is size times this one, and its default k is 1, not 2).")
    params_schema = {
        "type": "object",
        "properties": {
            "size": {"type": "integer", "minimum": 1, "default": 5,
                     "description": "channels in the window (centred; an even size reaches one further back)"},
            "alpha": {"type": "number", "minimum": 0, "default": 1e-4, "description": "scale of the squared sum"},
            "beta": {"type": "number", "minimum": 0, "default": 0.75, "description": "exponent"},
            "k": {"type": "number", "exclusiveMinimum": 0, "default": 2.0, "description": "additive constant"},
        },
        "additionalProperties": False,
    }
    examples = (
        Example({"alpha": 0.1}, (6, 2, 3), "default window on feature maps"),
        Example({"size": 2, "alpha": 0.5, "beta": 0.6, "k": 1.0}, (3,), "even window on flat features"),
    )

    def output_shape(self, input_shape: Shape) -> Shape:
        require_rank(input_shape, (1, 3), "channels, or channels x height x width")
        return tuple(input_shape)

    def flops(self, input_shape: Shape) -> int:
        return (self.size + 6) * int(np.prod(input_shape))

    def _channel_sum(self, a: np.ndarray, before: int, after: int) -> np.ndarray:
        """out[:, c] = sum of a[:, c - before : c + after + 1], zero outside the channel range."""
        c = a.shape[1]
        padded = np.zeros((a.shape[0], c + before + after, *a.shape[2:]), dtype=a.dtype)
        padded[:, before:before + c] = a
        out = padded[:, 0:c].copy()
        for o in range(1, before + after + 1):
            out += padded[:, o:o + c]
        return out

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        size, alpha, beta, k = int(self.size), float(self.alpha), float(self.beta), float(self.k)
        if size % 2 and len(input_shape) == 3:
            # ONNX's LRN divides alpha by size (PyTorch's and Caffe's convention); this layer does not
            return g.op("LRN", [x], size=size, alpha=alpha * size, beta=beta, bias=k)
        # even windows reach one channel further back here and one further forward in ONNX, and
        # ONNX's LRN wants feature maps: sum the window with a fixed 0/1 band matrix instead
        c = input_shape[0]
        before, after = size // 2, (size - 1) // 2
        idx = np.arange(c)
        band = ((idx[None, :] >= idx[:, None] - before) & (idx[None, :] <= idx[:, None] + after)).astype(np.float32)
        sq = g.op("Mul", [x, x])
        if len(input_shape) == 3:
            total = g.op("Conv", [sq, g.const(band.reshape(c, c, 1, 1), "band")], kernel_shape=[1, 1])
        else:
            total = g.op("MatMul", [sq, g.const(band.T, "band")])
        denom = g.op("Add", [g.op("Mul", [total, g.const(alpha, "alpha")]), g.const(k, "k")])
        return g.op("Mul", [x, g.op("Pow", [denom, g.const(-beta, "minus_beta")])])

    def forward(self, params: Params, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        before, after = self.size // 2, (self.size - 1) // 2
        denom = self._channel_sum(x * x, before, after)
        denom *= float(self.alpha)
        denom += float(self.k)
        factor = np.power(denom, -float(self.beta))
        y = x * factor
        return y, (x, y, denom, factor)

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        x, y, denom, factor = cache
        before, after = self.size // 2, (self.size - 1) // 2
        # d y_i / d x_j = [i == j] factor_i - 2 alpha beta x_j y_i / denom_i for j in window(i);
        # summing over i means the window seen from j: before and after swap
        t = dy * y
        t /= denom
        back = self._channel_sum(t, after, before)
        back *= x
        back *= -2.0 * float(self.alpha) * float(self.beta)
        back += dy * factor
        return back, {}


class LayerNorm(Layer):
    """Layer normalisation over each sample's trailing axes."""

    type = "layer_norm"
    sample_coupling = Coupling.NONE
    description = ("Layer normalisation (PyTorch's LayerNorm): each sample is normalised over its last "
                   "`normalized_dims` axes (default all of them: PyTorch's normalized_shape = the whole "
                   "per-sample shape) with the biased variance, then scaled and shifted element-wise by gamma "
                   "and beta of the normalised shape. Same computation in training and inference. Mean and "
                   "variance are two-pass (centred) sums.")
    params_schema = {
        "type": "object",
        "properties": {
            "normalized_dims": {"type": ["integer", "null"], "minimum": 1, "default": None,
                                "description": "how many trailing per-sample axes to normalise over; null: all"},
            "epsilon": {"type": "number", "exclusiveMinimum": 0, "default": 1e-5,
                        "description": "added to the variance before the square root"},
            "elementwise_affine": {"type": "boolean", "default": True,
                                   "description": "learn gamma and beta of the normalised shape"},
        },
        "additionalProperties": False,
    }
    examples = (
        Example({}, (6,), "a feature vector"),
        Example({}, (2, 3, 3), "a whole feature map"),
        Example({"normalized_dims": 1, "epsilon": 1e-3}, (3, 5), "the last axis of a sequence"),
        Example({"normalized_dims": 2, "elementwise_affine": False}, (2, 3, 4), "no affine"),
    )

    def _dims(self, rank: int) -> int:
        k = self.normalized_dims
        return rank if k is None else k

    def output_shape(self, input_shape: Shape) -> Shape:
        if self._dims(len(input_shape)) > len(input_shape):
            raise ShapeError(f"normalized_dims {self.normalized_dims} is more than the input's "
                             f"{len(input_shape)} axes {tuple(input_shape)}")
        return tuple(input_shape)

    def param_specs(self, input_shape: Shape) -> dict[str, ParamSpec]:
        if not self.elementwise_affine:
            return {}
        shape = tuple(input_shape[len(input_shape) - self._dims(len(input_shape)):])
        return {"gamma": ParamSpec(shape, "ones"), "beta": ParamSpec(shape, "zeros")}

    def flops(self, input_shape: Shape) -> int:
        return 8 * int(np.prod(input_shape))

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        # op by op as forward computes it (two-pass, centred variance), over the last k axes
        k = self._dims(len(input_shape))
        axes = list(range(len(input_shape) + 1 - k, len(input_shape) + 1))
        xhat = g.op("Sub", [x, g.op("ReduceMean", [x], axes=axes, keepdims=1)], "centred")
        var = g.op("ReduceMean", [g.op("Mul", [xhat, xhat])], axes=axes, keepdims=1)
        std = g.op("Sqrt", [g.op("Add", [var, g.const(float(self.epsilon), "epsilon")])])
        y = g.op("Mul", [xhat, g.op("Reciprocal", [std])], "normalized")
        if not self.elementwise_affine:
            return y
        return g.op("Add", [g.op("Mul", [y, g.const(params["gamma"], "gamma")]), g.const(params["beta"], "beta")])

    def forward(self, params: Params, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        k = self._dims(x.ndim - 1)
        axes = tuple(range(x.ndim - k, x.ndim))
        xhat = x - x.mean(axis=axes, keepdims=True)
        var = np.mean(np.square(xhat), axis=axes, keepdims=True)
        inv_std = 1 / np.sqrt(var + float(self.epsilon))
        xhat *= inv_std
        if not self.elementwise_affine:
            return xhat, (xhat, inv_std, axes)
        y = xhat * params["gamma"]
        y += params["beta"]
        return y, (xhat, inv_std, axes)

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        xhat, inv_std, axes = cache
        lead = tuple(range(dy.ndim - len(axes)))
        grads = {}
        if self.elementwise_affine:
            grads = {"gamma": (dy * xhat).sum(axis=lead), "beta": dy.sum(axis=lead)}
            dxhat = dy * params["gamma"]
        else:
            dxhat = dy
        dx = dxhat - dxhat.mean(axis=axes, keepdims=True)
        dx -= xhat * np.mean(dxhat * xhat, axis=axes, keepdims=True)
        dx *= inv_std
        return dx, grads


@hookimpl
def layerkit_register_layers(register: Callable[[type[Layer]], None]) -> None:
    register(BatchNorm)
    register(LayerNorm)
    register(LocalResponseNorm)
