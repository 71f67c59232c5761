"""Losses against direct formulas and numerical differences."""

from __future__ import annotations

import numpy as np
import pytest

from layerkit.errors import DataError
from layerkit.nn.elementwise_losses import MeanSquaredError
from layerkit.nn.losses import SoftmaxCrossEntropy
from layerkit.plugins.manager import load_registry
from loss_support import numeric_grad


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_registered():
    registry = load_registry(entry_points=False)
    assert {"softmax_cross_entropy", "mse"} <= set(registry.names("loss"))


def test_cross_entropy_value_and_gradient_with_class_ids():
    rng = np.random.default_rng(0)
    out = rng.standard_normal((5, 4))
    ids = np.array([0, 3, 1, 1, 2])
    loss = SoftmaxCrossEntropy(label_smoothing=0)
    value, cache = loss.forward(out, ids)
    p = softmax(out)
    assert isinstance(value, float)
    assert value == pytest.approx(-np.log(p[np.arange(5), ids]).mean(), rel=1e-12)
    onehot = np.eye(4)[ids]
    np.testing.assert_allclose(loss.backward(cache), (p - onehot) / 5, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(loss.backward(cache), numeric_grad(loss, out, ids), rtol=1e-6, atol=1e-9)


def test_cross_entropy_with_probability_rows_equals_ids_for_one_hot():
    rng = np.random.default_rng(1)
    out = rng.standard_normal((3, 5))
    ids = np.array([4, 0, 2])
    loss = SoftmaxCrossEntropy()
    a, ca = loss.forward(out, ids)
    b, cb = loss.forward(out, np.eye(5)[ids])
    assert a == pytest.approx(b, rel=1e-12)
    np.testing.assert_allclose(loss.backward(ca), loss.backward(cb), atol=1e-15)
    soft = rng.dirichlet(np.ones(5), size=3)
    value, cache = loss.forward(out, soft)
    assert value == pytest.approx(-(soft * np.log(softmax(out))).sum() / 3, rel=1e-12)
    np.testing.assert_allclose(loss.backward(cache), (softmax(out) - soft) / 3, atol=1e-15)


@pytest.mark.parametrize("rows", [False, True], ids=["ids", "rows"])
def test_label_smoothing(rows):
    rng = np.random.default_rng(2)
    out = rng.standard_normal((4, 3))
    ids = np.array([2, 0, 1, 1])
    target = np.eye(3)[ids] if rows else ids
    loss = SoftmaxCrossEntropy(label_smoothing=0.1)
    value, cache = loss.forward(out, target)
    smoothed = np.eye(3)[ids] * 0.9 + 0.1 / 3
    assert value == pytest.approx(-(smoothed * np.log(softmax(out))).sum() / 4, rel=1e-12)
    np.testing.assert_allclose(loss.backward(cache), (softmax(out) - smoothed) / 4, atol=1e-15)
    np.testing.assert_allclose(loss.backward(cache), numeric_grad(loss, out, target), rtol=1e-6, atol=1e-9)


def test_cross_entropy_is_stable_for_huge_logits():
    loss = SoftmaxCrossEntropy()
    out = np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 0.0]], dtype=np.float32)
    value, cache = loss.forward(out, np.array([0, 2]))
    assert np.isfinite(value)
    assert value == pytest.approx((0 + (1e4 + np.log(2))) / 2, rel=1e-6)
    grad = loss.backward(cache)
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(grad, [[0, 0, 0], [0.25, 0.25, -0.5]], atol=1e-7)


def test_float32_stays_float32_and_predict():
    rng = np.random.default_rng(3)
    out = rng.standard_normal((6, 4)).astype(np.float32)
    ids = rng.integers(0, 4, 6)
    for loss in (SoftmaxCrossEntropy(), SoftmaxCrossEntropy(label_smoothing=0.2), MeanSquaredError()):
        for target in (ids, np.eye(4)[ids]):  # float64 rows must not upcast the gradient
            value, cache = loss.forward(out, target)
            assert isinstance(value, float)
            assert loss.backward(cache).dtype == np.float32
        np.testing.assert_array_equal(loss.predict(out), out.argmax(axis=1))


def test_mse_value_and_gradient():
    rng = np.random.default_rng(4)
    out = rng.standard_normal((5, 3))
    target = rng.standard_normal((5, 3))
    loss = MeanSquaredError()
    value, cache = loss.forward(out, target)
    assert value == pytest.approx(((out - target) ** 2).sum() / 5, rel=1e-12)
    np.testing.assert_allclose(loss.backward(cache), 2 * (out - target) / 5, rtol=1e-12)
    np.testing.assert_allclose(loss.backward(cache), numeric_grad(loss, out, target), rtol=1e-6, atol=1e-9)
    ids = np.array([0, 2, 1, 1, 0])
    a, _ = loss.forward(out, ids)
    b, _ = loss.forward(out, np.eye(3)[ids])
    assert a == pytest.approx(b, rel=1e-12)


@pytest.mark.parametrize("target, message", [
    (np.array([0, 5]), "target class 5 is out of range for 3 outputs"),
    (np.array([0, -1]), "target class -1 is out of range"),
    (np.array([0, 1, 2]), "3 targets for a batch of 2"),
    (np.zeros((2, 4)), "do not match outputs"),
    (np.array([0.5, 1.0]), "integer class ids"),
])
def test_bad_targets(target, message):
    for loss in (SoftmaxCrossEntropy(), MeanSquaredError()):
        with pytest.raises(DataError, match=message):
            loss.forward(np.zeros((2, 3)), target)
