"""The class-score and element-wise losses against references written here with plain loops in
float64 (PyTorch's documented formulas), forward and backward, over their options."""

from __future__ import annotations

import math

import numpy as np
import pytest

from layerkit.errors import DataError
from layerkit.nn.elementwise_losses import (L1, BinaryCrossEntropy, BinaryCrossEntropyWithLogits, Huber,
                                            MeanSquaredError, SmoothL1)
from layerkit.nn.losses import MulticlassHinge, NLLLoss, SoftmaxCrossEntropy
from loss_support import numeric_grad


def check(loss, out, target, reference):
    value, cache = loss.forward(out, target)
    assert value == pytest.approx(reference(out), rel=1e-12, abs=1e-14)
    # the gradient against the reference's numerical derivative, and the layer's own
    grad = loss.backward(cache)
    np.testing.assert_allclose(grad, _numeric(reference, out), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(grad, numeric_grad(loss, out, target), rtol=1e-6, atol=1e-9)


def _numeric(f, out, eps=1e-6):
    grad = np.zeros_like(out)
    for idx in np.ndindex(out.shape):
        old = out[idx]
        out[idx] = old + eps
        up = f(out)
        out[idx] = old - eps
        down = f(out)
        out[idx] = old
        grad[idx] = (up - down) / (2 * eps)
    return grad


def log_softmax_row(row):
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


# -- class-score losses ------------------------------------------------------------------------------

def ce_reference(target, weights=None, ignore=None, smoothing=0.0, reduction="mean"):
    def f(out):
        n, k = out.shape
        w = weights or [1.0] * k
        total, norm = 0.0, 0.0
        for i in range(n):
            lp = log_softmax_row(out[i])
            if target.ndim == 1:
                y = int(target[i])
                if y == ignore:
                    continue
                nll = -w[y] * lp[y]
                smooth = -sum(w[j] * lp[j] for j in range(k))
                total += (1 - smoothing) * nll + smoothing / k * smooth
                norm += w[y]
            else:
                row = [(1 - smoothing) * target[i, j] + smoothing / k for j in range(k)]
                total += -sum(w[j] * row[j] * lp[j] for j in range(k))
                norm += 1
        return total / norm if reduction == "mean" else total
    return f


CE_CASES = [
    ({}, "ids"),
    ({"class_weights": [0.5, 2.0, 1.0, 3.0]}, "ids"),
    ({"class_weights": [0.5, 2.0, 1.0, 3.0], "label_smoothing": 0.2}, "ids"),
    ({"ignore_index": 1, "label_smoothing": 0.1}, "ids"),
    ({"ignore_index": -100, "class_weights": [1.0, 2.0, 0.5, 1.5], "reduction": "sum"}, "ids"),
    ({"class_weights": [0.5, 2.0, 1.0, 3.0], "label_smoothing": 0.3}, "rows"),
    ({"reduction": "sum", "label_smoothing": 0.1}, "rows"),
]


@pytest.mark.parametrize("config, kind", CE_CASES)
def test_softmax_cross_entropy_options(config, kind):
    rng = np.random.default_rng(0)
    out = rng.standard_normal((6, 4)) * 2
    ids = np.array([0, 1, 3, 1, 2, 1])
    if config.get("ignore_index") == -100:
        ids[2] = -100
    target = ids if kind == "ids" else rng.dirichlet(np.ones(4), size=6)
    loss = SoftmaxCrossEntropy(**config)
    ref = ce_reference(target, config.get("class_weights"), config.get("ignore_index"),
                       config.get("label_smoothing", 0.0), config.get("reduction", "mean"))
    check(loss, out, target, ref)
    assert (loss.sample_coupling == "none") == (config.get("reduction", "mean") == "mean"
                                                and "ignore_index" not in config and "class_weights" not in config)


@pytest.mark.parametrize("config", [{}, {"class_weights": [1.0, 3.0, 0.5]}, {"ignore_index": 2},
                                    {"class_weights": [1.0, 3.0, 0.5], "ignore_index": 0, "reduction": "sum"}])
def test_nll(config):
    rng = np.random.default_rng(1)
    z = rng.standard_normal((5, 3))
    out = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    ids = np.array([2, 0, 1, 2, 0])
    w, ignore = config.get("class_weights") or [1.0] * 3, config.get("ignore_index")

    def ref(o):
        kept = [i for i in range(5) if ids[i] != ignore]
        total = -sum(w[ids[i]] * o[i, ids[i]] for i in kept)
        return total if config.get("reduction") == "sum" else total / sum(w[ids[i]] for i in kept)

    check(NLLLoss(**config), out, ids, ref)
    # log_softmax + nll is softmax cross-entropy
    ce_config = {k: v for k, v in config.items()}
    assert NLLLoss(**config).forward(out, ids)[0] == pytest.approx(
        SoftmaxCrossEntropy(**ce_config).forward(z, ids)[0], rel=1e-12)


@pytest.mark.parametrize("config", [{}, {"p": 2, "margin": 0.5}, {"class_weights": [1.0, 2.0, 0.5, 1.0]},
                                    {"average_over_classes": False, "reduction": "sum"}])
def test_multiclass_hinge(config):
    rng = np.random.default_rng(2)
    out = rng.standard_normal((6, 4))
    ids = np.array([0, 3, 1, 1, 2, 0])
    margin, p = config.get("margin", 1.0), config.get("p", 1)
    w = config.get("class_weights") or [1.0] * 4

    def ref(o):
        total = 0.0
        for i in range(6):
            y = ids[i]
            s = sum(max(0.0, margin - o[i, y] + o[i, j]) ** p for j in range(4) if j != y)
            total += w[y] * s / (4 if config.get("average_over_classes", True) else 1)
        return total if config.get("reduction") == "sum" else total / 6

    # keep every margin away from the hinge's kink so the numerical derivative is defined
    for i, y in enumerate(ids):
        for j in range(4):
            if j != y and abs(margin - out[i, y] + out[i, j]) < 1e-3:
                out[i, j] += 0.01
    check(MulticlassHinge(**config), out, ids, ref)


def test_class_option_errors():
    with pytest.raises(DataError, match="class_weights has 2 entries for 3 outputs"):
        SoftmaxCrossEntropy(class_weights=[1.0, 2.0]).forward(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(DataError, match="target class -100 is out of range"):
        SoftmaxCrossEntropy().forward(np.zeros((2, 3)), np.array([0, -100]))
    with pytest.raises(DataError, match="needs class-id targets"):
        NLLLoss().forward(np.zeros((2, 3)), np.zeros((2, 3)))


# -- element-wise losses ----------------------------------------------------------------------------

def reduce(terms, n, reduction):
    total = sum(terms)
    return {"mean": total / len(terms), "sum": total, "batchmean": total / n}[reduction]


def elementwise_ref(term, target, weight=None):
    def f(out, reduction):
        n = out.shape[0]
        terms = []
        for idx in np.ndindex(out.shape):
            w = weight[idx[1]] if weight is not None else 1.0
            terms.append(w * term(out[idx], target[idx]))
        return reduce(terms, n, reduction)
    return f


def huber_term(delta):
    return lambda o, t: 0.5 * (o - t) ** 2 if abs(o - t) <= delta else delta * (abs(o - t) - 0.5 * delta)


def smooth_l1_term(beta):
    return lambda o, t: 0.5 * (o - t) ** 2 / beta if abs(o - t) < beta else abs(o - t) - 0.5 * beta


def bce_term(p, t):
    return -(t * max(math.log(p), -100) + (1 - t) * max(math.log(1 - p), -100))


def bce_logits_term(z, t, pw=1.0):
    sig = 1 / (1 + math.exp(-z))
    return -(pw * t * math.log(sig) + (1 - t) * math.log(1 - sig))


@pytest.mark.parametrize("reduction", ["mean", "sum", "batchmean"])
@pytest.mark.parametrize("name", ["mse", "l1", "huber", "smooth_l1", "bce", "bce_logits", "bce_logits_pw"])
def test_elementwise_losses(name, reduction):
    rng = np.random.default_rng(3)
    out = rng.standard_normal((4, 3)) * 2
    target = rng.uniform(0, 1, (4, 3))
    weight = None
    if name == "mse":
        loss, term = MeanSquaredError(reduction=reduction), lambda o, t: (o - t) ** 2
    elif name == "l1":
        loss, term = L1(reduction=reduction), lambda o, t: abs(o - t)
    elif name == "huber":
        loss, term = Huber(delta=0.7, reduction=reduction), huber_term(0.7)
    elif name == "smooth_l1":
        loss, term = SmoothL1(beta=0.6, reduction=reduction), smooth_l1_term(0.6)
    elif name == "bce":
        out = rng.uniform(0.05, 0.95, (4, 3))
        weight = [0.5, 1.0, 2.0]
        loss, term = BinaryCrossEntropy(weight=weight, reduction=reduction), bce_term
    elif name == "bce_logits":
        loss, term = BinaryCrossEntropyWithLogits(reduction=reduction), bce_logits_term
    else:
        pw, weight = [2.0, 0.5, 1.0], [1.0, 3.0, 0.5]
        loss = BinaryCrossEntropyWithLogits(pos_weight=pw, weight=weight, reduction=reduction)
        ref = lambda o: reduce([weight[j] * bce_logits_term(o[i, j], target[i, j], pw[j])  # noqa: E731
                                for i in range(4) for j in range(3)], 4, reduction)
        check(loss, out, target, ref)
        return
    # keep the piecewise losses away from their kinks
    d = out - target
    out[np.abs(np.abs(d) - 0.7) < 1e-3] += 0.01
    out[np.abs(np.abs(d) - 0.6) < 1e-3] += 0.01
    out[np.abs(d) < 1e-3] += 0.01
    ref = elementwise_ref(term, target, weight)
    check(loss, out, target, lambda o: ref(o, reduction))
    assert (loss.sample_coupling == "none") == (reduction != "sum")


def test_bce_with_logits_is_stable_and_matches_sigmoid_bce():
    z = np.array([[-800.0, -30.0, 0.0, 30.0, 800.0]])
    t = np.array([[1.0, 0.0, 1.0, 1.0, 0.0]])
    value, cache = BinaryCrossEntropyWithLogits(reduction="sum").forward(z, t)
    assert value == pytest.approx(800 + math.log1p(math.exp(-30)) + math.log(2) + math.log1p(math.exp(-30)) + 800)
    np.testing.assert_allclose(BinaryCrossEntropyWithLogits(reduction="sum").backward(cache),
                               [[-1, 1 / (1 + math.exp(30)), -0.5, -1 / (1 + math.exp(30)), 1]], rtol=1e-12)
    # saturated probabilities cost 100 per element, as PyTorch's BCELoss clamp
    value, _ = BinaryCrossEntropy(reduction="sum").forward(np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]]))
    assert value == 200.0


def test_elementwise_targets_from_class_ids_and_any_shape():
    out = np.random.default_rng(4).uniform(0.1, 0.9, (3, 4))
    ids = np.array([3, 0, 1])
    loss = BinaryCrossEntropy(reduction="batchmean")
    assert loss.forward(out, ids)[0] == pytest.approx(loss.forward(out, np.eye(4)[ids])[0], rel=1e-14)
    # one output: the id is the 0/1 target, and predict thresholds at 0.5 (logits: at 0)
    single = np.array([[0.2], [0.7], [0.9]])
    assert loss.forward(single, np.array([0, 1, 1]))[0] == pytest.approx(
        -(math.log(0.8) + math.log(0.7) + math.log(0.9)) / 3)
    np.testing.assert_array_equal(loss.predict(single), [0, 1, 1])
    np.testing.assert_array_equal(BinaryCrossEntropyWithLogits().predict(np.array([[-0.1], [0.2]])), [0, 1])
    with pytest.raises(DataError, match="must be 0 or 1"):
        loss.forward(single, np.array([0, 2, 1]))
    # an image-shaped output against an image-shaped target (an autoencoder)
    img = np.random.default_rng(5).uniform(0, 1, (2, 1, 3, 3))
    value, cache = MeanSquaredError(reduction="mean").forward(img, img * 0.5)
    assert value == pytest.approx(((img * 0.5) ** 2).mean())
    assert MeanSquaredError().backward(cache).shape == img.shape
