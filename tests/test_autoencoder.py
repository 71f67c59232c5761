"""Reconstruction training: training.data.target 'input', the pixel accuracy, the shipped
mnist_autoencoder, and its reconstructions plot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from layerkit.cli import main
from layerkit.errors import LayerkitError
from layerkit.modelfile import zoo
from layerkit.nn.elementwise_losses import BinaryCrossEntropyWithLogits, MeanSquaredError

from train_support import hermetic  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("hermetic")


def small_autoencoder(**data):
    model = json.loads(zoo.files()["mnist_autoencoder"].read_text())
    model.pop("$schema")
    model["training"].update(epochs=2, batch_size=50)
    model["training"]["data"].update({"train_limit": 300, "test_limit": 20, **data})
    return model


def test_pixel_accuracy_of_a_reconstruction():
    target = np.array([[[[0.0, 1.0], [0.9, 0.2]]], [[[1.0, 1.0], [0.0, 0.0]]]])
    logits = np.array([[[[-3.0, 2.0], [-1.0, -2.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    # sample 0: 3 of 4 pixels on the target's side of 0.5 (logit 0), sample 1: 2 of 4
    assert BinaryCrossEntropyWithLogits().correct(logits, target) == pytest.approx(0.75 + 0.5)
    assert MeanSquaredError().correct(logits * 0 + 0.6, target) == pytest.approx(0.5 + 0.5)
    # class ids keep the usual count
    assert MeanSquaredError().correct(np.eye(3)[[0, 2, 1]], np.array([0, 2, 2])) == 2.0


def test_autoencoder_trains_on_its_own_input(tmp_path, capsys):
    from layerkit.data import load_data
    from layerkit.modelfile.build import build_model
    from layerkit.modelfile.spec import spec_from_dict
    from layerkit.training.trainer import Trainer, build_loss

    spec = spec_from_dict(small_autoencoder())
    model = build_model(spec)
    assert model.graph.nodes[-1].output_shape == (1, 28, 28)
    data = load_data("mnist", spec.training["data"], seed=0, input_shape=spec.input_shape)
    assert data.y_train is data.x_train and data.y_test is data.x_test
    result = Trainer(model, build_loss(spec), data, spec.training).fit()
    losses = [r["train_loss"] for r in result.history]
    assert losses[1] < losses[0] and 0.5 < result.test_accuracy <= 1.0


def test_shifting_the_input_but_not_the_target_is_refused():
    from layerkit.data import load_data
    from layerkit.modelfile.build import build_model
    from layerkit.modelfile.spec import spec_from_dict
    from layerkit.training.trainer import Trainer, build_loss

    spec = spec_from_dict(small_autoencoder(augment={"shift": 2}))
    model = build_model(spec)
    data = load_data("mnist", spec.training["data"], seed=0, input_shape=spec.input_shape)
    with pytest.raises(LayerkitError, match="moves the input images but not the targets"):
        Trainer(model, build_loss(spec), data, spec.training)


def test_fit_evaluate_and_plot_reconstructions(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib", reason="plots need the plot extra")
    monkeypatch.setenv("LAYERKIT_SAMPLE_PARALLEL", "0")  # one process: no workers to start for 2 batches
    path = tmp_path / "ae.json"
    path.write_text(json.dumps(small_autoencoder(train_limit=100)))
    run = tmp_path / "run"
    assert main(["fit", str(path), "--epochs", "1", "--quiet", "--out", str(run)]) == 0
    assert main(["evaluate", str(run)]) == 0
    assert "pixel accuracy" in capsys.readouterr().out
    assert main(["plot", str(run)]) == 0
    assert (run / "reconstructions.png").stat().st_size > 1000
