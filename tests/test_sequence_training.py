"""Training sequence models: (N, T) class-id targets through data preparation, the trainer (epochs,
resume, sample-parallel shards), evaluation, the Python API and the CLI. Accuracy is token accuracy
over the positions whose target is not ``ignore_index``; losses are means over those tokens."""

from __future__ import annotations

import json
import multiprocessing
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from layerkit.api.model import load
from layerkit.cli import main
from layerkit.data import RawData, prepare
from layerkit.errors import DataError
from layerkit.modelfile.build import build_model
from layerkit.modelfile.spec import spec_from_dict
from layerkit.nn.losses import SequenceCrossEntropy, SoftmaxCrossEntropy
from layerkit.nn.network import load_npz
from layerkit.parallel import threads as parallel
from layerkit.parallel.processes import available
from layerkit.training.runs import HISTORY_JSON, WEIGHTS, train
from layerkit.training.sample_parallel import SampleParallel, shard_count
from layerkit.training.trainer import Callback, TrainingInterrupted, class_targets, evaluate

from train_support import InterruptAt, hermetic  # noqa: F401 (hermetic is a fixture)

pytestmark = pytest.mark.usefixtures("hermetic")

ROOT = Path(__file__).resolve().parents[1]
T, V = 6, 5


def reverse_model(**training) -> dict:
    """embedding -> learned positions -> non-causal attention -> dense: every position can look up
    the token it must copy (position T-1-t), so reversing is one attention pattern away."""
    train_cfg = {"epochs": 3, "batch_size": 32, "seed": 0, "optimizer": {"type": "adam", "lr": 0.02}}
    train_cfg.update(training)
    return {"format": 1, "name": "reverse", "input": {"shape": [T], "dtype": "int64"},
            "layers": [{"name": "embed", "type": "embedding", "num_embeddings": V, "embedding_dim": 16},
                       {"name": "positions", "type": "positional_encoding", "kind": "learned", "max_len": T},
                       {"name": "attention", "type": "multi_head_attention", "num_heads": 1},
                       {"name": "logits", "type": "dense", "units": V}],
            "loss": {"type": "sequence_cross_entropy"}, "training": train_cfg}


def lstm_model(**training) -> dict:
    train_cfg = {"epochs": 3, "batch_size": 16, "seed": 1, "optimizer": {"type": "adam", "lr": 0.01}}
    train_cfg.update(training)
    return {"format": 1, "name": "seq_lstm", "input": {"shape": [T], "dtype": "int64"},
            "layers": [{"name": "embed", "type": "embedding", "num_embeddings": V, "embedding_dim": 8},
                       {"name": "lstm", "type": "lstm", "units": 16},
                       {"name": "logits", "type": "dense", "units": V}],
            "loss": {"type": "sequence_cross_entropy"}, "training": train_cfg}


def reverse_data(n: int, seed: int = 0, padded: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and their reversal; ``padded``: some targets are -100 (the loss's ignore_index)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, V, (n, T))
    y = x[:, ::-1].copy()
    if padded:
        y[rng.random((n, T)) < 0.3] = -100
    return x, y


def write_npz(folder: Path, padded: bool = True) -> Path:
    (x_train, y_train), (x_test, y_test) = reverse_data(256, 0, padded), reverse_data(64, 1, padded)
    path = folder / "data.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


# -- the targets a loss takes ------------------------------------------------------------

def test_class_targets_per_sample_and_per_position():
    assert class_targets(SoftmaxCrossEntropy(), (10,)) == ((), 10)
    assert class_targets(SequenceCrossEntropy(), (6, 5)) == ((6,), 5)
    # a loss that does not predict along the last axis takes no per-position ids
    assert class_targets(SoftmaxCrossEntropy(), (6, 5)) == ((), 30)


def test_prepare_takes_per_position_labels_and_checks_them():
    x, y = reverse_data(20, padded=True)
    raw = RawData(x, y, x[:5], y[:5], source="arrays.npz")
    data = prepare(raw, {}, input_shape=(T,), num_outputs=V, tokens=True, label_shape=(T,), ignore_index=-100)
    assert data.y_train.shape == (20, T) and data.y_train.dtype == np.int64
    assert data.class_names == [str(i) for i in range(V)]
    np.testing.assert_array_equal(data.y_train, y)
    problems = {"shape": (y[:, :4], "expected (N, 6)"),
                "float": (y.astype(np.float32), "integer class ids"),
                "range": (np.where(y == -100, 7, y), "labels go up to 7"),
                "negative": (np.where(y == -100, -1, y), "-1, a negative class id")}
    for bad, message in problems.values():
        with pytest.raises(DataError, match=re.escape(message)):
            prepare(RawData(x, bad, x[:5], y[:5], source="arrays.npz"), {}, input_shape=(T,), num_outputs=V,
                    tokens=True, label_shape=(T,), ignore_index=-100)


# -- means over tokens ------------------------------------------------------------------------

def test_evaluation_is_a_mean_over_counted_tokens_across_batches():
    net = build_model(spec_from_dict(reverse_model()))
    loss = SequenceCrossEntropy()
    x, y = reverse_data(10, padded=True)
    y[0, :] = -100  # a sample that counts for nothing must not pull the means towards it
    y[1, :5] = -100
    out = net.predict(x, 10)
    whole, _ = loss.forward(out, y)
    keep = y != -100
    right = (out.argmax(axis=-1) == y) & keep
    value, accuracy, preds = evaluate(net, loss, x, y, batch_size=3)
    assert value == pytest.approx(whole, rel=1e-5)
    assert accuracy == pytest.approx(right.sum() / keep.sum())
    assert preds.shape == (10, T)
    np.testing.assert_array_equal(preds, out.argmax(axis=-1))


class Batches(Callback):
    """The loss of every batch, in order."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_batch_end(self, epoch, step, loss, accuracy, samples):
        self.losses.append(loss)


def test_epoch_loss_weights_batches_by_their_counted_tokens():
    model = load(lstm_model(epochs=1, batch_size=4))
    x, y = reverse_data(12, padded=True)
    y[:4, 1:] = -100  # the first batch counts 4 tokens at most, the others many more
    seen = Batches()
    history = model.fit(x, y, shuffle=False, verbose=0, callbacks=[seen])
    tokens = [int((y[i:i + 4] != -100).sum()) for i in range(0, 12, 4)]
    expected = sum(v * t for v, t in zip(seen.losses, tokens, strict=True)) / sum(tokens)
    assert history["train_loss"][0] == pytest.approx(expected, rel=1e-6)


# -- the Python API -------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["lstm", "transformer"])
def test_python_fit_evaluate_predict(which):
    x, y = reverse_data(200, padded=True)
    spec = lstm_model() if which == "lstm" else causal_transformer()
    model = load(spec)
    with pytest.warns(UserWarning, match="untrained"):
        before = model.evaluate(x, y)
    history = model.fit(x, y, verbose=0)
    assert history["train_loss"][-1] < history["train_loss"][0]
    scores = model.evaluate(x, y)
    assert scores["loss"] < before["loss"]
    keep = y != -100
    assert scores["accuracy"] == pytest.approx(float(((model.predict(x) == y) & keep).sum() / keep.sum()))
    assert model.predict(x[:3]).shape == (3, T) and model.predict(x[:3]).dtype == np.int64
    proba = model.predict_proba(x[:3])
    assert proba.shape == (3, T, V)
    np.testing.assert_allclose(proba.sum(axis=-1), 1, rtol=1e-5)
    assert model.num_outputs == V and model.label_shape == (T,)


def causal_transformer() -> dict:
    """The pre-norm block of docs/sequence-models.md with an embedding and positions in front."""
    block = [{"name": "b1_norm1", "type": "layer_norm", "normalized_dims": 1, "inputs": "x"},
             {"name": "b1_attention", "type": "multi_head_attention", "num_heads": 2, "causal": True},
             {"name": "b1_res1", "type": "add", "inputs": ["x", "b1_attention"]},
             {"name": "b1_norm2", "type": "layer_norm", "normalized_dims": 1},
             {"name": "b1_expand", "type": "dense", "units": 32},
             {"name": "b1_relu", "type": "relu"},
             {"name": "b1_project", "type": "dense", "units": 16},
             {"name": "b1_res2", "type": "add", "inputs": ["b1_res1", "b1_project"]}]
    return {"format": 1, "name": "tiny_causal", "input": {"shape": [T], "dtype": "int64"},
            "layers": [{"name": "embed", "type": "embedding", "num_embeddings": V, "embedding_dim": 16},
                       {"name": "x", "type": "positional_encoding", "kind": "sinusoidal", "max_len": T},
                       *block, {"name": "logits", "type": "dense", "units": V}],
            "loss": {"type": "sequence_cross_entropy"},
            "training": {"epochs": 3, "batch_size": 16, "seed": 2, "optimizer": {"type": "adam", "lr": 0.01}}}


def test_python_labels_are_checked():
    model = load(lstm_model())
    x, y = reverse_data(8)
    with pytest.raises(DataError, match=r"expected \(8, 6\) class ids, one per position"):
        model.fit(x, y[:, 0], verbose=0)
    with pytest.raises(DataError, match="labels go from 1 to 9 but the model has 5 classes per position"):
        model.evaluate(x, np.where(y == 0, 9, y))


def test_learns_to_reverse_in_seconds():
    x, y = reverse_data(1000)
    model = load(reverse_model(epochs=6))
    started = time.perf_counter()
    model.fit(x, y, verbose=0)
    seconds = time.perf_counter() - started
    x_test, y_test = reverse_data(300, seed=7)
    assert model.evaluate(x_test, y_test)["accuracy"] > 0.95  # chance is 1/5
    assert seconds < 20  # about 0.2 s on one core (docs/sequence-models.md)


# -- the CLI: fit, evaluate, resume ----------------------------------------------------------

def test_cli_fit_evaluate_and_resume_bit_identical(tmp_path, capsys):
    data = write_npz(tmp_path)
    spec = reverse_model(dataset="npz", epochs=2, batch_size=40)
    (tmp_path / "reverse.json").write_text(json.dumps(spec))
    run = tmp_path / "run"
    assert main(["fit", str(tmp_path / "reverse.json"), "--data-dir", str(data), "--out", str(run), "-q"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    _, y_test = reverse_data(64, 1, True)
    assert report["tokens"] == int((y_test != -100).sum()) and report["samples"] == 64
    assert report["accuracy_of"] == "tokens" and "confusion_matrix" not in report
    metrics = json.loads((run / "metrics.json").read_text())
    assert report["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert main(["evaluate", str(run)]) == 0
    assert "test token accuracy" in capsys.readouterr().out

    with pytest.raises(TrainingInterrupted):
        train(spec, out=tmp_path / "cut", data_dir=data, callbacks=[InterruptAt(0, 3)])
    train(resume=tmp_path / "cut", data_dir=data)
    straight, cut = load_npz(run / WEIGHTS), load_npz(tmp_path / "cut" / WEIGHTS)
    assert all(np.array_equal(straight[k], cut[k]) for k in straight)
    assert json.loads((run / HISTORY_JSON).read_text()) == json.loads((tmp_path / "cut" / HISTORY_JSON).read_text())


# -- sample-parallel: a sequence is one sample, shares weighted by their tokens ----------------

@pytest.fixture
def two_processes(monkeypatch):
    if not sys.platform.startswith("linux") or not available():
        pytest.skip("sample-parallel needs fork and process-shared semaphores")
    monkeypatch.setenv("LAYERKIT_SAMPLE_PARALLEL", "1")  # the tiny net is below the cost rule
    parallel.set_num_threads(2)
    yield
    parallel.set_num_threads(None)
    assert multiprocessing.active_children() == []


def test_split_step_adds_up_to_the_whole_batch(two_processes):
    net = build_model(spec_from_dict(lstm_model()))
    loss = SequenceCrossEntropy()
    x, y = reverse_data(40, padded=True)
    y[:10] = -100  # the first shard counts far fewer tokens than the second
    idx = np.arange(40)
    value, out, grads = net.loss_and_gradients(loss, x, y, None)
    keys = net.trainable_keys()
    whole = [grads[n][t].copy() for n, t in keys]
    hits = loss.correct(out, y)
    with SampleParallel(net, loss, x, y, 2) as sp:
        split_value, split_hits, split = sp.step(idx)
    assert split_value == pytest.approx(value, rel=1e-5) and split_hits == hits
    for g, r in zip(split, whole, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)


def test_fit_on_two_processes_matches_one(two_processes, tmp_path):
    data = write_npz(tmp_path)
    spec = lstm_model(dataset="npz", epochs=1, batch_size=32)
    # what is compared must really be two processes against one: a sequence loss splits over samples
    assert shard_count(build_model(spec_from_dict(spec)), SequenceCrossEntropy(), 32, threads=2) == 2
    train(spec, out=tmp_path / "two", data_dir=data)
    parallel.set_num_threads(1)
    train(spec, out=tmp_path / "one", data_dir=data)
    two, one = load_npz(tmp_path / "two" / WEIGHTS), load_npz(tmp_path / "one" / WEIGHTS)
    for k in one:
        np.testing.assert_allclose(two[k], one[k], rtol=1e-3, atol=1e-5)
    h2, h1 = (json.loads((tmp_path / r / HISTORY_JSON).read_text()) for r in ("two", "one"))
    assert h2[-1]["train_loss"] == pytest.approx(h1[-1]["train_loss"], rel=1e-4)


# -- the docs' section runs as written ------------------------------------------------------

def test_docs_training_section_runs(tmp_path, monkeypatch, capsys):
    text = (ROOT / "docs" / "sequence-models.md").read_text(encoding="utf-8")
    section = text.split("## Training a sequence model", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.S)
    assert [lang for lang, _ in blocks].count("python") >= 1 and any(lang == "bash" for lang, _ in blocks)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for lang, code in blocks:
        if lang == "python":
            exec(compile(code, "docs/sequence-models.md", "exec"), namespace)  # noqa: S102 - the page's own code
        elif lang == "bash":
            for line in code.splitlines():
                if line.startswith("layerkit "):
                    assert main(shlex.split(line)[1:]) == 0, line
    assert "test token accuracy" in capsys.readouterr().out
