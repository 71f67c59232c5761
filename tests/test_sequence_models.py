"""Token inputs end to end: the model file's input dtype, static kind checks, the network, the gradient
checker and padding that never reaches the loss or a gradient."""

from __future__ import annotations

import json

import numpy as np
import pytest

from layerkit.errors import LayerkitError, ModelFileError, ShapeError
from layerkit.gradcheck.layers import NOT_DIFFERENTIATED, check_layer, check_layer_config
from layerkit.gradcheck.report import check_model
from layerkit.layers.embedding import Embedding
from layerkit.layers.recurrent import GRU, LSTM, RNN
from layerkit.modelfile.build import build_graph_from, build_model
from layerkit.nn.losses import SequenceCrossEntropy
from layerkit.testing.engine import CHECKS, subject_for

PAD = 0
VOCAB = 7


def seq_model(steps: int, cell: str = "lstm", loss: str = "sequence_cross_entropy") -> dict:
    return {"format": 1, "name": "seq", "input": {"shape": [steps], "dtype": "int64"},
            "layers": [{"name": "emb", "type": "embedding", "num_embeddings": VOCAB, "embedding_dim": 4,
                        "padding_idx": PAD},
                       {"name": "rec", "type": cell, "units": 5, "padding_idx": PAD, "inputs": ["emb", "input"]},
                       {"name": "out", "type": "dense", "units": VOCAB}],
            "loss": {"type": loss}}


def test_input_dtype_defaults_to_float32_and_reads_int64():
    graph = build_graph_from(seq_model(6))
    assert graph.input_dtype == "int64"
    plain = {"format": 1, "input": {"shape": [3]}, "layers": [{"type": "dense", "units": 2}]}
    assert build_graph_from(plain).input_dtype == "float32"
    with pytest.raises(ModelFileError, match="dtype"):
        build_graph_from({**plain, "input": {"shape": [3], "dtype": "int8"}})


def test_float_layer_on_token_ids_is_an_error_at_its_json_path():
    spec = {"format": 1, "input": {"shape": [6], "dtype": "int64"},
            "layers": [{"name": "fc", "type": "dense", "units": 3}]}
    with pytest.raises(ShapeError) as err:
        build_graph_from(spec)
    text = str(err.value)
    assert "layers[0]" in text and "takes float inputs but gets token ids (int64): put an embedding first" in text


def test_embedding_on_a_float_input_is_an_error():
    spec = {"format": 1, "input": {"shape": [6]},
            "layers": [{"name": "emb", "type": "embedding", "num_embeddings": 5, "embedding_dim": 2}]}
    with pytest.raises(ShapeError, match=r"'emb' takes token ids \(int64\).*dtype"):
        build_graph_from(spec)


def test_mask_input_fed_a_float_value_is_an_error():
    spec = seq_model(6)
    spec["layers"][1]["inputs"] = ["emb", "emb"]
    with pytest.raises(LayerkitError, match="token ids"):
        build_graph_from(spec)


def test_recurrent_layer_with_padding_idx_needs_the_ids_as_second_input():
    spec = seq_model(6)
    spec["layers"][1]["inputs"] = ["emb"]
    with pytest.raises(LayerkitError, match="takes 2 inputs, got 1"):
        build_graph_from(spec)


def test_network_runs_int64_ids_without_converting_them():
    model = build_model(seq_model(6), seed=0)
    x = np.array([[1, 2, 3, 0, 0, 0], [4, 5, 6, 1, 2, 0]], dtype=np.int64)
    out = model.predict(x)
    assert out.shape == (2, 6, VOCAB) and out.dtype == np.float32
    assert model.input_dtype == np.int64
    # padded positions output what the dense bias alone gives: the lstm outputs zeros there
    np.testing.assert_allclose(out[0, 3:], np.broadcast_to(model.params["out"]["b"], (3, VOCAB)), atol=1e-6)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_check_grads_passes_and_says_token_inputs_are_not_differentiated(cell):
    report = check_model(build_model(seq_model(6, cell), seed=1))
    assert report.ok, report.verdict()
    tokens = [r for r in report.rows if r.strategy == NOT_DIFFERENTIATED]
    assert {(r.layer, r.tensor) for r in tokens} == {("emb", "input"), ("rec", "input[1]")}
    assert all(r.status == "skipped" for r in tokens)
    assert "2 token-id input(s) not differentiated" in report.verdict()


def test_check_grads_cli_table_shows_the_token_row(tmp_path):
    from typer.testing import CliRunner

    from layerkit.cli import app

    path = tmp_path / "seq.json"
    path.write_text(json.dumps(seq_model(5)))
    result = CliRunner().invoke(app, ["check-grads", str(path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "not differentiated" in result.output and "PASS" in result.output


class _WrongEmbedding(Embedding):
    """Forgets that a repeated id adds up: each row gets only one of its positions' gradients."""

    def backward_params(self, params, cache, dy):
        grad = np.zeros_like(params["weight"])
        grad[cache.reshape(-1)] = dy.reshape(-1, dy.shape[-1])
        return {"weight": grad}


def test_a_wrong_embedding_backward_is_caught():
    layer = _WrongEmbedding(num_embeddings=3, embedding_dim=2, padding_idx=None)
    ids = np.array([[0, 1, 1, 2, 0]])
    rows = check_layer(layer, {"weight": np.random.default_rng(0).standard_normal((3, 2))}, ids)
    status = {r.tensor: r.status for r in rows}
    assert status == {"input": "skipped", "weight": "fail"}
    # the engine's gradient check, as pytest and plugin loading run it, catches it too
    subject = subject_for(_WrongEmbedding, {"num_embeddings": 3, "embedding_dim": 2}, (8,))
    with pytest.raises(LayerkitError, match="weight"):
        CHECKS["gradients_match_finite_differences"].run(subject)


def test_a_gradient_for_a_token_input_is_refused_by_the_engine():
    class Leaky(Embedding):
        def backward(self, params, cache, dy):
            return np.zeros(cache.shape), self.backward_params(params, cache, dy)

    subject = subject_for(Leaky, {"num_embeddings": 3, "embedding_dim": 2}, (4,))
    with pytest.raises(LayerkitError, match="token ids, which have no gradient"):
        CHECKS["backward_gradient_shapes"].run(subject)


def test_padding_row_starts_at_zero_and_gets_no_gradient():
    model = build_model(seq_model(6), seed=3)
    assert not model.params["emb"]["weight"][PAD].any()
    layer = Embedding(num_embeddings=4, embedding_dim=3, padding_idx=2)
    ids = np.array([[2, 1, 2, 3]])
    weight = np.random.default_rng(0).standard_normal((4, 3))
    y, cache = layer.forward({"weight": weight}, ids)
    assert not y[0, [0, 2]].any()
    grad = layer.backward_params({"weight": weight}, cache, np.ones_like(y))["weight"]
    assert not grad[2].any() and grad[1].tolist() == [1.0] * 3 and grad[0].tolist() == [0.0] * 3


@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_bptt_through_24_steps(cls):
    config = {"units": 3, "return_sequences": False, "padding_idx": None}
    if cls is RNN:
        config["nonlinearity"] = "tanh"
    rows = check_layer_config(cls, config, (24, 2), samples=16)
    assert all(r.status == "pass" for r in rows), [(r.tensor, r.status, r.max_rel_error) for r in rows]


def test_a_wrong_recurrent_backward_is_caught():
    class Forgetful(LSTM):
        """Drops the gradient the cell state carries to the previous step."""

        def step_back(self, params, cache, dh, dc):
            dxg, dgh, dh_prev, dc_prev = super().step_back(params, cache, dh, dc)
            return dxg, dgh, dh_prev, np.zeros_like(dc_prev)

    # the cell-by-cell step_back runs where steps are masked; the unmasked LSTM has its own loop
    rows = check_layer_config(Forgetful, {"units": 3, "return_sequences": True, "padding_idx": 0}, [(20, 2), (20,)])
    assert {r.tensor for r in rows if r.status == "fail"} >= {"weight_hh", "input[0]"}


def test_a_wrong_unmasked_lstm_backward_is_caught():
    class Forgetful(LSTM):
        """Drops the gradient that reaches the state before each step through W_hh."""

        def sequence_backward(self, params, cache, dy):
            w_hh = params["weight_hh"]
            da, grads = super().sequence_backward({**params, "weight_hh": np.zeros_like(w_hh)}, cache, dy)
            return da, grads

    rows = check_layer_config(Forgetful, {"units": 3, "return_sequences": True, "padding_idx": None}, (20, 2))
    assert {r.tensor for r in rows if r.status == "fail"} >= {"weight_hh", "input"}


# -- padding never reaches the loss or a gradient -------------------------------------------

def _loss_and_grads(model, x, y):
    m64 = model.astype(np.float64)
    value, _, grads = m64.loss_and_gradients(SequenceCrossEntropy(), x, y)
    return value, grads


def _padded(seqs, targets, steps):
    x = np.full((len(seqs), steps), PAD, dtype=np.int64)
    y = np.full((len(seqs), steps), -100, dtype=np.int64)
    for i, (s, t) in enumerate(zip(seqs, targets, strict=True)):
        x[i, :len(s)], y[i, :len(t)] = s, t
    return x, y


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_padding_contributes_nothing_to_the_loss_or_any_gradient(cell):
    rng = np.random.default_rng(5)
    lengths = [5, 3, 6]
    seqs = [rng.integers(1, VOCAB, size=n) for n in lengths]
    targets = [rng.integers(0, VOCAB, size=n) for n in lengths]
    model8 = build_model(seq_model(8, cell), seed=2)
    model12 = build_model(seq_model(12, cell), seed=2)  # the same tensors: only the input length differs
    loss8, grads8 = _loss_and_grads(model8, *_padded(seqs, targets, 8))
    loss12, grads12 = _loss_and_grads(model12, *_padded(seqs, targets, 12))
    # the padding row of the embedding holds garbage from a checkpoint: still nothing changes
    model12.params["emb"]["weight"][PAD] = 5.0
    loss_garbage, grads_garbage = _loss_and_grads(model12, *_padded(seqs, targets, 12))
    # each sequence alone, unpadded: the batch loss is their token-weighted mean
    singles = []
    for s, t in zip(seqs, targets, strict=True):
        alone = build_model(seq_model(len(s), cell), seed=2)
        singles.append(_loss_and_grads(alone, s[None], t[None]))
    total = sum(lengths)
    loss_alone = sum(v * n for (v, _), n in zip(singles, lengths, strict=True)) / total
    for other in (loss12, loss_garbage, loss_alone):
        assert other == pytest.approx(loss8, rel=1e-12)
    for layer, tensors in grads8.items():
        for name, g in tensors.items():
            alone = sum(gr[layer][name] * n for (_, gr), n in zip(singles, lengths, strict=True)) / total
            for other in (grads12[layer][name], grads_garbage[layer][name], alone):
                np.testing.assert_allclose(other, g, rtol=1e-10, atol=1e-13, err_msg=f"{layer}.{name}")


def test_sequence_loss_counts_only_the_tokens_that_count():
    loss = SequenceCrossEntropy(ignore_index=-1)
    out = np.random.default_rng(0).standard_normal((2, 3, 4))
    target = np.array([[1, 2, -1], [0, -1, -1]])
    value, cache = loss.forward(out, target)
    logp = out - np.log(np.exp(out).sum(axis=2, keepdims=True))
    want = -(logp[0, 0, 1] + logp[0, 1, 2] + logp[1, 0, 0]) / 3
    assert value == pytest.approx(want, rel=1e-12)
    grad = loss.backward(cache)
    assert not grad[0, 2].any() and not grad[1, 1:].any()
    assert loss.output_problem((3, 4)) is None and "steps, classes" in loss.output_problem((4,))


def test_token_ids_pass_through_preprocessing_unnormalised():
    from layerkit.data.preprocess import Preprocessing

    ids = np.array([[1, 5, 0], [3, 2, 2]], dtype=np.int64)
    pre, out = Preprocessing.fit_transform(ids, "standardize", tokens=True)
    assert out.dtype == np.int64 and np.array_equal(out, ids)
    again = Preprocessing.from_dict(json.loads(pre.to_json()))
    assert again.tokens and np.array_equal(again.transform(ids), ids)
    with pytest.raises(LayerkitError, match="token ids"):
        pre.transform(ids.astype(np.float32))
    # a float model's record is what it was: no tokens key
    assert "tokens" not in Preprocessing.fit_transform(ids.astype(np.float32))[0].to_dict()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_a_token_model_exports_to_onnx_taking_int64_ids(cell):
    ort = pytest.importorskip("onnxruntime")
    from layerkit.export.onnx import to_onnx

    model = build_model(seq_model(6, cell), seed=4)
    x = np.array([[1, 2, 3, 0, 0, 0], [4, 5, 6, 1, 2, 0], [0, 3, 0, 3, 0, 3]], dtype=np.int64)
    proto = to_onnx(model, loss=SequenceCrossEntropy())
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, probs = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(logits, model.predict(x), atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)
