"""Model runtime: forward/backward over a graph, weights files, deterministic init."""

from __future__ import annotations

import numpy as np
import pytest
from _core_layers import core_registry, flat_model

from layerkit.modelfile.build import build_model
from layerkit.errors import CheckpointError
from layerkit.nn.network import load_npz


@pytest.fixture(scope="module")
def registry():
    return core_registry()


def residual(**top):
    # h is read by a, by b and by the sum: its gradient has three parts to add up
    return flat_model({"name": "h", "type": "dense", "units": 5},
                      {"name": "a", "type": "dense", "units": 5, "inputs": "h"},
                      {"name": "b", "type": "scale", "inputs": "h"},
                      {"name": "out", "type": "sum", "inputs": ["a", "b", "h"]}, **top)


def loss_and_grads(model, x, dout):
    y, caches = model.forward(x)
    return float((y * dout).sum()), model.backward(caches, dout)


def test_gradients_of_a_tensor_read_three_times_are_summed(registry):
    model = build_model(residual(), registry=registry, dtype=np.float64)
    rng = np.random.default_rng(1)
    x, dout = rng.standard_normal((3, 6)), rng.standard_normal((3, 5))
    _, grads = loss_and_grads(model, x, dout)
    eps = 1e-6
    for layer, tensor in (("h", "W"), ("h", "b"), ("a", "W"), ("b", "w")):
        value = model.params[layer][tensor]
        numeric = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            old = value[i]
            value[i] = old + eps
            up = loss_and_grads(model, x, dout)[0]
            value[i] = old - eps
            down = loss_and_grads(model, x, dout)[0]
            value[i] = old
            numeric[i] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grads[layer][tensor], numeric, rtol=1e-6, atol=1e-8,
                                   err_msg=f"{layer}.{tensor}")


def test_forward_returns_the_output_layer(registry):
    model = build_model(residual(), registry=registry)
    x = np.ones((2, 6), np.float32)
    y, caches = model.forward(x)
    assert y.shape == (2, 5) and y.dtype == np.float32 and len(caches) == 4
    # OpenBLAS may pick another kernel for a 1-row product than for 2 rows: equal up to rounding
    np.testing.assert_allclose(model.predict(x, batch_size=1), y, rtol=1e-6, atol=1e-7)


def test_init_is_deterministic_and_keyed_by_name(registry):
    first = build_model(residual(), registry=registry, seed=3)
    again = build_model(residual(), registry=registry, seed=3)
    other = build_model(residual(), registry=registry, seed=4)
    for (_, _, a), (_, _, b) in zip(first.parameters(), again.parameters(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.params["a"]["W"], other.params["a"]["W"])
    # an extra layer in front does not change the others' initial weights
    data = residual()
    data["layers"].insert(0, {"name": "pre", "type": "scale"})
    data["layers"][1]["inputs"] = "pre"
    grown = build_model(data, registry=registry, seed=3)
    np.testing.assert_array_equal(grown.params["a"]["W"], first.params["a"]["W"])
    assert build_model(residual(training={"seed": 3}), registry=registry).params["b"]["w"].tolist() == \
        first.params["b"]["w"].tolist()


def test_weights_round_trip(registry, tmp_path):
    model = build_model(residual(), registry=registry, seed=1)
    path = tmp_path / "w" / "weights.npz"
    model.save_weights(path)
    fresh = build_model(residual(), registry=registry, seed=2)
    fresh.load_weights(path)
    for (_, _, a), (_, _, b) in zip(model.parameters(), fresh.parameters(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [p.name for p in path.parent.iterdir()] == ["weights.npz"]  # no temp file left


def test_weights_that_do_not_fit_are_refused(registry, tmp_path):
    model = build_model(residual(), registry=registry)
    path = tmp_path / "w.npz"
    np.savez(path, **{"params/h/W": np.zeros((2, 2)), "params/zz/W": np.zeros(1)})
    with pytest.raises(CheckpointError) as info:
        model.load_weights(path)
    message = str(info.value)
    assert "missing tensors: params/a/W" in message and "unexpected tensors: params/zz/W" in message
    assert "params/h/W has shape (2, 2), the model needs (6, 5)" in message
    np.savez(path, **{k: np.full(v.shape, "x") for k, v in model.weights_dict().items()})
    with pytest.raises(CheckpointError, match="holds <U1 values, not real numbers"):
        model.load_weights(path)


def test_load_npz_refuses_pickled_object_arrays(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, payload=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="not a readable .npz weights file"):
        load_npz(path)
    with pytest.raises(CheckpointError, match="no such file"):
        load_npz(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError):
        load_npz(tmp_path / "junk.npz")


def test_the_old_runtime_module_still_imports_with_a_warning():
    import importlib
    import sys

    from layerkit.nn.network import Network

    sys.modules.pop("layerkit.nn.model", None)
    with pytest.warns(DeprecationWarning, match="layerkit.nn.network.Network"):
        old = importlib.import_module("layerkit.nn.model")
    assert old.Model is Network and old.load_npz is load_npz
