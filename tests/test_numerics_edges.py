"""Numerics found by comparison with PyTorch (issue 19, item 15): conv2d_transpose with
output_padding at or above the stride, and losses whose every target is ignore_index."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from layerkit.layers.conv_transpose import Conv2DTranspose
from layerkit.nn.losses import NLLLoss, SoftmaxCrossEntropy
from loss_support import numeric_grad


def _reference(x, w, b, stride, padding, dilation, output_padding):
    """ConvTranspose2d by its definition, one input pixel and tap at a time, in float64."""
    n, c, h, wd = x.shape
    f, kh, kw = w.shape[1:]
    (sh, sw), (ph, pw), (dh, dw), (oph, opw) = stride, padding, dilation, output_padding
    ho = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    wo = (wd - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    y = np.zeros((n, f, ho, wo)) + b.reshape(1, f, 1, 1)
    for r in range(h):
        for q in range(wd):
            for i in range(kh):
                for j in range(kw):
                    rr, qq = r * sh + i * dh - ph, q * sw + j * dw - pw
                    if 0 <= rr < ho and 0 <= qq < wo:
                        y[:, :, rr, qq] += x[:, :, r, q] @ w[:, :, i, j]
    return y


CASES = [
    # the case: output_padding 1 = stride 1, below the dilation 2
    dict(kernel_size=2, stride=1, padding=0, dilation=2, output_padding=1),
    dict(kernel_size=2, stride=1, padding=1, dilation=3, output_padding=[2, 1]),
    dict(kernel_size=[3, 2], stride=[2, 1], padding=[1, 0], dilation=[3, 2], output_padding=[2, 1]),
    dict(kernel_size=3, stride=2, padding=1, dilation=1, output_padding=1),  # the usual case, unchanged
]


def _pair(v):
    return tuple(v) if isinstance(v, list) else (v, v)


@pytest.mark.parametrize("config", CASES, ids=str)
def test_conv2d_transpose_matches_the_definition_and_its_gradients(config):
    rng = np.random.default_rng(3)
    layer = Conv2DTranspose(filters=2, use_bias=True, init="he_normal", **config)
    x = rng.standard_normal((2, 3, 3, 4))
    params = {"W": rng.standard_normal((3, 2, *_pair(config["kernel_size"]))), "b": rng.standard_normal(2)}
    y, cache = layer.forward(params, x)
    want = _reference(x, params["W"], params["b"], *(_pair(config[k]) for k in
                                                      ("stride", "padding", "dilation", "output_padding")))
    assert y.shape[1:] == layer.output_shape(x.shape[1:]) == want.shape[1:]
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)

    # backward against central differences of sum(y * g)
    g = rng.standard_normal(y.shape)
    dx, grads = layer.backward(params, cache, g)

    def total(xv, pv):
        return float((layer.forward(pv, xv)[0] * g).sum())

    eps = 1e-6
    for name, arr in [("x", x), *params.items()]:
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + eps
            up = total(x, params)
            arr[idx] = old - eps
            down = total(x, params)
            arr[idx] = old
            num[idx] = (up - down) / (2 * eps)
        got = dx if name == "x" else grads[name]
        np.testing.assert_allclose(got, num, rtol=1e-6, atol=1e-6, err_msg=name)


def test_output_padding_must_stay_below_the_stride_or_the_dilation():
    from layerkit.errors import ShapeError

    with pytest.raises(ShapeError, match="smaller than the stride"):
        Conv2DTranspose(filters=1, kernel_size=2, stride=1, padding=0, dilation=2, output_padding=2,
                        use_bias=True, init="he_normal").output_shape((1, 3, 4))


@pytest.mark.parametrize("loss_cls", [NLLLoss, SoftmaxCrossEntropy])
@pytest.mark.parametrize("extra", [{}, {"class_weights": [1.0, 2.0, 0.5]}, {"label_smoothing": 0.1}], ids=str)
def test_every_target_ignored_gives_nan_mean_and_zero_gradient(loss_cls, extra):
    if loss_cls is NLLLoss and "label_smoothing" in extra:
        pytest.skip("nll has no label smoothing")
    loss = loss_cls(ignore_index=1, **extra)
    out = np.log(np.full((4, 3), 1 / 3)) + np.random.default_rng(0).standard_normal((4, 3))
    target = np.ones(4, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 RuntimeWarning on the way
        value, cache = loss.forward(out, target)
        grad = loss.backward(cache)
    assert np.isnan(value)  # PyTorch's mean over no counted target
    assert grad.shape == out.shape and not grad.any()
    total, cache = loss_cls(ignore_index=1, reduction="sum", **extra).forward(out, target)
    assert total == 0.0


@pytest.mark.parametrize("loss_cls", [NLLLoss, SoftmaxCrossEntropy])
def test_a_partly_ignored_batch_still_has_the_right_gradient(loss_cls):
    loss = loss_cls(ignore_index=2, class_weights=[1.0, 2.0, 0.5])
    out = np.random.default_rng(1).standard_normal((5, 3))
    target = np.array([2, 0, 2, 1, 2])
    value, cache = loss.forward(out, target)
    np.testing.assert_allclose(loss.backward(cache), numeric_grad(loss, out, target), rtol=1e-6, atol=1e-8)
