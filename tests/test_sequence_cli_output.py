"""The command line speaks of sequences, not images, for models reading token ids: fit's speed and
closing line, predict's refusal, evaluate's bits and the bpc that 'layerkit models' lists."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

import layerkit
from layerkit.cli import main
from layerkit.modelfile import zoo
from layerkit.training.runs import train

from train_support import hermetic  # noqa: F401 (hermetic is a fixture)

pytestmark = pytest.mark.usefixtures("hermetic")

ROOT = Path(__file__).resolve().parents[1]
T, V = 6, 5


def reverse_model(**training) -> dict:
    """A token model that is not a language model: it writes its input backwards."""
    cfg = {"dataset": "npz", "epochs": 2, "batch_size": 32, "seed": 0, "optimizer": {"type": "adam", "lr": 0.02}}
    return {"format": 1, "name": "reverse", "input": {"shape": [T], "dtype": "int64"},
            "layers": [{"name": "embed", "type": "embedding", "num_embeddings": V, "embedding_dim": 8},
                       {"name": "attention", "type": "multi_head_attention", "num_heads": 1},
                       {"name": "logits", "type": "dense", "units": V}],
            "loss": {"type": "sequence_cross_entropy"}, "training": {**cfg, **training}}


@pytest.fixture
def reverse_run(tmp_path):
    rng = np.random.default_rng(0)
    x, xt = rng.integers(0, V, (128, T)), rng.integers(0, V, (32, T))
    data = tmp_path / "data.npz"
    np.savez(data, x_train=x, y_train=x[:, ::-1], x_test=xt, y_test=xt[:, ::-1])
    (tmp_path / "reverse.json").write_text(json.dumps(reverse_model()))
    return tmp_path / "reverse.json", data


def test_fit_of_a_token_model_reports_sequences_and_token_accuracy(reverse_run, tmp_path, capsys):
    model, data = reverse_run
    assert main(["fit", str(model), "--data-dir", str(data), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    out = capsys.readouterr().out
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2 and all(re.search(r"\([\d,]+ seq/s\)$", line) for line in epochs), out
    assert "img/s" not in out
    assert re.search(r"^test token accuracy \d+\.\d\d%, loss ", out, re.M), out


def test_python_fit_of_a_token_model_reports_sequences(capsys):
    x = np.random.default_rng(0).integers(0, V, (64, T))
    layerkit.load(reverse_model(epochs=1)).fit(x, x[:, ::-1], verbose=2)
    out = capsys.readouterr().out
    assert "seq/s" in out and "img/s" not in out


def test_evaluate_json_gives_the_loss_in_bits(reverse_run, tmp_path, capsys):
    model, data = reverse_run
    assert main(["fit", str(model), "--data-dir", str(data), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bits_per_token"] == pytest.approx(report["loss"] / math.log(2))
    assert main(["evaluate", str(tmp_path / "run")]) == 0
    assert f"({report['bits_per_token']:.2f} bits)" in capsys.readouterr().out


def _refused(capsys, *args) -> str:
    assert main(["predict", *map(str, args)]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:") and "Traceback" not in captured.err, captured.err
    assert captured.out == ""
    return errors[0]


def test_predict_refuses_a_token_model_and_points_to_the_python_api(reverse_run, tmp_path, capsys):
    model, data = reverse_run
    assert main(["fit", str(model), "--data-dir", str(data), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    capsys.readouterr()
    ids = tmp_path / "ids.npy"
    np.save(ids, np.zeros((2, T), dtype=np.int64))
    error = _refused(capsys, tmp_path / "run", ids)
    assert "predict is for classifiers" in error and ".predict(ids)" in error


def test_predict_refuses_a_language_model_and_points_to_generate(tmp_path, capsys):
    text = tmp_path / "abc.txt"
    text.write_text("the cat sat on the mat. " * 50)
    vocab = len(set(text.read_text()))
    spec = {"format": 1, "name": "bigram", "input": {"shape": [8], "dtype": "int64"},
            "layers": [{"type": "embedding", "num_embeddings": vocab, "embedding_dim": vocab}],
            "loss": {"type": "sequence_cross_entropy"},
            "training": {"dataset": "text", "epochs": 1, "batch_size": 16, "data": {"data_dir": str(text)}}}
    run, _ = train(spec, out=tmp_path / "run")
    np.save(tmp_path / "ids.npy", np.zeros((1, 8), dtype=np.int64))
    for given in (tmp_path / "ids.npy", text):
        error = _refused(capsys, run.path, given)
        assert "language model" in error and f"layerkit generate {run.path} --prompt TEXT" in error


def test_predict_still_answers_an_image_classifier_after_the_token_check(tmp_path, capsys):
    # the refusal must not catch float models: a deliberately float input is answered
    spec = {"format": 1, "name": "tiny", "input": {"shape": [4]},
            "layers": [{"type": "dense", "units": 3}], "loss": {"type": "softmax_cross_entropy"},
            "training": {"dataset": "npz", "epochs": 1}}
    model = layerkit.load(spec)
    x = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    model.fit(x, np.arange(30) % 3, verbose=0)
    folder = model.save(tmp_path / "saved")
    np.save(tmp_path / "x.npy", x[:2])
    assert main(["predict", str(folder), str(tmp_path / "x.npy")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_models_lists_the_language_models_bits_per_character(capsys):
    assert main(["models"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "2.32 bpc" in lines["char_lstm"] and "2.35 bpc" in lines["tiny_transformer"]
    assert "%" not in lines["char_lstm"].split("params")[1].split()[0]
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["char_lstm"]["test_bpc"] == 2.32 and rows["char_lstm"]["test_accuracy"] is None
    assert rows["lenet5"]["test_bpc"] is None and rows["lenet5"]["test_accuracy"] == zoo.RESULTS["lenet5"]


def test_listed_bpc_are_the_ones_in_results_md():
    table = (ROOT / "docs" / "results.md").read_text()
    documented = {name: float(bpc) for name, bpc in
                  re.findall(r"^\| (\w+) \| text \| \d+ \|[^\n]*\| \*\*([\d.]+)\*\* \|$", table, re.M)}
    assert documented == zoo.BITS_PER_CHARACTER
    assert "commit `150c456`" in table
