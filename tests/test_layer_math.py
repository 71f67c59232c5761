"""Every built-in layer kernel against a slow, obviously-correct reference (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from layerkit.errors import ShapeError
from layerkit.nn.initializers import initialize
from layerkit.nn.layer import input_kinds
from layerkit.layers.activations import LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from layerkit.layers.conv import Conv2D
from layerkit.layers.dense import Dense
from layerkit.layers.dropout import Dropout
from layerkit.layers.merging import Add, Concat
from layerkit.layers.normalization import BatchNorm, LocalResponseNorm
from layerkit.layers.pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from layerkit.layers.reshaping import Flatten, Reshape
from layerkit.plugins.manager import load_registry
from layerkit.modelfile.spec import fill_defaults


def make(cls, **config):
    return cls(**fill_defaults(cls.params_schema, config))


def numeric_grad(f, a, eps=1e-6):
    """Central differences of the scalar f() with respect to every element of a (modified in place)."""
    grad = np.zeros_like(a)
    flat, gflat = a.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return grad


def random_params(layer, in_shape, rng, dtype=np.float64):
    return {name: initialize(spec, rng, dtype) + (0.1 * rng.standard_normal(spec.shape)).astype(dtype)
            for name, spec in layer.param_specs(in_shape).items()}


# -- convolution -----------------------------------------------------------------------------------


def reference_pads(size, k, stride, dilation, padding):
    k_eff = (k - 1) * dilation + 1
    if padding == "same":
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + k_eff - size, 0)
        return total // 2, total - total // 2
    if padding == "valid":
        return 0, 0
    return padding, padding


def as_pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def conv_reference(x, W, b, stride, padding, dilation, groups):
    """Returns y and a function dy -> (dx, dW, db), all by explicit loops."""
    n, c, h, w = x.shape
    f, cg, kh, kw = W.shape
    sh, sw = as_pair(stride)
    dh, dw = as_pair(dilation)
    ph, pw = as_pair(padding) if not isinstance(padding, str) else (padding, padding)
    pt, pb = reference_pads(h, kh, sh, dh, ph)
    pl, pr = reference_pads(w, kw, sw, dw, pw)
    xp = np.zeros((n, c, h + pt + pb, w + pl + pr))
    xp[:, :, pt:pt + h, pl:pl + w] = x
    ho = (xp.shape[2] - (kh - 1) * dh - 1) // sh + 1
    wo = (xp.shape[3] - (kw - 1) * dw - 1) // sw + 1
    fg = f // groups
    y = np.zeros((n, f, ho, wo))
    for s in range(n):
        for o in range(f):
            c0 = (o // fg) * cg
            for r in range(ho):
                for q in range(wo):
                    acc = 0.0 if b is None else b[o]
                    for ci in range(cg):
                        for i in range(kh):
                            for j in range(kw):
                                acc += xp[s, c0 + ci, r * sh + i * dh, q * sw + j * dw] * W[o, ci, i, j]
                    y[s, o, r, q] = acc

    def grads(dy):
        dxp = np.zeros_like(xp)
        dW = np.zeros_like(W)
        for s in range(n):
            for o in range(f):
                c0 = (o // fg) * cg
                for r in range(ho):
                    for q in range(wo):
                        for ci in range(cg):
                            for i in range(kh):
                                for j in range(kw):
                                    pos = (s, c0 + ci, r * sh + i * dh, q * sw + j * dw)
                                    dW[o, ci, i, j] += dy[s, o, r, q] * xp[pos]
                                    dxp[pos] += dy[s, o, r, q] * W[o, ci, i, j]
        db = dy.sum(axis=(0, 2, 3))
        return dxp[:, :, pt:pt + h, pl:pl + w], dW, db

    return y, grads


CONV_CASES = [
    dict(filters=3, kernel_size=3),
    dict(filters=2, kernel_size=[3, 2], stride=2, padding=1),
    dict(filters=2, kernel_size=3, stride=[1, 2], padding=[2, 0], use_bias=False),
    dict(filters=4, kernel_size=3, padding="same", dilation=2, groups=2),
    dict(filters=4, kernel_size=2, stride=2, padding="same", groups=4),
    dict(filters=3, kernel_size=4, stride=3, padding="same", dilation=[1, 2]),
    dict(filters=2, kernel_size=1),
    dict(filters=5, kernel_size=2, padding="valid", dilation=3),
    # stride 1 with uneven padding: the flat layout shares one side's zeros between rows
    dict(filters=3, kernel_size=4, padding="same"),
    dict(filters=2, kernel_size=[2, 3], padding="same", dilation=2),
    dict(filters=6, kernel_size=3, padding=[0, 2]),
    dict(filters=20, kernel_size=3, padding=1),
]

# Conv2D picks its algorithm from the shapes alone: stride-1 layers with at most 16 filters run
# one GEMM over the batch, wider ones per-sample GEMMs, strided ones im2col; in training it keeps
# its columns, in inference mode backward rebuilds them. Each case runs as given and with 16 more
# filters per group, in both modes, so every algorithm and both backwards meet the loops.
def _wider(config: dict, extra: int) -> dict:
    return {**config, "filters": config["filters"] + extra * config.get("groups", 1)}


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("extra", [0, 16], ids=["as-given", "wide"])
@pytest.mark.parametrize("config", CONV_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_conv2d_matches_loops(config, extra, training):
    rng = np.random.default_rng(1)
    conv = make(Conv2D, **_wider(config, extra))
    in_shape = (4, 7, 8)
    x = rng.standard_normal((2, *in_shape))
    params = random_params(conv, in_shape, rng)
    y, cache = conv.forward(params, x, training=training)
    ref_y, ref_grads = conv_reference(x, params["W"], params.get("b"), conv.stride, conv.padding,
                                      conv.dilation, conv.groups)
    assert y.shape == (2, *conv.output_shape(in_shape)) == ref_y.shape
    np.testing.assert_allclose(y, ref_y, rtol=1e-10, atol=1e-12)

    dy = rng.standard_normal(y.shape)
    dx, grads = conv.backward(params, cache, dy)
    ref_dx, ref_dW, ref_db = ref_grads(dy)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["W"], ref_dW, rtol=1e-10, atol=1e-12)
    if conv.use_bias:
        np.testing.assert_allclose(grads["b"], ref_db, rtol=1e-10, atol=1e-12)
    else:
        assert "b" not in grads
    assert conv.backward_params(params, cache, dy).keys() == grads.keys()
    for name, grad in conv.backward_params(params, cache, dy).items():
        np.testing.assert_array_equal(grad, grads[name])


def conv_valid_reference(x: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A stride-1 valid convolution as one float64 einsum over sliding windows."""
    kh, kw = W.shape[2:]
    windows = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), (kh, kw), axis=(2, 3))
    return np.einsum("ncrqij,fcij->nfrq", windows, W.astype(np.float64)) + b.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("stride", [2, 1])
def test_conv2d_big_batches_match_the_reference(stride):
    """Batches too big for cache run in chunks (and backward rebuilds the columns chunk by chunk)."""
    rng = np.random.default_rng(2)
    conv = make(Conv2D, filters=20, kernel_size=3, stride=stride, padding=1)
    x = rng.standard_normal((48, 3, 24, 24))
    params = random_params(conv, (3, 24, 24), rng)
    y, cache = conv.forward(params, x, training=True)
    dy = rng.standard_normal(y.shape)
    dx, grads = conv.backward(params, cache, dy)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = conv_valid_reference(xp, params["W"], params["b"])[:, :, ::stride, ::stride]
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-10)
    # gradients of sum(y * dy) by the reference's own autodiff-free identity: d/dW and d/dx of a
    # bilinear form, checked as directional derivatives in random directions
    for _ in range(2):
        dW = rng.standard_normal(params["W"].shape)
        ddx = rng.standard_normal(x.shape)
        moved = conv_valid_reference(xp, params["W"] + dW, params["b"])[:, :, ::stride, ::stride]
        np.testing.assert_allclose(np.sum(grads["W"] * dW), np.sum((moved - ref) * dy), rtol=1e-9)
        shifted = np.pad(x + ddx, ((0, 0), (0, 0), (1, 1), (1, 1)))
        moved = conv_valid_reference(shifted, params["W"], params["b"])[:, :, ::stride, ::stride]
        np.testing.assert_allclose(np.sum(dx * ddx), np.sum((moved - ref) * dy), rtol=1e-9)
    np.testing.assert_allclose(grads["b"], dy.sum(axis=(0, 2, 3)), rtol=1e-12)


def test_conv2d_shapes_params_and_flops():
    conv = make(Conv2D, filters=6, kernel_size=5, padding=2)
    assert conv.output_shape((1, 28, 28)) == (6, 28, 28)
    specs = conv.param_specs((1, 28, 28))
    assert specs["W"].shape == (6, 1, 5, 5) and specs["W"].fan_in == 25 and specs["W"].decay
    assert specs["b"].shape == (6,) and not specs["b"].decay
    assert conv.flops((1, 28, 28)) == 2 * 6 * 28 * 28 * 25 + 6 * 28 * 28
    same = make(Conv2D, filters=2, kernel_size=3, stride=2, padding="same")
    assert same.output_shape((1, 7, 8)) == (2, 4, 4)
    grouped = make(Conv2D, filters=4, kernel_size=3, groups=2)
    assert grouped.param_specs((6, 5, 5))["W"].shape == (4, 3, 3, 3)
    assert grouped.param_specs((6, 5, 5))["W"].fan_in == 27


@pytest.mark.parametrize("config, shape, message", [
    (dict(filters=2, kernel_size=5), (1, 4, 4), "kernel 5x5 (dilated 5x5) does not fit the padded input 4x4"),
    (dict(filters=2, kernel_size=3, dilation=2), (1, 4, 9), "kernel 3x3 (dilated 5x5) does not fit"),
    (dict(filters=2, kernel_size=3, groups=2), (3, 8, 8), "channels 3 not divisible by groups 2"),
    (dict(filters=3, kernel_size=3, groups=2), (4, 8, 8), "filters 3 not divisible by groups 2"),
    (dict(filters=2, kernel_size=3), (8, 8), "3-d input"),
])
def test_conv2d_shape_errors(config, shape, message):
    with pytest.raises(ShapeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make(Conv2D, **config).output_shape(shape)


# -- pooling ----------------------------------------------------------------------------------------


def pool_reference(x, k, stride, padding, mode):
    n, c, h, w = x.shape
    kh, kw = as_pair(k)
    sh, sw = as_pair(stride)
    ph, pw = as_pair(padding)
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    y = np.zeros((n, c, ho, wo))
    dx_of = []  # (output index, [(input index, weight)])
    for s in range(n):
        for ch in range(c):
            for r in range(ho):
                for q in range(wo):
                    cells = [(r * sh + i - ph, q * sw + j - pw) for i in range(kh) for j in range(kw)]
                    real = [(a, b) for a, b in cells if 0 <= a < h and 0 <= b < w]
                    values = [x[s, ch, a, b] for a, b in real]
                    if mode == "max":
                        best = int(np.argmax(values))  # first maximum in row-major order
                        y[s, ch, r, q] = values[best]
                        routes = [(real[best], 1.0)]
                    else:
                        y[s, ch, r, q] = sum(values) / len(values)
                        routes = [(cell, 1.0 / len(values)) for cell in real]
                    dx_of.append(((s, ch, r, q), routes))

    def backward(dy):
        dx = np.zeros_like(x)
        for (s, ch, r, q), routes in dx_of:
            for (a, b), weight in routes:
                dx[s, ch, a, b] += weight * dy[s, ch, r, q]
        return dx

    return y, backward


POOL_CASES = [
    dict(pool_size=2),
    dict(pool_size=3, stride=2, padding=1),
    dict(pool_size=[2, 3], stride=[1, 2]),
    dict(pool_size=3, stride=1, padding=[1, 0]),
    dict(pool_size=2, padding=1),
    dict(pool_size=3),
]


@pytest.mark.parametrize("cls, mode", [(MaxPool2D, "max"), (AvgPool2D, "avg")])
@pytest.mark.parametrize("config", POOL_CASES, ids=str)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_pooling_matches_loops(cls, mode, config, ties):
    rng = np.random.default_rng(3)
    shape = (2, 3, 7, 8)
    # small integers make many equal values per window: tie-breaking must pick the first one
    x = rng.integers(0, 3, shape).astype(np.float64) if ties else rng.standard_normal(shape)
    layer = make(cls, **config)
    y, cache = layer.forward({}, x, training=True)
    ref_y, ref_backward = pool_reference(x, layer.pool_size, config.get("stride", layer.pool_size),
                                         layer.padding, mode)
    assert y.shape == (2, *layer.output_shape(shape[1:]))
    np.testing.assert_allclose(y, ref_y, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx, grads = layer.backward({}, cache, dy)
    assert grads == {}
    np.testing.assert_allclose(dx, ref_backward(dy), rtol=1e-12, atol=1e-12)


def test_max_pool_tie_sends_all_gradient_to_first():
    x = np.ones((1, 1, 2, 2))
    layer = make(MaxPool2D, pool_size=2)
    y, cache = layer.forward({}, x)
    dx, _ = layer.backward({}, cache, np.full((1, 1, 1, 1), 5.0))
    np.testing.assert_array_equal(dx[0, 0], [[5.0, 0.0], [0.0, 0.0]])


def test_max_pool_padding_is_never_selected():
    x = -np.ones((1, 1, 3, 3)) * 7
    y, _ = make(MaxPool2D, pool_size=2, stride=2, padding=1).forward({}, x)
    np.testing.assert_array_equal(y, -7 * np.ones((1, 1, 2, 2)))


def test_pooling_shape_errors():
    with pytest.raises(ShapeError, match="does not fit"):
        make(MaxPool2D, pool_size=5).output_shape((1, 4, 4))
    with pytest.raises(ShapeError, match="must be smaller than pool_size"):
        make(AvgPool2D, pool_size=2, padding=2).output_shape((1, 4, 4))
    with pytest.raises(ShapeError, match="3-d input"):
        make(MaxPool2D, pool_size=2).output_shape((16,))


def test_global_avg_pool():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 4, 5))
    layer = make(GlobalAvgPool2D)
    y, cache = layer.forward({}, x)
    np.testing.assert_allclose(y, x.mean(axis=(2, 3)))
    dy = rng.standard_normal((2, 3))
    dx, _ = layer.backward({}, cache, dy)
    np.testing.assert_allclose(dx, np.broadcast_to(dy[:, :, None, None] / 20, x.shape))
    assert layer.output_shape((3, 4, 5)) == (3,)


# -- normalisation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 4), (4, 3, 2, 3)], ids=["flat", "spatial"])
def test_batch_norm_forward_train_eval_and_running_stats(shape):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape) * 3 + 1
    layer = make(BatchNorm, momentum=0.8)
    c = shape[1]
    params = {"gamma": rng.standard_normal(c), "beta": rng.standard_normal(c)}
    state = {"running_mean": np.zeros(c), "running_var": np.ones(c)}
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    bshape = (1, c) + (1,) * (len(shape) - 2)
    mean, var = x.mean(axis=axes), x.var(axis=axes)

    y, _ = layer.forward(params, x, training=True, state=state)
    expected = (x - mean.reshape(bshape)) / np.sqrt(var.reshape(bshape) + 1e-5)
    expected = expected * params["gamma"].reshape(bshape) + params["beta"].reshape(bshape)
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(state["running_mean"], 0.2 * mean)
    np.testing.assert_allclose(state["running_var"], 0.8 + 0.2 * var)

    y_eval, _ = layer.forward(params, x, training=False, state=state)
    expected = (x - state["running_mean"].reshape(bshape)) / np.sqrt(state["running_var"].reshape(bshape) + 1e-5)
    expected = expected * params["gamma"].reshape(bshape) + params["beta"].reshape(bshape)
    np.testing.assert_allclose(y_eval, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(state["running_mean"], 0.2 * mean)  # inference leaves the state alone


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 2, 3)], ids=["flat", "spatial"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_backward_numerically(shape, training):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape)
    c = shape[1]
    params = {"gamma": rng.standard_normal(c), "beta": rng.standard_normal(c)}
    state = {"running_mean": rng.standard_normal(c), "running_var": rng.uniform(0.5, 2, c)}
    layer = make(BatchNorm)
    dy = rng.standard_normal(shape)

    def loss():
        # a copy of the state so the numerical probes do not move the running statistics
        return float((layer.forward(params, x, training, state={k: v.copy() for k, v in state.items()})[0]
                      * dy).sum())

    _, cache = layer.forward(params, x, training, state={k: v.copy() for k, v in state.items()})
    dx, grads = layer.backward(params, cache, dy)
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-7)
    for name in ("gamma", "beta"):
        np.testing.assert_allclose(grads[name], numeric_grad(loss, params[name]), rtol=1e-6, atol=1e-7)


def lrn_reference(x, size, alpha, beta, k):
    c = x.shape[1]
    y = np.empty_like(x)
    for ch in range(c):
        lo, hi = max(0, ch - size // 2), min(c - 1, ch + (size - 1) // 2)
        total = (x[:, lo:hi + 1] ** 2).sum(axis=1)
        y[:, ch] = x[:, ch] / (k + alpha * total) ** beta
    return y


@pytest.mark.parametrize("config, shape", [
    ({}, (2, 7, 2, 3)),
    ({"size": 2, "alpha": 0.5, "beta": 0.6, "k": 1.0}, (3, 4)),
    ({"size": 3, "alpha": 0.3}, (2, 5, 2, 2)),
    ({"size": 4, "alpha": 0.2, "beta": 1.5}, (2, 6, 1, 2)),
])
def test_local_response_norm(config, shape):
    rng = np.random.default_rng(7)
    layer = make(LocalResponseNorm, **config)
    x = rng.standard_normal(shape) * 2
    y, cache = layer.forward({}, x)
    np.testing.assert_allclose(y, lrn_reference(x, layer.size, layer.alpha, layer.beta, layer.k), rtol=1e-12)
    dy = rng.standard_normal(shape)
    dx, _ = layer.backward({}, cache, dy)
    numeric = numeric_grad(lambda: float((layer.forward({}, x)[0] * dy).sum()), x)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)


# -- dropout ----------------------------------------------------------------------------------------


def test_dropout_scales_survivors_and_masks_gradient():
    layer = make(Dropout, rate=0.25)
    x = np.random.default_rng(8).standard_normal((400, 50)) + 5
    y, cache = layer.forward({}, x, training=True, rng=np.random.default_rng(0))
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / 0.75)
    assert abs(kept.mean() - 0.75) < 0.01
    dy = np.ones_like(x)
    dx, _ = layer.backward({}, cache, dy)
    np.testing.assert_allclose(dx, kept / 0.75)


def test_dropout_reproducible_with_same_seed_and_identity_in_eval():
    layer = make(Dropout, rate=0.5)
    x = np.random.default_rng(9).standard_normal((8, 10))
    a, _ = layer.forward({}, x, training=True, rng=np.random.default_rng(42))
    b, _ = layer.forward({}, x, training=True, rng=np.random.default_rng(42))
    c, _ = layer.forward({}, x, training=True, rng=np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    y, cache = layer.forward({}, x, training=False)
    np.testing.assert_array_equal(y, x)
    dy = np.ones_like(x)
    assert layer.backward({}, cache, dy)[0] is dy
    with pytest.raises(ValueError, match="rng"):
        layer.forward({}, x, training=True)


# -- activations, shapes, merging -------------------------------------------------------------------


@pytest.mark.parametrize("layer, reference", [
    (make(ReLU), lambda x: np.maximum(x, 0)),
    (make(LeakyReLU, alpha=0.1), lambda x: np.where(x > 0, x, 0.1 * x)),
    (make(Sigmoid), lambda x: 1 / (1 + np.exp(-x))),
    (make(Tanh), np.tanh),
    (make(Softmax), lambda x: np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)),
], ids=lambda v: getattr(v, "type", ""))
@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 2, 2)], ids=["flat", "maps"])
def test_activations(layer, reference, shape):
    rng = np.random.default_rng(10)
    x = rng.standard_normal(shape)
    x[np.abs(x) < 1e-3] = 0.5  # keep numerical differences away from the kink
    y, cache = layer.forward({}, x)
    np.testing.assert_allclose(y, reference(x), rtol=1e-12, atol=1e-15)
    dy = rng.standard_normal(shape)
    dx, _ = layer.backward({}, cache, dy)
    numeric = numeric_grad(lambda: float((layer.forward({}, x)[0] * dy).sum()), x)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)


def test_sigmoid_and_softmax_are_stable():
    x = np.array([[-1e4, 0.0, 1e4]])
    y, _ = make(Sigmoid).forward({}, x)
    np.testing.assert_allclose(y, [[0.0, 0.5, 1.0]])
    p, _ = make(Softmax).forward({}, x)
    np.testing.assert_allclose(p, [[0.0, 0.0, 1.0]])
    assert np.isfinite(p).all()


def test_flatten_and_reshape():
    x = np.arange(2 * 24, dtype=np.float64).reshape(2, 2, 3, 4)
    flat = make(Flatten)
    y, cache = flat.forward({}, x)
    assert y.shape == (2, 24) and flat.output_shape((2, 3, 4)) == (24,)
    assert flat.backward({}, cache, y)[0].shape == x.shape
    r = make(Reshape, shape=[-1, 6])
    assert r.output_shape((2, 3, 4)) == (4, 6)
    y, cache = r.forward({}, x)
    np.testing.assert_array_equal(y, x.reshape(2, 4, 6))
    assert r.backward({}, cache, y)[0].shape == x.shape
    with pytest.raises(ShapeError, match="cannot reshape"):
        make(Reshape, shape=[5, 5]).output_shape((2, 3, 4))
    with pytest.raises(ShapeError, match="not divisible"):
        make(Reshape, shape=[-1, 5]).output_shape((2, 3, 4))
    with pytest.raises(ShapeError, match="only once"):
        make(Reshape, shape=[-1, -1]).output_shape((2, 3, 4))


def test_add_and_concat():
    rng = np.random.default_rng(11)
    a, b, c = (rng.standard_normal((2, 3, 2, 2)) for _ in range(3))
    add = make(Add)
    y, cache = add.forward({}, [a, b, c])
    np.testing.assert_allclose(y, a + b + c)
    dy = rng.standard_normal(y.shape)
    assert all(d is dy for d in add.backward({}, cache, dy)[0])
    with pytest.raises(ShapeError, match="equal shapes"):
        add.output_shape([(3, 2, 2), (3, 2, 1)])

    cat = make(Concat)
    d = rng.standard_normal((2, 1, 2, 2))
    assert cat.output_shape([(3, 2, 2), (1, 2, 2)]) == (4, 2, 2)
    y, cache = cat.forward({}, [a, d])
    np.testing.assert_array_equal(y, np.concatenate([a, d], axis=1))
    dy = rng.standard_normal(y.shape)
    da, dd = cat.backward({}, cache, dy)[0]
    np.testing.assert_array_equal(da, dy[:, :3])
    np.testing.assert_array_equal(dd, dy[:, 3:])
    last = make(Concat, axis=-1)
    assert last.output_shape([(3, 2, 2), (3, 2, 5)]) == (3, 2, 7)
    with pytest.raises(ShapeError, match="except axis 0"):
        cat.output_shape([(3, 2, 2), (1, 2, 3)])
    with pytest.raises(ShapeError, match="out of range"):
        make(Concat, axis=3).output_shape([(3, 2, 2), (3, 2, 2)])


# -- every layer: float32 stays float32 -------------------------------------------------------------


def _all_examples():
    registry = load_registry(entry_points=False)
    for name in registry.names("layer"):
        cls = registry.layer(name)
        for i, example in enumerate(cls.examples):
            yield pytest.param(cls, example, id=f"{name}-{i}")


@pytest.mark.parametrize("cls, example", list(_all_examples()))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_float32_in_float32_out(cls, example, training):
    rng = np.random.default_rng(12)
    layer = make(cls, **example.config)
    in_shape = example.input_shape
    multi = layer.arity != 1
    shapes = [tuple(s) for s in in_shape] if multi else [tuple(in_shape)]
    # token ids (an embedding's input, a recurrent layer's mask) are int64 and get no gradient
    kinds = input_kinds(layer, len(shapes))
    xs = [rng.integers(0, layer.token_range(), (3, *s)) if kind == "tokens"
          else rng.standard_normal((3, *s)).astype(np.float32) for s, kind in zip(shapes, kinds, strict=True)]
    params = {k: v.astype(np.float32) for k, v in random_params(layer, in_shape, rng).items()}
    state = {k: initialize(s, rng, np.float32) for k, s in layer.state_specs(in_shape).items()}
    y, cache = layer.forward(params, xs if multi else xs[0], training, np.random.default_rng(0), state)
    assert y.dtype == np.float32 and y.shape == (3, *layer.output_shape(in_shape))
    assert all(v.dtype == np.float32 for v in state.values())
    dx, grads = layer.backward(params, cache, np.ones_like(y))
    for d, x, kind in zip(dx if multi else [dx], xs, kinds, strict=True):
        if kind == "tokens":
            assert d is None
            continue
        assert d.dtype == np.float32 and d.shape == x.shape
    assert set(grads) <= set(params)
    for name, g in grads.items():
        assert g.dtype == np.float32 and g.shape == params[name].shape, name


def test_dense_reference():
    rng = np.random.default_rng(13)
    layer = make(Dense, units=3)
    x = rng.standard_normal((4, 5))
    params = random_params(layer, (5,), rng)
    y, cache = layer.forward(params, x)
    np.testing.assert_allclose(y, x @ params["W"] + params["b"])
    dy = rng.standard_normal((4, 3))
    dx, grads = layer.backward(params, cache, dy)
    np.testing.assert_allclose(dx, dy @ params["W"].T)
    np.testing.assert_allclose(grads["W"], x.T @ dy)
    np.testing.assert_allclose(grads["b"], dy.sum(axis=0))


def test_conv2d_large_inference_batches_agree_with_training_and_the_reference():
    """LeNet's first conv at batch 300: its columns (20 MB) are too big for one batch GEMM, so
    training and inference may take different algorithms; infer and forward's inference mode must
    agree bit for bit, both with training and a float64 reference to rounding, and a backward
    after an inference-mode forward must give training's gradients."""
    conv = make(Conv2D, filters=8, kernel_size=5)
    rng = np.random.default_rng(5)
    params = {k: v.astype(np.float32) for k, v in random_params(conv, (1, 28, 28), rng).items()}
    x = rng.standard_normal((300, 1, 28, 28)).astype(np.float32)
    inferred = conv.infer(params, x)
    eval_y, cache = conv.forward(params, x, training=False)
    np.testing.assert_array_equal(inferred, eval_y)
    np.testing.assert_allclose(inferred, conv_valid_reference(x, params["W"], params["b"]), rtol=1e-4, atol=1e-4)
    train_y, train_cache = conv.forward(params, x, training=True)
    np.testing.assert_allclose(train_y, inferred, rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(train_y.shape).astype(np.float32)
    dx_eval, g_eval = conv.backward(params, cache, dy)
    dx_train, g_train = conv.backward(params, train_cache, dy)
    np.testing.assert_allclose(dx_eval, dx_train, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_eval["W"], g_train["W"], rtol=1e-4, atol=1e-3)
