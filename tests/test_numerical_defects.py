"""The float32 accuracy fixes: batch norm's variance at a large mean, batch norm on one value per
channel, and the sigmoid's relative accuracy far out on the negative side. Each check is shown
failing on the formula it replaced."""

from __future__ import annotations

import numpy as np
import pytest

from layerkit.errors import ShapeError
from layerkit.layers.activations import Sigmoid
from layerkit.layers.normalization import BatchNorm
from layerkit.training.trainer import Trainer, build_loss

from train_support import mlp_model


def bn_reference(x, dy, gamma, beta, eps=1e-5):
    """Training-mode batch norm in float64 from the textbook two-pass formulas: y, dx, dgamma, dbeta."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    m = x.size // x.shape[1]
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    xhat = (x - mean) / np.sqrt(var + eps)
    y = xhat * gamma.reshape(bshape) + beta.reshape(bshape)
    dxhat = dy * gamma.reshape(bshape)
    dx = (dxhat - dxhat.mean(axis=axes, keepdims=True)
          - xhat * (dxhat * xhat).sum(axis=axes, keepdims=True) / m) / np.sqrt(var + eps)
    return y, dx, (dy * xhat).sum(axis=axes), dy.sum(axis=axes), var.reshape(-1)


def run_bn(x, dy, affine=True, dtype=np.float32):
    layer = BatchNorm(momentum=0.0, epsilon=1e-5, affine=affine)
    c = x.shape[1]
    params = {"gamma": np.linspace(0.5, 1.5, c).astype(dtype), "beta": np.linspace(-1, 1, c).astype(dtype)} \
        if affine else {}
    state = {"running_mean": np.zeros(c, dtype), "running_var": np.ones(c, dtype)}
    y, cache = layer.forward(params, x.astype(dtype), training=True, state=state)
    dx, grads = layer.backward(params, cache, dy.astype(dtype))
    return y, dx, grads, state["running_var"]


def naive_float32_variance(x):
    """The one-pass E[x^2] - mean^2 over float32 row sums the layer used before."""
    rows = x.reshape(x.shape[0], x.shape[1], -1)
    s1 = (rows @ np.ones(rows.shape[2], np.float32)).sum(axis=0, dtype=np.float64)
    s2 = np.einsum("ncs,ncs->nc", rows, rows).sum(axis=0, dtype=np.float64)
    m = x.size // x.shape[1]
    return s2 / m - (s1 / m) ** 2


@pytest.mark.parametrize("ratio", [1, 1000])
def test_batch_norm_float32_variance_at_large_mean(ratio):
    rng = np.random.default_rng(0)
    x = (ratio + rng.standard_normal((64, 3, 6, 6))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    gamma, beta = np.linspace(0.5, 1.5, 3), np.linspace(-1, 1, 3)
    y_ref, dx_ref, dg_ref, db_ref, var_ref = bn_reference(x, dy, gamma, beta)
    y, dx, grads, var = run_bn(x, dy)
    # PyTorch's float32 at mean/std 1000 (bench/batchnorm_precision.py): var 7e-8, y 6e-5, dx 2e-7
    assert np.max(np.abs(var - var_ref) / var_ref) < 1e-6
    assert np.max(np.abs(y - y_ref)) < 3e-4
    assert np.max(np.abs(dx - dx_ref)) < 1e-5 * np.max(np.abs(dx_ref))
    np.testing.assert_allclose(grads["gamma"], dg_ref, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(grads["beta"], db_ref, rtol=1e-5, atol=1e-3)
    if ratio == 1000:  # the bound fails the formula the layer replaced
        assert np.max(np.abs(naive_float32_variance(x) - var_ref) / var_ref) > 1e-4


@pytest.mark.parametrize("shape", [(7, 4), (3, 2, 3, 2)], ids=["flat", "maps"])
def test_batch_norm_affine_false_matches_reference(shape):
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal(shape) * 2 + 3, rng.standard_normal(shape)
    y, dx, grads, _ = run_bn(x, dy, affine=False, dtype=np.float64)
    c = shape[1]
    y_ref, dx_ref, *_ = bn_reference(x, dy, np.ones(c), np.zeros(c))
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-9, atol=1e-12)
    assert grads == {}
    assert BatchNorm(affine=False, momentum=0.9, epsilon=1e-5).param_specs((c,)) == {}


def test_batch_norm_refuses_one_value_per_channel_in_training():
    layer = BatchNorm(momentum=0.9, epsilon=1e-5, affine=True)
    params = {"gamma": np.ones(3), "beta": np.zeros(3)}
    state = {"running_mean": np.zeros(3), "running_var": np.ones(3)}
    with pytest.raises(ShapeError, match="more than one value per channel"):
        layer.forward(params, np.ones((1, 3)), training=True, state=state)
    np.testing.assert_array_equal(state["running_var"], 1.0)  # nothing updated
    # as PyTorch: one sample with several pixels per channel is fine, and so is inference
    layer.forward(params, np.arange(12.0).reshape(1, 3, 2, 2), training=True, state=state)
    layer.forward(params, np.ones((1, 3)), training=False, state=state)


def bn_mlp(train_limit, batch_size):
    model = mlp_model(batch_size=batch_size, data={"train_limit": train_limit, "test_limit": 20}, epochs=1)
    model["layers"].insert(2, {"type": "batch_norm"})
    return model


@pytest.mark.parametrize("norm", [True, False])
def test_trainer_drops_a_one_sample_last_batch_only_for_batch_norm(norm):
    from layerkit.data import load_data
    from layerkit.modelfile.build import build_model
    from layerkit.modelfile.spec import spec_from_dict
    from layerkit.training.runs import num_outputs

    spec = spec_from_dict(bn_mlp(41, 20) if norm else mlp_model(batch_size=20, epochs=1,
                                                                data={"train_limit": 41, "test_limit": 20}))
    model = build_model(spec)
    data = load_data("mnist", spec.training["data"], seed=0, input_shape=spec.input_shape,
                     num_outputs=num_outputs(model))
    trainer = Trainer(model, build_loss(spec), data, spec.training)
    assert trainer.steps_per_epoch == (2 if norm else 3)
    trainer.fit()  # the BN model would stop with a ShapeError on a 1-sample batch


# -- sigmoid ----------------------------------------------------------------------------------------

def sigmoid_reference(x):
    """exp(-log(1 + exp(-x))) in float64: a different formula, relative error ~1e-13 for |x| < 700."""
    return np.exp(-np.logaddexp(0.0, -x.astype(np.float64)))


def old_sigmoid(x):
    return (1 + np.tanh(x * 0.5)) * 0.5


@pytest.mark.parametrize("dtype, low, rtol", [(np.float32, -87.0, 2e-6), (np.float64, -700.0, 1e-12)])
def test_sigmoid_relative_accuracy_over_the_range(dtype, low, rtol):
    x = np.linspace(low, 80, 2001).astype(dtype)
    y, cache = Sigmoid().forward({}, x)
    ref = sigmoid_reference(x)
    assert y.dtype == dtype and np.all(y > 0)
    np.testing.assert_allclose(y, ref, rtol=rtol, atol=0)
    # derivative e / (1 + e)^2: accurate on both tails (1 - y would be 0 for large x)
    dx, _ = Sigmoid().backward({}, cache, np.ones_like(x))
    np.testing.assert_allclose(dx, ref * sigmoid_reference(-x), rtol=rtol, atol=0)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(old_sigmoid(x), ref, rtol=rtol, atol=0)


def test_sigmoid_is_zero_only_where_exp_underflows():
    y, _ = Sigmoid().forward({}, np.array([-100.0, -104.0], dtype=np.float32))
    assert y[0] > 0 and y[1] == 0
    assert old_sigmoid(np.float32(-40.0)) == 0
