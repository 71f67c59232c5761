"""multi_head_attention beyond its conformance examples: masks, the key padding input, dropout,
shape errors and the masked ONNX graph. (The engine checks every example's gradients.)"""

from __future__ import annotations

import numpy as np
import pytest

from layerkit.errors import ShapeError
from layerkit.layers.attention import MultiHeadAttention, masked_softmax
from layerkit.plugins.manager import get_registry

PAD = 0


def _layer(**config) -> MultiHeadAttention:
    cls = get_registry().layer("multi_head_attention")
    filled = {k: v["default"] for k, v in cls.params_schema["properties"].items() if "default" in v}
    return cls(**{**filled, **config})


def _params(layer, t, d, seed=0, dtype=np.float64) -> dict:
    rng = np.random.default_rng(seed)
    shape = [(t, d), (t,)] if layer.padding_idx is not None else (t, d)
    return {k: rng.standard_normal(s.shape).astype(dtype) for k, s in layer.param_specs(shape).items()}


def _ids(n, t, lengths) -> np.ndarray:
    ids = np.random.default_rng(1).integers(1, 7, (n, t))
    for i, length in enumerate(lengths):
        ids[i, length:] = PAD  # right-padded, as the data pipeline pads
    return ids


def test_softmax_is_stable_and_a_fully_masked_row_is_zero():
    scores = np.array([[1000.0, 999.0, -5.0], [3.0, 1.0, 2.0]])
    allowed = np.array([[True, True, False], [False, False, False]])
    a = masked_softmax(scores, allowed)
    assert np.all(np.isfinite(a))
    np.testing.assert_allclose(a[0], [1 / (1 + np.exp(-1)), np.exp(-1) / (1 + np.exp(-1)), 0.0])
    assert np.array_equal(a[1], np.zeros(3))


def test_causal_output_does_not_see_later_positions():
    layer = _layer(num_heads=2, causal=True)
    params = _params(layer, 5, 4)
    x = np.random.default_rng(2).standard_normal((2, 5, 4))
    later = x.copy()
    later[:, 3:] += 10.0
    y, _ = layer.forward(params, x)
    y2, _ = layer.forward(params, later)
    np.testing.assert_allclose(y[:, :3], y2[:, :3], rtol=0, atol=1e-12)
    assert not np.allclose(y[:, 3:], y2[:, 3:])
    # without the mask every position sees the change
    free = _layer(num_heads=2)
    assert not np.allclose(free.forward(params, x)[0][:, 0], free.forward(params, later)[0][:, 0])


def test_padded_keys_change_nothing_and_get_no_gradient():
    layer = _layer(num_heads=2, padding_idx=PAD, vocab_size=7)
    assert layer.arity == 2 and layer.input_kind == ("float", "tokens") and layer.token_range() == 7
    params = _params(layer, 6, 4)
    ids = _ids(2, 6, [4, 6])
    x = np.random.default_rng(3).standard_normal((2, 6, 4))
    other = x.copy()
    other[0, 4:] = 123.0  # the padded positions of sample 0
    y, cache = layer.forward(params, [x, ids])
    y2, _ = layer.forward(params, [other, ids])
    np.testing.assert_allclose(y[0, :4], y2[0, :4], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(y[1], y2[1])
    (dx, dids), _ = layer.backward(params, cache, np.ones_like(y) * np.array([1, 1, 1, 1, 0, 0])[None, :, None])
    assert dids is None  # token ids are not differentiated
    assert np.array_equal(dx[0, 4:], np.zeros((2, 4)))  # nobody reads a padded key or value


def test_a_query_with_no_key_left_gives_zeros_not_nan():
    layer = _layer(num_heads=1, padding_idx=PAD, vocab_size=3, use_bias=False)
    params = _params(layer, 3, 2)
    ids = np.zeros((1, 3), dtype=np.int64)  # every key padded
    y, cache = layer.forward(params, [np.ones((1, 3, 2)), ids])
    assert np.array_equal(y, np.zeros_like(y))
    (dx, _), grads = layer.backward(params, cache, np.ones_like(y))
    assert np.all(np.isfinite(dx)) and all(np.all(np.isfinite(g)) for g in grads.values())


def _numeric_grads(layer, params, x, ids, r, eps=1e-6):
    def loss(p, xx):
        return float(np.sum(layer.forward(p, [xx, ids] if ids is not None else xx)[0] * r))

    out = {"input": np.zeros_like(x)}
    for i in np.ndindex(x.shape):
        hi, lo = x.copy(), x.copy()
        hi[i] += eps
        lo[i] -= eps
        out["input"][i] = (loss(params, hi) - loss(params, lo)) / (2 * eps)
    for name, value in params.items():
        g = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            hi, lo = dict(params), dict(params)
            hi[name], lo[name] = value.copy(), value.copy()
            hi[name][i] += eps
            lo[name][i] -= eps
            g[i] = (loss(hi, x) - loss(lo, x)) / (2 * eps)
        out[name] = g
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_masked_gradients_match_finite_differences(causal):
    # the conformance engine cannot feed token ids on this base yet: the masked variant is checked here
    layer = _layer(num_heads=2, causal=causal, padding_idx=PAD, vocab_size=7)
    params = _params(layer, 5, 4)
    x = np.random.default_rng(4).standard_normal((2, 5, 4))
    ids = _ids(2, 5, [3, 5])
    y, cache = layer.forward(params, [x, ids])
    r = np.random.default_rng(5).standard_normal(y.shape)
    (dx, _), grads = layer.backward(params, cache, r)
    want = _numeric_grads(layer, params, x, ids, r)
    np.testing.assert_allclose(dx, want["input"], rtol=1e-6, atol=1e-8)
    for name, g in grads.items():
        np.testing.assert_allclose(g, want[name], rtol=1e-6, atol=1e-8, err_msg=name)


def test_finite_difference_helper_catches_a_wrong_gradient():
    # the check above can fail: a backward that forgets the softmax's row sum disagrees
    layer = _layer(num_heads=1, padding_idx=PAD, vocab_size=7)
    params = _params(layer, 3, 2)
    x = np.random.default_rng(6).standard_normal((1, 3, 2))
    ids = _ids(1, 3, [3])
    y, cache = layer.forward(params, [x, ids])
    r = np.random.default_rng(7).standard_normal(y.shape)
    cache = list(cache)
    cache[9] = cache[9] * 2  # a wrong scale in the backward pass only
    (dx, _), _ = layer.backward(params, tuple(cache), r)
    assert not np.allclose(dx, _numeric_grads(layer, params, x, ids, r)["input"], rtol=1e-6, atol=1e-8)


def test_dropout_drops_attention_weights_only_in_training_and_from_the_rng():
    layer = _layer(num_heads=2, dropout=0.5)
    assert layer.uses_rng and not _layer(num_heads=2).uses_rng
    params = _params(layer, 4, 4, dtype=np.float32)
    x = np.random.default_rng(8).standard_normal((3, 4, 4)).astype(np.float32)
    inference = layer.forward(params, x, training=False)[0]
    np.testing.assert_array_equal(inference, _layer(num_heads=2).forward(params, x)[0])
    a = layer.forward(params, x, training=True, rng=np.random.default_rng(0))[0]
    b = layer.forward(params, x, training=True, rng=np.random.default_rng(0))[0]
    c = layer.forward(params, x, training=True, rng=np.random.default_rng(1))[0]
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, inference)
    with pytest.raises(ValueError, match="rng"):
        layer.forward(params, x, training=True, rng=None)


@pytest.mark.parametrize("config, shape, message", [
    ({"num_heads": 3}, (4, 4), "does not divide"),
    ({}, (4,), r"\(T, D\)"),
    ({"padding_idx": 0}, [(4, 4), (4,)], "needs vocab_size"),
    ({"padding_idx": 5, "vocab_size": 5}, [(4, 4), (4,)], "not below vocab_size"),
    ({"padding_idx": 0, "vocab_size": 5}, [(4, 4), (3,)], "one per position"),
])
def test_wrong_shapes_and_settings_are_shape_errors(config, shape, message):
    with pytest.raises(ShapeError, match=message):
        _layer(**config).output_shape(shape)


def test_masked_graph_matches_in_onnxruntime():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from layerkit.export.onnx import IR_VERSION, OPSET, OnnxGraph

    for causal in (False, True):
        layer = _layer(num_heads=2, causal=causal, padding_idx=PAD, vocab_size=7)
        params = _params(layer, 5, 4, dtype=np.float32)
        x = np.random.default_rng(9).standard_normal((3, 5, 4)).astype(np.float32)
        ids = _ids(3, 5, [2, 5, 0])  # the last sample is all padding: zero rows
        g = OnnxGraph(OPSET)
        names = [g.name("x"), g.name("ids")]  # reserved, so no node takes them
        out = layer.to_onnx(g, names, [(5, 4), (5,)], params, {})
        g.op("Identity", [out], out_name="y")
        graph = onnx.helper.make_graph(
            g.nodes, "attention",
            [onnx.helper.make_tensor_value_info(names[0], onnx.TensorProto.FLOAT, ["N", 5, 4]),
             onnx.helper.make_tensor_value_info(names[1], onnx.TensorProto.INT64, ["N", 5])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 5, 4])],
            initializer=g.initializers)
        proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)])
        proto.ir_version = IR_VERSION
        onnx.checker.check_model(proto, full_check=True)
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, dict(zip(names, [x, ids], strict=True)))
        want = layer.forward(params, [x, ids])[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
