"""Batch normalisation and AlexNet's local response normalisation."""

from __future__ import annotations

import numpy as np

from layerkit import hookimpl
from layerkit.nn.layer import Example, Layer, ParamSpec, require_rank
from layerkit.parallel.collectives import batch_sum, splitting
from layerkit.layers.activations import over_chunks


def _stat_axes(x: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Reduction axes and broadcast shape of per-channel statistics for (N, D) or (N, C, H, W)."""
    if x.ndim == 2:
        return (0,), (1, x.shape[1])
    return (0, 2, 3), (1, x.shape[1], 1, 1)


def _channel_sums(a: np.ndarray, b: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Per channel: the sum of ``a`` and the sum of ``a * b``, as float64.

    Each (sample, channel) row is reduced in the input dtype by BLAS / einsum
    in one pass (numpy's reduction over axes (0, 2, 3) ran at a tenth of memory
    speed); only the few row totals are combined in float64, so float32 input
    loses nothing to long float32 accumulations.
    """
    n, c = a.shape[:2]
    if a.ndim == 2:
        total = a.sum(axis=0, dtype=np.float64)
        dot = None if b is None else np.einsum("nc,nc->c", a, b, dtype=np.float64)
        return total, dot
    a3 = a.reshape(n, c, -1)
    b3 = None if b is None else b.reshape(n, c, -1)
    ones = np.ones(a3.shape[2], dtype=a.dtype)
    rows = np.empty((n, c), dtype=a.dtype)
    rows_dot = None if b is None else np.empty((n, c), dtype=a.dtype)

    # each (sample, channel) row total is computed whole by one thread, and the float64 sum
    # over samples below is the same single pass as without threads: identical results
    def work(slices, step):
        for sl in slices:
            np.matmul(a3[sl], ones, out=rows[sl])
            if b3 is not None:
                np.einsum("ncs,ncs->nc", a3[sl], b3[sl], out=rows_dot[sl])

    over_chunks(a, work, a.nbytes * (1 if b is None else 2))
    total = rows.sum(axis=0, dtype=np.float64)
    dot = None if b is None else rows_dot.sum(axis=0, dtype=np.float64)
    return total, dot


def _whole_batch(a: np.ndarray, b: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-channel sums and element count of this shard, summed over the whole batch when
    the batch is split over processes (``layerkit.parallel.processes``); unchanged otherwise."""
    if not splitting():
        return a, b, count
    c = a.size
    summed = batch_sum(np.concatenate([a, b, [float(count)]]))
    return summed[:c], summed[c:2 * c], int(round(summed[-1]))


def _affine(x: np.ndarray, scale: np.ndarray, shift: np.ndarray, bshape) -> np.ndarray:
    """x * scale + shift per channel, in x's dtype, in two passes over one new array."""
    scale, shift = scale.astype(x.dtype).reshape(bshape), shift.astype(x.dtype).reshape(bshape)
    if x.ndim == 2 or x.shape[0] < 2:
        y = np.multiply(x, scale)
        y += shift
        return y
    y = np.empty_like(x)

    def work(slices, step):
        for sl in slices:
            np.multiply(x[sl], scale, out=y[sl])
            y[sl] += shift

    over_chunks(x, work)
    return y


class BatchNorm(Layer):
    type = "batch_norm"
    description = ("Batch normalisation per feature of a (D,) input or per channel of a (C, H, W) input. "
                   "Training uses batch statistics (biased variance) and updates running_mean/running_var as "
                   "running = momentum * running + (1 - momentum) * batch; inference uses the running values.")
    params_schema = {
        "type": "object",
        "properties": {
            "momentum": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.9,
                         "description": "weight of the old running statistics in each update"},
            "epsilon": {"type": "number", "exclusiveMinimum": 0, "default": 1e-5,
                        "description": "added to the variance before the square root"},
        },
        "additionalProperties": False,
    }
    examples = (
        Example({}, (4,), "per feature"),
        Example({"momentum": 0.5, "epsilon": 1e-3}, (3, 2, 2), "per channel"),
    )
    stochastic = True
    # training statistics come from the whole batch through collectives.batch_sum, so the
    # batch may be split over processes
    batch_sync = True

    def output_shape(self, input_shape):
        require_rank(input_shape, (1, 3), "features, or channels x height x width")
        return tuple(input_shape)

    def param_specs(self, input_shape):
        c = input_shape[0]
        return {"gamma": ParamSpec((c,), "ones"), "beta": ParamSpec((c,), "zeros")}

    def state_specs(self, input_shape):
        c = input_shape[0]
        return {"running_mean": ParamSpec((c,), "zeros"), "running_var": ParamSpec((c,), "ones")}

    def flops(self, input_shape):
        return 8 * int(np.prod(input_shape))

    def forward(self, params, x, training=False, rng=None, state=None):
        _, bshape = _stat_axes(x)
        gamma, beta = params["gamma"], params["beta"]
        eps = float(self.epsilon)
        if not training:
            inv_std = 1 / np.sqrt(state["running_var"] + eps)
            scale = gamma * inv_std
            shift = beta - state["running_mean"] * scale
            # x is kept only so that gamma has a gradient in inference mode (gradient checks)
            return _affine(x, scale, shift, bshape), (False, (x, state["running_mean"].copy(), inv_std, scale))

        # one pass for both moments: var = E[x^2] - mean^2 over float64 totals
        total, squares = _channel_sums(x, x)
        total, squares, m = _whole_batch(total, squares, x.size // x.shape[1])
        mean = total / m
        var = np.maximum(squares / m - mean * mean, 0.0)
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

    fresh_dx = True

    def backward(self, params, cache, dy):
        return self._backward(cache, dy, None)

    def backward_inplace(self, params, cache, dy):
        return self._backward(cache, dy, dy)

    def _backward(self, cache, dy, out):
        training, (x, mean, inv_std, scale) = cache
        axes, bshape = _stat_axes(dy)
        dbeta, dyx = _channel_sums(dy, x)
        # sum(dy * xhat) from sum(dy * x): xhat is never materialised
        dgamma = inv_std * (dyx - mean * dbeta)
        # this shard's share of the parameter gradients: the shards' shares are added later
        grads = {"gamma": dgamma.astype(dy.dtype), "beta": dbeta.astype(dy.dtype)}
        if not training:
            return np.multiply(dy, scale.astype(dy.dtype).reshape(bshape), out=out), grads
        # dx needs the sums over the whole batch
        dbeta_all, dyx_all, m = _whole_batch(dbeta, dyx, dy.size // dy.shape[1])
        if dbeta_all is not dbeta:
            dbeta, dgamma = dbeta_all, inv_std * (dyx_all - mean * dbeta_all)
        # dx = scale * (dy - mean(dy) - xhat * mean(dy * xhat)) = scale*dy + k*x + c0 per channel
        k = -scale * inv_std * dgamma / m
        c0 = -scale * dbeta / m - k * mean
        cast = lambda v: v.astype(dy.dtype).reshape(bshape)
        scale, k, c0 = cast(scale), cast(k), cast(c0)
        if out is None:
            out = np.empty_like(dy)
        # chunk by chunk, so k*x + c0 lives in a cache-sized temporary

        def work(slices, step):
            tmp = np.empty((step, *dy.shape[1:]), dtype=dy.dtype)
            for sl in slices:
                t = tmp[:sl.stop - sl.start]
                np.multiply(x[sl], k, out=t)
                t += c0
                o = out[sl]
                np.multiply(dy[sl], scale, out=o)
                o += t

        over_chunks(dy, work, 2 * dy.nbytes)
        return out, grads


class LocalResponseNorm(Layer):
    type = "local_response_norm"
    per_sample = True
    description = ("AlexNet local response normalisation across channels: "
                   "y_c = x_c / (k + alpha * sum of x_j^2 over the `size` channels around c) ** beta "
                   "(alpha is not divided by size, as in the AlexNet paper).")
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

    def output_shape(self, input_shape):
        require_rank(input_shape, (1, 3), "channels, or channels x height x width")
        return tuple(input_shape)

    def flops(self, input_shape):
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

    def forward(self, params, x, training=False, rng=None, state=None):
        before, after = self.size // 2, (self.size - 1) // 2
        denom = self._channel_sum(x * x, before, after)
        denom *= float(self.alpha)
        denom += float(self.k)
        factor = np.power(denom, -float(self.beta))
        y = x * factor
        return y, (x, y, denom, factor)

    def backward(self, params, cache, dy):
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


@hookimpl
def layerkit_register_layers(register):
    register(BatchNorm)
    register(LocalResponseNorm)
