"""Parity with PyTorch in float64: nn.Embedding, nn.RNN, nn.LSTM and nn.GRU, weights ported both ways.

Forward outputs and the gradients of every input and parameter agree to about 1e-10. Skipped when
torch is not installed (``.venv/bin/pip install torch`` to run it).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from layerkit.layers.embedding import Embedding  # noqa: E402
from layerkit.layers.recurrent import GRU, LSTM, RNN  # noqa: E402

TOL = 1e-10
N, T, D, U = 3, 7, 4, 5


def _t(a: np.ndarray, grad: bool = True):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def _close(got, want, what: str) -> None:
    want = want.detach().numpy() if hasattr(want, "detach") else want
    np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL, err_msg=what)


RECURRENT = [
    (RNN, lambda: torch.nn.RNN(D, U, batch_first=True, nonlinearity="tanh"), {"nonlinearity": "tanh"}),
    (RNN, lambda: torch.nn.RNN(D, U, batch_first=True, nonlinearity="relu"), {"nonlinearity": "relu"}),
    (LSTM, lambda: torch.nn.LSTM(D, U, batch_first=True), {}),
    (GRU, lambda: torch.nn.GRU(D, U, batch_first=True), {}),
]
NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _ours(cls, extra, return_sequences=True, padding_idx=None):
    return cls(units=U, return_sequences=return_sequences, padding_idx=padding_idx, **extra)


@pytest.mark.parametrize("direction", ["torch_to_layerkit", "layerkit_to_torch"])
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("cls, make, extra", RECURRENT, ids=["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_recurrent_forward_and_gradients_match_torch(cls, make, extra, return_sequences, direction):
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    net = make().double()
    layer = _ours(cls, extra, return_sequences)
    if direction == "torch_to_layerkit":
        params = {n: getattr(net, f"{n}_l0").detach().numpy().copy() for n in NAMES}
    else:
        specs = layer.param_specs((T, D))
        params = {n: rng.standard_normal(specs[n].shape) * 0.5 for n in NAMES}
        with torch.no_grad():
            for n in NAMES:
                getattr(net, f"{n}_l0").copy_(torch.tensor(params[n]))
    x = rng.standard_normal((N, T, D))
    y, cache = layer.forward(params, x, training=True)
    xt = _t(x)
    seq, h_n = net(xt)
    if isinstance(h_n, tuple):  # the LSTM's (h_n, c_n)
        h_n = h_n[0]
    yt = seq if return_sequences else h_n[0]
    _close(y, yt, "output")
    dy = rng.standard_normal(y.shape)
    dx, grads = layer.backward(params, cache, dy)
    (yt * torch.tensor(dy)).sum().backward()
    _close(dx, xt.grad, "input gradient")
    for n in NAMES:
        _close(grads[n], getattr(net, f"{n}_l0").grad, f"gradient of {n}")


@pytest.mark.parametrize("cls, make, extra", RECURRENT[2:], ids=["lstm", "gru"])
def test_masked_layer_matches_torch_packed_sequences(cls, make, extra):
    # right padding: carrying the state through padded steps and outputting zeros there is what
    # PyTorch's packed sequences do (h_n: each sequence's last real step)
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    net = make().double()
    params = {n: getattr(net, f"{n}_l0").detach().numpy().copy() for n in NAMES}
    lengths = [7, 4, 2]
    ids = np.ones((N, T), dtype=np.int64)
    for i, n in enumerate(lengths):
        ids[i, n:] = 0
    x = rng.standard_normal((N, T, D))
    for return_sequences in (True, False):
        net.zero_grad()
        layer = _ours(cls, extra, return_sequences, padding_idx=0)
        y, cache = layer.forward(params, [x, ids], training=True)
        xt = _t(x)
        packed = torch.nn.utils.rnn.pack_padded_sequence(xt, lengths, batch_first=True)
        out, h_n = net(packed)
        if isinstance(h_n, tuple):
            h_n = h_n[0]
        seq, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
        yt = seq if return_sequences else h_n[0]
        _close(y, yt, "output")
        dy = rng.standard_normal(y.shape)
        (dx, dids), grads = layer.backward(params, cache, dy)
        assert dids is None
        (yt * torch.tensor(dy)).sum().backward()
        _close(dx, xt.grad, "input gradient")
        for n in NAMES:
            _close(grads[n], getattr(net, f"{n}_l0").grad, f"gradient of {n}")


@pytest.mark.parametrize("padding_idx", [None, 2])
@pytest.mark.parametrize("direction", ["torch_to_layerkit", "layerkit_to_torch"])
def test_embedding_matches_torch(padding_idx, direction):
    torch.manual_seed(0)
    rng = np.random.default_rng(3)
    net = torch.nn.Embedding(6, 4, padding_idx=padding_idx).double()
    layer = Embedding(num_embeddings=6, embedding_dim=4, padding_idx=padding_idx)
    if direction == "torch_to_layerkit":
        weight = net.weight.detach().numpy().copy()
    else:
        weight = rng.standard_normal((6, 4))
        if padding_idx is not None:
            weight[padding_idx] = 0.0  # where a layerkit padding row starts, and stays
        with torch.no_grad():
            net.weight.copy_(torch.tensor(weight))
    ids = rng.integers(0, 6, size=(N, T))
    y, cache = layer.forward({"weight": weight}, ids, training=True)
    yt = net(torch.tensor(ids))
    _close(y, yt, "output")
    dy = rng.standard_normal(y.shape)
    dx, grads = layer.backward({"weight": weight}, cache, dy)
    assert dx is None
    (yt * torch.tensor(dy)).sum().backward()
    _close(grads["weight"], net.weight.grad, "gradient of weight")
