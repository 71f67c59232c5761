"""No answers from a model nobody trained: predict, evaluate and export refuse a model file or a
shipped name without weights unless --untrained; Python warns instead (as Keras would answer)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import layerkit
from layerkit.api import UntrainedWarning
from layerkit.cli import main
from train_support import hermetic, mlp_model  # noqa: F401 (hermetic is a fixture)

pytestmark = pytest.mark.usefixtures("hermetic")

SAMPLE = layerkit.__file__.replace("__init__.py", "data/embedded/mnist_sample.npz")


@pytest.fixture
def digit(tmp_path):
    with np.load(SAMPLE) as data:
        x = data["x_test"][:2]
    np.save(tmp_path / "digits.npy", x)
    return tmp_path / "digits.npy"


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "my.json"
    path.write_text(json.dumps(mlp_model(hidden=8, dropout=0.0)))
    return path


@pytest.mark.parametrize("which", ["shipped", "file"])
def test_predict_refuses_an_untrained_model(which, digit, model_file, capsys):
    model = "lenet5" if which == "shipped" else str(model_file)
    assert main(["predict", model, str(digit)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "untrained" in err
    assert f"layerkit fit {model}" in err and "--untrained" in err
    assert main(["predict", model, str(digit), "--untrained", "--json"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 2 and "note: --untrained" in captured.err


def test_evaluate_and_export_refuse_an_untrained_model(model_file, tmp_path, capsys):
    assert main(["evaluate", str(model_file)]) == 2
    assert "--untrained" in capsys.readouterr().err
    assert main(["evaluate", str(model_file), "--untrained", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["weights"] is None
    assert main(["export", "lenet5"]) == 2
    err = capsys.readouterr().err
    assert "layerkit fit lenet5" in err and "--untrained" in err
    pytest.importorskip("onnx", reason="export needs the onnx extra")
    assert main(["export", "lenet5", "--untrained"]) == 2  # no run directory to write into
    assert "give --out FILE" in capsys.readouterr().err
    assert main(["export", "lenet5", "--untrained", "--out", str(tmp_path / "l.onnx")]) == 0
    assert (tmp_path / "l.onnx").is_file()


def test_python_warns_once_for_an_untrained_model_and_not_once_trained(tmp_path):
    with np.load(SAMPLE) as data:
        x, y = data["x_train"][:100], data["y_train"][:100]
    model = layerkit.load(mlp_model(hidden=8, dropout=0.0))
    assert not model.trained
    with pytest.warns(UntrainedWarning, match="untrained: its predictions come from its random initial weights"):
        model.predict(x[:3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict_proba(x[:3])  # once per model
        model.fit(x, y, epochs=1, verbose=0)
        assert model.trained
        model.predict(x[:3])
        folder = model.save(tmp_path / "saved")
        again = layerkit.load(folder)
        assert again.trained
        again.evaluate(x[:10], y[:10])
