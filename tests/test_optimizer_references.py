"""SGD dampening, AdamW, Adagrad and gradient clipping against scalar references written here
(PyTorch's documented update rules, element by element in float64), over several steps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from layerkit.errors import ModelFileError
from layerkit.nn.optimizers import SGD, Adagrad, AdamW

STEPS = 4


def gradient_sequence(shape=(3,), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(STEPS)]


def run(opt_cls, w0, grads, decay=True, **hyper):
    w = w0.copy()
    opt = opt_cls([w], decay=[decay], **hyper)
    for g in grads:
        opt.step([g.copy()])
    return w


def sgd_reference(w0, grads, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
    w = list(w0)
    buf = [None] * len(w)
    for g in grads:
        for j in range(len(w)):
            d = g[j] + weight_decay * w[j]
            if momentum:
                buf[j] = d if buf[j] is None else momentum * buf[j] + (1 - dampening) * d
                d = d + momentum * buf[j] if nesterov else buf[j]
            w[j] -= lr * d
    return w


@pytest.mark.parametrize("hyper", [
    {"momentum": 0.9, "dampening": 0.5},
    {"momentum": 0.8, "dampening": 0.1, "weight_decay": 0.05},
    {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
])
def test_sgd_momentum_dampening(hyper):
    w0, grads = np.array([1.0, -2.0, 0.5]), gradient_sequence()
    ours = run(SGD, w0, grads, lr=0.1, **hyper)
    np.testing.assert_allclose(ours, sgd_reference(w0, grads, 0.1, **hyper), rtol=1e-13)
    if hyper.get("dampening"):  # the first step ignores dampening (PyTorch): damping it too is wrong
        wrong = sgd_reference(w0, [g * (1 - hyper["dampening"]) for g in grads[:1]] + grads[1:], 0.1, **hyper)
        assert not np.allclose(ours, wrong, rtol=1e-6)


def test_nesterov_with_dampening_is_refused():
    with pytest.raises(ModelFileError, match="dampening 0"):
        SGD([np.zeros(2)], lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)


def adamw_reference(w0, grads, lr, wd, decay, beta1=0.9, beta2=0.999, eps=1e-8):
    w = list(w0)
    m, v = [0.0] * len(w), [0.0] * len(w)
    for t, g in enumerate(grads, 1):
        for j in range(len(w)):
            if decay:
                w[j] *= 1 - lr * wd
            m[j] = beta1 * m[j] + (1 - beta1) * g[j]
            v[j] = beta2 * v[j] + (1 - beta2) * g[j] ** 2
            mhat, vhat = m[j] / (1 - beta1 ** t), v[j] / (1 - beta2 ** t)
            w[j] -= lr * mhat / (math.sqrt(vhat) + eps)
    return w


@pytest.mark.parametrize("decay", [True, False])
def test_adamw_decoupled_decay(decay):
    w0, grads = np.array([1.0, -2.0, 0.5]), gradient_sequence(seed=1)
    ours = run(AdamW, w0, grads, decay=decay, lr=0.01, weight_decay=0.1, beta1=0.8)
    np.testing.assert_allclose(ours, adamw_reference(w0, grads, 0.01, 0.1, decay, beta1=0.8), rtol=1e-13)
    if decay:  # decoupled is not Adam with L2 in the gradient
        from layerkit.nn.optimizers import Adam
        assert not np.allclose(run(Adam, w0, grads, lr=0.01, weight_decay=0.1, beta1=0.8), ours, rtol=1e-6)


def test_adagrad():
    w0, grads = np.array([1.0, -2.0, 0.5]), gradient_sequence(seed=2)
    lr, lr_decay, init, eps = 0.1, 0.2, 0.3, 1e-10
    w, s = list(w0), [init] * 3
    for t, g in enumerate(grads, 1):
        for j in range(3):
            s[j] += g[j] ** 2
            w[j] -= lr / (1 + (t - 1) * lr_decay) * g[j] / (math.sqrt(s[j]) + eps)
    ours = run(Adagrad, w0, grads, lr=lr, lr_decay=lr_decay, initial_accumulator_value=init)
    np.testing.assert_allclose(ours, w, rtol=1e-13)


@pytest.mark.parametrize("max_norm, value", [(0.5, None), (100.0, None), (None, 0.3), (0.4, 0.3)])
def test_gradient_clipping(max_norm, value):
    a, b = np.array([1.0, -2.0]), np.array([[0.5, 3.0], [-0.1, 0.2]])
    ga, gb = np.array([0.6, -0.8]), np.array([[1.5, 0.1], [-0.2, 0.0]])
    opt = SGD([a, b], lr=1.0, decay=[True, True], weight_decay=0.5)
    opt.set_clipping(max_norm, value)
    a0, b0 = a.copy(), b.copy()
    opt.step([ga.copy(), gb.copy()])
    flat = [x for g in (ga, gb) for x in g.ravel()]
    if value is not None:
        flat = [min(max(x, -value), value) for x in flat]
    if max_norm is not None:
        norm = math.sqrt(sum(x * x for x in flat))
        coef = max_norm / (norm + 1e-6)
        if coef < 1:
            flat = [x * coef for x in flat]
    # weight decay is added after clipping (PyTorch: clip .grad, then step adds the L2 term)
    expected = np.array(flat) + 0.5 * np.concatenate([a0.ravel(), b0.ravel()])
    np.testing.assert_allclose(np.concatenate([a0 - a, (b0 - b).ravel()]), expected, rtol=1e-13)


def test_gradient_clipping_is_a_training_setting(tmp_path):
    from layerkit.errors import ModelFileError as Bad
    from layerkit.modelfile.spec import spec_from_dict
    from train_support import mlp_model

    from layerkit.data import load_data
    from layerkit.modelfile.build import build_model
    from layerkit.training.runs import num_outputs
    from layerkit.training.trainer import Trainer, build_loss

    spec = spec_from_dict(mlp_model(gradient_clipping={"max_norm": 1.0, "value": 0.5}))
    model = build_model(spec)
    data = load_data("mnist", {"train_limit": 10, "test_limit": 10}, seed=0, input_shape=spec.input_shape,
                     num_outputs=num_outputs(model))
    opt = Trainer(model, build_loss(spec), data, spec.training).optimizer
    assert (opt.clip_norm, opt.clip_value) == (1.0, 0.5)
    with pytest.raises(Bad, match="gradient_clipping"):
        spec_from_dict(mlp_model(gradient_clipping={"max_norm": 0}))
    with pytest.raises(Bad, match="gradient_clipping"):
        spec_from_dict(mlp_model(gradient_clipping={"norm": 1.0}))
