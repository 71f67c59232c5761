"""Optimizers against updates computed by hand, decay masks, dtypes, state round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from layerkit.errors import CheckpointError, ModelFileError
from layerkit.nn.optimizers import SGD, Adam, RMSprop
from layerkit.plugins.manager import load_registry


def tensors():
    w = np.array([[1.0, -2.0], [0.5, 3.0]], dtype=np.float32)
    b = np.array([0.25, -0.75], dtype=np.float32)
    return w, b


def grads():
    return [np.array([[0.1, -0.2], [0.3, 0.4]], dtype=np.float32), np.array([1.0, -1.0], dtype=np.float32)]


def test_registered_through_the_hook():
    registry = load_registry(entry_points=False)
    assert {"sgd", "adam", "rmsprop"} <= set(registry.names("optimizer"))


def test_plain_sgd():
    w, b = tensors()
    w0, b0 = w.copy(), b.copy()
    opt = SGD([w, b], lr=0.5)
    g = grads()
    opt.step([x.copy() for x in g])
    np.testing.assert_allclose(w, w0 - 0.5 * g[0], rtol=1e-6)
    np.testing.assert_allclose(b, b0 - 0.5 * g[1], rtol=1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_two_steps(nesterov):
    w, _ = tensors()
    w0 = w.astype(np.float64)
    opt = SGD([w], lr=0.1, momentum=0.9, nesterov=nesterov)
    g1 = np.full((2, 2), 0.5, dtype=np.float32)
    g2 = np.full((2, 2), -1.0, dtype=np.float32)
    opt.step([g1.copy()])
    opt.step([g2.copy()])
    v1 = 0.5
    v2 = 0.9 * v1 - 1.0
    if nesterov:
        expected = w0 - 0.1 * (0.5 + 0.9 * v1) - 0.1 * (-1.0 + 0.9 * v2)
    else:
        expected = w0 - 0.1 * v1 - 0.1 * v2
    np.testing.assert_allclose(w, expected, rtol=1e-6)


def test_nesterov_without_momentum_is_refused():
    with pytest.raises(ModelFileError, match="nesterov needs momentum"):
        SGD([np.zeros(2, np.float32)], lr=0.1, nesterov=True)


def test_adam_first_steps_match_the_formula():
    w = np.array([1.0, -1.0, 0.0], dtype=np.float32)
    opt = Adam([w], lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8)
    ref = w.astype(np.float64)
    m = v = np.zeros(3)
    for t, g in enumerate([np.array([0.5, -2.0, 1e-3]), np.array([-0.1, 0.3, 2.0])], start=1):
        opt.step([g.astype(np.float32)])
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        ref = ref - 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    np.testing.assert_allclose(w, ref, rtol=1e-5, atol=1e-7)
    # the first Adam step moves every coordinate by about lr, whatever the gradient's size
    assert opt.t == 2


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_rmsprop_matches_the_formula(momentum):
    w = np.array([2.0, -3.0], dtype=np.float32)
    opt = RMSprop([w], lr=0.05, rho=0.8, eps=1e-6, momentum=momentum)
    ref, s, buf = w.astype(np.float64), np.zeros(2), np.zeros(2)
    for g in (np.array([1.0, -0.5]), np.array([0.2, 0.7])):
        opt.step([g.astype(np.float32)])
        s = 0.8 * s + 0.2 * g * g
        upd = g / (np.sqrt(s) + 1e-6)
        if momentum:
            buf = momentum * buf + upd
            upd = buf
        ref = ref - 0.05 * upd
    np.testing.assert_allclose(w, ref, rtol=1e-5)


def test_weight_decay_only_on_decay_tensors():
    w, b = tensors()
    w0, b0 = w.copy(), b.copy()
    opt = SGD([w, b], names=["fc/W", "fc/b"], decay=[True, False], weight_decay=0.1, lr=1.0)
    zero = [np.zeros_like(w), np.zeros_like(b)]
    opt.step(zero)
    # zero gradient: only the L2 term lambda * w moves the weights, the bias stays
    np.testing.assert_allclose(w, w0 - 0.1 * w0, rtol=1e-6)
    np.testing.assert_array_equal(b, b0)


@pytest.mark.parametrize("cls,hyper", [(SGD, {"momentum": 0.9, "nesterov": True}), (Adam, {}),
                                        (RMSprop, {"momentum": 0.3})])
def test_float32_stays_float32_and_updates_in_place(cls, hyper):
    w, b = tensors()
    ids = (id(w), id(b))
    opt = cls([w, b], decay=[True, False], weight_decay=1e-3, lr=0.01, **hyper)
    for _ in range(2):
        opt.step([g.astype(np.float64) if i else g for i, g in enumerate(grads())], lr=np.float64(0.02))
    assert w.dtype == np.float32 and b.dtype == np.float32
    assert (id(opt.params[0]), id(opt.params[1])) == ids
    for buffers in opt.state.values():
        assert all(buf.dtype == np.float32 for buf in buffers)


@pytest.mark.parametrize("cls,hyper", [(SGD, {"momentum": 0.9}), (Adam, {}), (RMSprop, {"momentum": 0.5})])
def test_state_dict_round_trip_continues_identically(cls, hyper):
    def run(split: bool):
        w, b = tensors()
        opt = cls([w, b], names=["W", "b"], lr=0.05, **hyper)
        for step in range(4):
            if split and step == 2:
                saved = {k: v.copy() for k, v in opt.state_dict().items()}
                w2, b2 = w.copy(), b.copy()
                opt = cls([w2, b2], names=["W", "b"], lr=0.05, **hyper)
                opt.load_state_dict(saved)
                w, b = w2, b2
            opt.step([g * (step + 1) for g in grads()])
        return w, b

    for a, b in zip(run(False), run(True), strict=True):
        assert np.array_equal(a, b)


def test_load_state_dict_rejects_mismatches():
    opt = Adam([np.zeros(3, np.float32)], names=["W"])
    with pytest.raises(CheckpointError, match="missing"):
        opt.load_state_dict({"t": np.array(1)})
    state = opt.state_dict()
    state["m/W"] = np.zeros(4, np.float32)
    with pytest.raises(CheckpointError, match="shape"):
        opt.load_state_dict(state)


def test_schema_defaults_fill_in():
    opt = Adam([np.zeros(1, np.float32)])
    assert (opt.lr, opt.beta1, opt.beta2, opt.eps) == (0.001, 0.9, 0.999, 1e-8)
    assert math.isclose(SGD([np.zeros(1, np.float32)]).lr, 0.01)
