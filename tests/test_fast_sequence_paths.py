"""The unmasked LSTM's batch-last loop and sequence_cross_entropy's unshifted exponential are speed
paths (docs/performance.md): each must give what the plain formulation gives, to rounding."""

from __future__ import annotations

import numpy as np
import pytest

from layerkit.layers.recurrent import LSTM
from layerkit.nn.losses import SAFE_SCORE, SequenceCrossEntropy

N, T, D, U = 4, 9, 3, 5


def _params(dtype) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    specs = LSTM(units=U, return_sequences=True, padding_idx=None).param_specs((T, D))
    return {k: rng.uniform(-0.6, 0.6, s.shape).astype(dtype) for k, s in specs.items()}


@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_unmasked_lstm_matches_the_cell_by_cell_loop(dtype, tol, return_sequences):
    # a padding id no position holds sends the same data through the general per-cell loop
    rng = np.random.default_rng(1)
    params = _params(dtype)
    x = rng.standard_normal((N, T, D)).astype(dtype)
    ids = np.ones((N, T), dtype=np.int64)
    fast = LSTM(units=U, return_sequences=return_sequences, padding_idx=None)
    cells = LSTM(units=U, return_sequences=return_sequences, padding_idx=0)
    y, cache = fast.forward(params, x, True)
    y_ref, cache_ref = cells.forward(params, [x, ids], True)
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, grads = fast.backward(params, cache, dy)
    (dx_ref, _), grads_ref = cells.backward(params, cache_ref, dy)
    np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=tol)
    for name in grads_ref:
        np.testing.assert_allclose(grads[name], grads_ref[name], rtol=tol, atol=tol, err_msg=name)
        assert grads[name].dtype == dtype


def _reference(scores: np.ndarray, target: np.ndarray, ignore: int) -> tuple[float, np.ndarray]:
    """Log-softmax shifted by each position's maximum, in float64."""
    z = scores.astype(np.float64)
    z = z - z.max(axis=2, keepdims=True)
    keep = target != ignore
    ids = np.where(keep, target, 0)
    logp = z - np.log(np.exp(z).sum(axis=2, keepdims=True))
    count = max(int(keep.sum()), 1)
    loss = -float((np.take_along_axis(logp, ids[..., None], axis=2)[..., 0] * keep).sum()) / count
    grad = np.exp(logp)
    np.put_along_axis(grad, ids[..., None], np.take_along_axis(grad, ids[..., None], axis=2) - 1, axis=2)
    return loss, grad * (keep / count)[..., None]


@pytest.mark.parametrize("scale", [1.0, SAFE_SCORE / 4, 40 * SAFE_SCORE], ids=["small", "near_bound", "shifted"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sequence_cross_entropy_matches_the_shifted_log_softmax(dtype, padded, scale):
    rng = np.random.default_rng(2)
    scores = (np.tanh(rng.standard_normal((N, T, 11))) * scale).astype(dtype)
    target = rng.integers(0, 11, (N, T))
    if padded:
        target[:, T // 2:] = -100
    loss = SequenceCrossEntropy(ignore_index=-100)
    value, cache = loss.forward(scores, target)
    grad = loss.backward(cache)
    want, want_grad = _reference(scores, target, -100)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert value == pytest.approx(want, rel=tol, abs=tol)
    assert grad.dtype == dtype and np.isfinite(grad).all()
    np.testing.assert_allclose(grad, want_grad, rtol=10 * tol, atol=tol)
    if padded:
        assert not grad[:, T // 2:].any()
