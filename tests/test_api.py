"""The Python API: load from anything, fit on raw arrays, evaluate/predict, save and load back."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import layerkit
from layerkit.errors import DataError, LayerkitError
from train_support import hermetic, mlp_model  # noqa: F401 (fixture)

SAMPLE = layerkit.__file__.replace("__init__.py", "data/embedded/mnist_sample.npz")


@pytest.fixture(scope="module")
def digits():
    with np.load(SAMPLE) as data:
        return data["x_train"][:400], data["y_train"][:400], data["x_test"][:100], data["y_test"][:100]


@pytest.fixture
def trained(hermetic, digits):  # noqa: F811
    x, y, xv, yv = digits
    model = layerkit.load(mlp_model(hidden=16, dropout=0.0, epochs=2))
    history = model.fit(x, y, validation_data=(xv, yv), verbose=0)
    return model, history


def test_import_layerkit_stays_light():
    code = "import sys, layerkit; print([m for m in ('jsonschema', 'layerkit.api', 'numpy') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_load_takes_a_path_a_shipped_name_or_a_dict(hermetic, tmp_path):  # noqa: F811
    from conftest import MODELS_DIR
    by_path = layerkit.load(MODELS_DIR / "cnn1.json")
    by_name = layerkit.load("cnn1")
    assert by_path.name == by_name.name == "cnn1" and by_path.param_count == 13_610
    for a, b in zip(by_path.weights().values(), by_name.weights().values(), strict=True):
        assert np.array_equal(a, b)  # the same seed, the same fresh weights
    assert layerkit.load(mlp_model()).input_shape == (1, 28, 28)
    with pytest.raises(LayerkitError, match="nope: no such file, nor a shipped model"):
        layerkit.load("nope")
    with pytest.raises(LayerkitError, match="not a saved model or run directory"):
        layerkit.load(tmp_path)


def test_fit_returns_the_history_and_learns(trained, digits):
    model, history = trained
    assert len(history) == 2 and set(history.history) >= {"train_loss", "val_loss", "val_accuracy", "lr"}
    assert "test_loss" not in history.history  # no test split in the API's fit
    scores = model.evaluate(digits[2], digits[3])
    assert scores["accuracy"] > 0.5 and scores["loss"] == pytest.approx(history["val_loss"][-1], rel=1e-6)


def test_predict_is_the_argmax_of_predict_proba(trained, digits):
    model, _ = trained
    probs = model.predict_proba(digits[2])
    assert probs.shape == (100, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.array_equal(model.predict(digits[2]), probs.argmax(axis=1))


def test_raw_inputs_go_through_the_saved_preprocessing(trained, digits):
    model, _ = trained
    x = digits[2]
    # uint8 pixels are scaled by 1/255; floats already in [0, 1] are not; layouts are recognised
    same = [x.astype(np.float32) / 255, x[:, None], x.reshape(len(x), -1), x[..., None]]
    want = model.predict_proba(x)
    for variant in same:
        assert np.allclose(model.predict_proba(variant), want, atol=1e-6)
    assert not np.allclose(model.predict_proba(x.astype(np.float32)), want, atol=1e-3)  # 0..255 floats differ


def test_save_and_load_give_the_same_answers(trained, digits, tmp_path):
    model, _ = trained
    model.save(tmp_path / "saved")
    again = layerkit.load(tmp_path / "saved")
    assert np.array_equal(again.predict_proba(digits[2]), model.predict_proba(digits[2]))
    assert again.preprocessing == model.preprocessing


def test_a_cli_run_directory_loads(hermetic, write_model, tmp_path, digits):  # noqa: F811
    from layerkit.cli import main
    path = write_model(mlp_model(hidden=8, epochs=1, data={"train_limit": 200, "test_limit": 50}))
    assert main(["fit", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    model = layerkit.load(tmp_path / "run")
    import json
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    with np.load(SAMPLE) as data:
        scores = model.evaluate(data["x_test"][:50], data["y_test"][:50])
    assert scores["accuracy"] == pytest.approx(metrics["test_accuracy"])
    with pytest.raises(LayerkitError, match="holds a training run"):
        model.save(tmp_path / "run")


def test_verbose_controls_the_output(hermetic, digits, capsys):  # noqa: F811
    x, y = digits[0][:100], digits[1][:100]
    model = layerkit.load(mlp_model(hidden=8, epochs=1))
    model.fit(x, y, verbose=0)
    assert capsys.readouterr().out == ""
    model.fit(x, y, verbose=2)
    assert capsys.readouterr().out.startswith("epoch 1/1  train loss")


def test_bad_labels_and_standardize_without_statistics_are_refused(hermetic, digits):  # noqa: F811
    x, y = digits[0][:50], digits[1][:50]
    model = layerkit.load(mlp_model(hidden=8, epochs=1, classes=3))
    with pytest.raises(DataError, match="labels go from 0 to 9 but the model has 3 outputs"):
        model.fit(x, y, verbose=0)
    standardized = layerkit.load(mlp_model(hidden=8, epochs=1, data={"normalize": "standardize"}))
    with pytest.raises(LayerkitError, match="call fit first"):
        standardized.predict(x)
    standardized.fit(x, y, verbose=0)
    assert standardized.preprocessing.mean is not None and standardized.predict(x).shape == (50,)


def test_check_grads_returns_the_report(hermetic):  # noqa: F811
    report = layerkit.check_grads(layerkit.load(mlp_model(hidden=4)), samples=4, verbose=False)
    assert report.ok
