"""Cross-checks against PyTorch in float64, where PyTorch is installed (it is never a dependency:
`pip install torch` next to layerkit to run these). Each layer/loss/optimizer also has a plain-numpy
reference test that runs everywhere."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (optional cross-check)")
F = torch.nn.functional

from layerkit.nn.elementwise_losses import (L1, BinaryCrossEntropy,  # noqa: E402
                                            BinaryCrossEntropyWithLogits, Huber, MeanSquaredError, SmoothL1)
from layerkit.nn.losses import MulticlassHinge, NLLLoss, SoftmaxCrossEntropy  # noqa: E402


def torch_loss_and_grad(fn, out, *args):
    z = torch.tensor(out, dtype=torch.float64, requires_grad=True)
    value = fn(z, *args)
    value.backward()
    return float(value.detach()), z.grad.numpy()


def assert_same(ours, theirs):
    (v1, g1), (v2, g2) = ours, theirs
    assert v1 == pytest.approx(v2, rel=1e-12, abs=1e-15)
    np.testing.assert_allclose(g1, g2, rtol=1e-11, atol=1e-15)


def run(loss, out, target):
    value, cache = loss.forward(out, target)
    return value, loss.backward(cache)


RNG = np.random.default_rng(0)
OUT = RNG.standard_normal((7, 4)) * 2
IDS = np.array([0, 3, 1, 1, 2, 0, 3])
W = [0.5, 2.0, 1.0, 3.0]


@pytest.mark.parametrize("config", [{}, {"class_weights": W, "label_smoothing": 0.2}, {"ignore_index": 1},
                                    {"class_weights": W, "ignore_index": 3, "reduction": "sum",
                                     "label_smoothing": 0.1}])
def test_cross_entropy(config):
    kwargs = {"weight": torch.tensor(config["class_weights"], dtype=torch.float64)
              if "class_weights" in config else None,
              "ignore_index": config.get("ignore_index", -100), "reduction": config.get("reduction", "mean"),
              "label_smoothing": config.get("label_smoothing", 0.0)}
    assert_same(run(SoftmaxCrossEntropy(**config), OUT, IDS),
                torch_loss_and_grad(lambda z: F.cross_entropy(z, torch.tensor(IDS), **kwargs), OUT))
    logp = OUT - np.log(np.exp(OUT).sum(axis=1, keepdims=True))
    nll_config = {k: v for k, v in config.items() if k != "label_smoothing"}
    kwargs.pop("label_smoothing")
    assert_same(run(NLLLoss(**nll_config), logp, IDS),
                torch_loss_and_grad(lambda z: F.nll_loss(z, torch.tensor(IDS), **kwargs), logp))


def test_cross_entropy_probability_rows_with_weights():
    rows = RNG.dirichlet(np.ones(4), size=7)
    assert_same(run(SoftmaxCrossEntropy(class_weights=W, label_smoothing=0.1), OUT, rows),
                torch_loss_and_grad(lambda z: F.cross_entropy(z, torch.tensor(rows), weight=torch.tensor(W, dtype=torch.float64),
                                                              label_smoothing=0.1), OUT))


@pytest.mark.parametrize("config", [{}, {"p": 2, "margin": 0.7, "class_weights": W}, {"reduction": "sum"}])
def test_multi_margin(config):
    kwargs = {"p": config.get("p", 1), "margin": config.get("margin", 1.0),
              "weight": torch.tensor(config["class_weights"], dtype=torch.float64) if "class_weights" in config else None,
              "reduction": config.get("reduction", "mean")}
    assert_same(run(MulticlassHinge(**config), OUT, IDS),
                torch_loss_and_grad(lambda z: F.multi_margin_loss(z, torch.tensor(IDS), **kwargs), OUT))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_elementwise(reduction):
    target = RNG.uniform(0, 1, OUT.shape)
    t = torch.tensor(target)
    prob = 1 / (1 + np.exp(-OUT))
    cases = [
        (MeanSquaredError(reduction=reduction), OUT, lambda z: F.mse_loss(z, t, reduction=reduction)),
        (L1(reduction=reduction), OUT, lambda z: F.l1_loss(z, t, reduction=reduction)),
        (Huber(delta=0.8, reduction=reduction), OUT, lambda z: F.huber_loss(z, t, delta=0.8, reduction=reduction)),
        (SmoothL1(beta=0.5, reduction=reduction), OUT,
         lambda z: F.smooth_l1_loss(z, t, beta=0.5, reduction=reduction)),
        (BinaryCrossEntropy(weight=W, reduction=reduction), prob,
         lambda z: F.binary_cross_entropy(z, t, weight=torch.tensor(W, dtype=torch.float64), reduction=reduction)),
        (BinaryCrossEntropyWithLogits(weight=W, pos_weight=[2.0, 0.5, 1.0, 3.0], reduction=reduction), OUT,
         lambda z: F.binary_cross_entropy_with_logits(z, t, weight=torch.tensor(W, dtype=torch.float64),
                                                      pos_weight=torch.tensor([2.0, 0.5, 1.0, 3.0], dtype=torch.float64),
                                                      reduction=reduction)),
    ]
    for loss, out, fn in cases:
        assert_same(run(loss, out, target), torch_loss_and_grad(fn, out))


# -- optimizers ---------------------------------------------------------------------------------------

from layerkit.nn.optimizers import SGD, Adagrad, AdamW  # noqa: E402


@pytest.mark.parametrize("name, ours, theirs", [
    ("sgd", dict(lr=0.1, momentum=0.9, dampening=0.3), dict(lr=0.1, momentum=0.9, dampening=0.3)),
    ("sgd-nesterov", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
     dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("adamw", dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, weight_decay=0.1)),
    ("adagrad", dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.2),
     dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.2)),
])
@pytest.mark.parametrize("clip", [None, {"max_norm": 0.5}, {"value": 0.2}])
def test_optimizer_steps(name, ours, theirs, clip):
    cls = {"sgd": SGD, "sgd-nesterov": SGD, "adamw": AdamW, "adagrad": Adagrad}[name]
    tcls = {"sgd": torch.optim.SGD, "sgd-nesterov": torch.optim.SGD, "adamw": torch.optim.AdamW,
            "adagrad": torch.optim.Adagrad}[name]
    rng = np.random.default_rng(5)
    w0 = [rng.standard_normal((3, 2)), rng.standard_normal(2)]
    grads = [[rng.standard_normal(w.shape) for w in w0] for _ in range(5)]
    ws = [w.copy() for w in w0]
    opt = cls(ws, decay=[True, True], **ours)
    if clip:
        opt.set_clipping(clip.get("max_norm"), clip.get("value"))
    tw = [torch.tensor(w, requires_grad=True) for w in w0]
    topt = tcls(tw, **theirs)
    for gs in grads:
        opt.step([g.copy() for g in gs])
        for t, g in zip(tw, gs):
            t.grad = torch.tensor(g)
        if clip and "value" in clip:
            torch.nn.utils.clip_grad_value_(tw, clip["value"])
        if clip and "max_norm" in clip:
            torch.nn.utils.clip_grad_norm_(tw, clip["max_norm"])
        topt.step()
    for w, t in zip(ws, tw):
        np.testing.assert_allclose(w, t.detach().numpy(), rtol=1e-12, atol=1e-14)
