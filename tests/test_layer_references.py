"""The layers added for PyTorch parity against slow references written here with plain loops in
float64 (PyTorch's documented definitions), forward and backward, over their options."""

from __future__ import annotations

import math

import numpy as np
import pytest

from layerkit.errors import ShapeError
from layerkit.layers.activations import LogSoftmax, PReLU, Softmax
from layerkit.layers.conv_transpose import Conv2DTranspose
from layerkit.layers.dense import Dense
from layerkit.layers.dropout import Dropout2D
from layerkit.layers.normalization import LayerNorm
from layerkit.layers.pooling import AvgPool2D, GlobalMaxPool2D, MaxPool2D
from layerkit.modelfile.spec import fill_defaults


def make(cls, **config):
    return cls(**fill_defaults(cls.params_schema, config))


def numeric(f, a, eps=1e-6):
    grad = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        old = a[idx]
        a[idx] = old + eps
        up = f()
        a[idx] = old - eps
        down = f()
        a[idx] = old
        grad[idx] = (up - down) / (2 * eps)
    return grad


def check_layer(layer, params, x, reference, rtol=1e-10):
    """Forward equals ``reference(params, x)``; backward equals the reference's numerical gradients."""
    y, cache = layer.forward(params, x, training=False)
    ref = reference(params, x)
    np.testing.assert_allclose(y, ref, rtol=rtol, atol=1e-12)
    dy = np.random.default_rng(99).standard_normal(ref.shape)
    dx, grads = layer.backward(params, cache, dy)
    loss = lambda: float((reference(params, x) * dy).sum())  # noqa: E731
    np.testing.assert_allclose(dx, numeric(loss, x), rtol=1e-6, atol=1e-8)
    for name, value in params.items():
        np.testing.assert_allclose(grads[name], numeric(loss, value), rtol=1e-6, atol=1e-8, err_msg=name)


# -- activations -----------------------------------------------------------------------------------

@pytest.mark.parametrize("per_channel, shape", [(False, (3, 5)), (True, (2, 3, 2, 2)), (True, (4, 3))])
def test_prelu(per_channel, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    x[np.abs(x) < 1e-3] = 0.5
    layer = make(PReLU, per_channel=per_channel)
    alpha = rng.uniform(0.05, 0.5, shape[1] if per_channel else 1)

    def ref(params, x):
        y = np.empty_like(x)
        for idx in np.ndindex(x.shape):
            a = params["alpha"][idx[1] if per_channel else 0]
            y[idx] = x[idx] if x[idx] > 0 else a * x[idx]
        return y

    check_layer(layer, {"alpha": alpha}, x, ref)
    assert layer.param_specs(shape[1:])["alpha"].init == 0.25


@pytest.mark.parametrize("cls", [Softmax, LogSoftmax])
@pytest.mark.parametrize("axis, shape", [(0, (2, 4)), (0, (2, 3, 2, 2)), (-1, (2, 3, 2, 4)), (1, (2, 3, 4, 2))])
def test_softmax_axis(cls, axis, shape):
    x = np.random.default_rng(1).standard_normal(shape) * 3
    layer = make(cls, axis=axis)
    ax = axis % (len(shape) - 1) + 1

    def ref(params, x):
        y = np.empty_like(x)
        moved, out = np.moveaxis(x, ax, -1), np.moveaxis(y, ax, -1)
        for idx in np.ndindex(moved.shape[:-1]):
            row = moved[idx]
            logs = [v - max(row) - math.log(sum(math.exp(u - max(row)) for u in row)) for v in row]
            out[idx] = logs if cls is LogSoftmax else [math.exp(v) for v in logs]
        return y

    check_layer(layer, {}, x, ref)
    with pytest.raises(ShapeError, match="axis 3 is out of range"):
        make(cls, axis=3).output_shape((2, 3, 4))


# -- dense on the last axis -------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4), (2, 2, 3, 4)])
def test_dense_on_the_last_axis(shape):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape)
    layer = make(Dense, units=3)
    params = {"W": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}

    def ref(params, x):
        y = np.zeros(x.shape[:-1] + (3,))
        for idx in np.ndindex(x.shape[:-1]):
            for u in range(3):
                y[idx + (u,)] = sum(x[idx + (d,)] * params["W"][d, u] for d in range(4)) + params["b"][u]
        return y

    check_layer(layer, params, x, ref)
    assert layer.output_shape(shape[1:]) == shape[1:-1] + (3,)
    assert layer.flops(shape[1:]) == 2 * int(np.prod(shape[1:])) * 3


# -- layer norm --------------------------------------------------------------------------------------

@pytest.mark.parametrize("config, shape", [({}, (3, 5)), ({}, (2, 2, 3, 2)), ({"normalized_dims": 1}, (2, 3, 4)),
                                           ({"normalized_dims": 2, "elementwise_affine": False}, (2, 2, 3, 3)),
                                           ({"epsilon": 0.1, "normalized_dims": 1}, (4, 3))])
def test_layer_norm(config, shape):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape) * 2 + 1
    layer = make(LayerNorm, **config)
    k = config.get("normalized_dims") or len(shape) - 1
    norm_shape = shape[len(shape) - k:]
    affine = config.get("elementwise_affine", True)
    params = {"gamma": rng.standard_normal(norm_shape), "beta": rng.standard_normal(norm_shape)} if affine else {}
    eps = config.get("epsilon", 1e-5)

    def ref(params, x):
        y = np.empty_like(x)
        for lead in np.ndindex(x.shape[:len(shape) - k]):
            block = x[lead]
            vals = list(block.ravel())
            mean = sum(vals) / len(vals)
            var = sum((v - mean) ** 2 for v in vals) / len(vals)
            out = (block - mean) / math.sqrt(var + eps)
            y[lead] = out * params["gamma"] + params["beta"] if affine else out
        return y

    check_layer(layer, params, x, ref)
    assert (layer.param_specs(shape[1:]) == {}) == (not affine)
    with pytest.raises(ShapeError, match="normalized_dims 4"):
        make(LayerNorm, normalized_dims=4).output_shape((2, 3, 4))


# -- transposed convolution -------------------------------------------------------------------------

def as_pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def conv_transpose_reference(x, W, b, stride, padding, output_padding, dilation):
    n, c, h, w = x.shape
    _, f, kh, kw = W.shape
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = map(as_pair, (stride, padding, output_padding, dilation))
    full = np.zeros((n, f, (h - 1) * sh + dh * (kh - 1) + 1 + oph, (w - 1) * sw + dw * (kw - 1) + 1 + opw))
    for ni in range(n):
        for ci in range(c):
            for i in range(h):
                for j in range(w):
                    for fi in range(f):
                        for ki in range(kh):
                            for kj in range(kw):
                                full[ni, fi, i * sh + ki * dh, j * sw + kj * dw] += x[ni, ci, i, j] * W[ci, fi, ki, kj]
    y = full[:, :, ph:full.shape[2] - ph, pw:full.shape[3] - pw]
    return y + (b.reshape(1, -1, 1, 1) if b is not None else 0)


@pytest.mark.parametrize("config, shape", [
    ({"filters": 2, "kernel_size": 3}, (2, 2, 3, 3)),
    ({"filters": 3, "kernel_size": 2, "stride": 2}, (2, 2, 2, 3)),
    ({"filters": 2, "kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1}, (1, 2, 3, 3)),
    ({"filters": 1, "kernel_size": [3, 2], "stride": [2, 3], "padding": [1, 0], "output_padding": [0, 2],
      "dilation": [1, 2], "use_bias": False}, (2, 3, 2, 3)),
])
def test_conv2d_transpose(config, shape):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape)
    layer = make(Conv2DTranspose, **config)
    specs = layer.param_specs(shape[1:])
    params = {k: rng.standard_normal(s.shape) for k, s in specs.items()}

    def ref(params, x):
        return conv_transpose_reference(x, params["W"], params.get("b"), layer.stride, layer.padding,
                                        layer.output_padding, layer.dilation)

    check_layer(layer, params, x, ref)
    assert layer.output_shape(shape[1:]) == ref(params, x).shape[1:]


def test_conv2d_transpose_shape_errors():
    with pytest.raises(ShapeError, match="output_padding"):
        make(Conv2DTranspose, filters=1, kernel_size=3, stride=2, output_padding=2).output_shape((1, 4, 4))
    with pytest.raises(ShapeError, match="crops the whole"):
        make(Conv2DTranspose, filters=1, kernel_size=1, padding=2).output_shape((1, 2, 2))


# -- pooling ---------------------------------------------------------------------------------------

def pool_reference(x, k, s, p, ceil, kind, count_include_pad=False):
    """PyTorch's definition: output size, then each window clipped to the input (and padding)."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = as_pair(k), as_pair(s), as_pair(p)

    def size(length, kk, ss, pp):
        num = length + 2 * pp - kk
        out = (-(-num // ss) if ceil else num // ss) + 1
        if ceil and (out - 1) * ss >= length + pp:
            out -= 1
        return out

    ho, wo = size(h, kh, sh, ph), size(w, kw, sw, pw)
    y = np.zeros((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            hs, ws = i * sh - ph, j * sw - pw
            he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
            pool_size = (he - hs) * (we - ws)
            hs0, ws0, he0, we0 = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            block = x[:, :, hs0:he0, ws0:we0]
            if kind == "max":
                y[:, :, i, j] = block.max(axis=(2, 3))
            else:
                div = pool_size if count_include_pad else (he0 - hs0) * (we0 - ws0)
                y[:, :, i, j] = block.sum(axis=(2, 3)) / div
    return y


@pytest.mark.parametrize("kind, count_include_pad", [("max", False), ("avg", False), ("avg", True)])
@pytest.mark.parametrize("k, s, p, ceil, hw", [
    (2, 2, 0, True, (5, 5)),
    (3, 2, 1, True, (6, 5)),
    (3, 2, 1, False, (6, 5)),
    ([3, 2], [2, 3], [1, 0], True, (7, 6)),
    (2, 3, 0, True, (6, 7)),  # a partial window that would start past the input is dropped
])
def test_pooling_ceil_mode_and_padding_count(kind, count_include_pad, k, s, p, ceil, hw):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, *hw))
    config = {"pool_size": k, "stride": s, "padding": p, "ceil_mode": ceil}
    if kind == "avg":
        config["count_include_pad"] = count_include_pad
    layer = make(MaxPool2D if kind == "max" else AvgPool2D, **config)
    ref = lambda params, x: pool_reference(x, k, s, p, ceil, kind, count_include_pad)  # noqa: E731
    check_layer(layer, {}, x, ref)
    assert layer.output_shape((2, *hw)) == ref({}, x).shape[1:]


def test_global_max_pool():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 4, 5))
    x[0, 1, 1, 2] = x[0, 1, 3, 0] = 10.0  # a tie: the first in row-major order takes the gradient
    check_layer(make(GlobalMaxPool2D), {}, x[1:], lambda params, x: x.max(axis=(2, 3)))
    y, cache = make(GlobalMaxPool2D).forward({}, x)
    dx, _ = make(GlobalMaxPool2D).backward({}, cache, np.ones_like(y))
    assert dx[0, 1, 1, 2] == 1 and dx[0, 1, 3, 0] == 0 and dx.sum() == 6


# -- dropout2d --------------------------------------------------------------------------------------

def test_dropout2d_drops_whole_channels():
    x = np.random.default_rng(7).standard_normal((200, 8, 3, 3)) + 5
    layer = make(Dropout2D, rate=0.25)
    y, cache = layer.forward({}, x, training=True, rng=np.random.default_rng(1))
    for ni in range(x.shape[0]):
        for ci in range(x.shape[1]):
            channel = y[ni, ci]
            assert np.all(channel == 0) or np.allclose(channel, x[ni, ci] / 0.75)
    dropped = np.mean([np.all(y[ni, ci] == 0) for ni in range(200) for ci in range(8)])
    assert 0.2 < dropped < 0.3
    dy = np.ones_like(x)
    dx, _ = layer.backward({}, cache, dy)
    np.testing.assert_array_equal(dx, (y != 0) / 0.75)
    y_eval, _ = layer.forward({}, x, training=False)
    assert y_eval is x
    with pytest.raises(ShapeError):
        layer.output_shape((8,))


def test_batch_norm_after_dense_on_the_last_axis_is_not_folded_into_the_units():
    # channels (axis 1) and units are both 4 here: folding the batch norm's per-channel scale
    # into W's columns would broadcast without error and give wrong numbers
    from layerkit.modelfile.build import build_model
    from layerkit.modelfile.spec import spec_from_dict

    spec = spec_from_dict({"format": 1, "name": "m", "input": {"shape": [4, 3, 5]},
                           "layers": [{"type": "dense", "units": 4}, {"type": "batch_norm"}],
                           "loss": {"type": "mse"}})  # a feature map out: the class-score default refuses it
    model = build_model(spec)
    rng = np.random.default_rng(8)
    state = model.state[model.nodes[1].name]
    state["running_mean"][...] = rng.standard_normal(4)
    state["running_var"][...] = rng.uniform(0.5, 2, 4)
    x = rng.standard_normal((3, 4, 3, 5)).astype(np.float32)
    np.testing.assert_allclose(model.infer(x), model.forward(x, training=False)[0], rtol=1e-5, atol=1e-6)
