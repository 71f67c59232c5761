"""Starting from another run's weights: ``training.init_from`` / ``layerkit fit --init-from`` and
``Model.load_weights``; and fine-tuning a trained lenet5 with its convolutions frozen."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

import layerkit
from layerkit.cli import main
from layerkit.modelfile import zoo
from layerkit.nn.network import load_npz
from layerkit.training.runs import RunDir, RunRequest, load_run_data, train
from layerkit.training.trainer import Callback, TrainingInterrupted

LIMITS = {"train_limit": 192, "test_limit": 64}


def lenet5(**training) -> dict:
    model = json.loads(zoo.resolve("lenet5").read_text())
    model.pop("$schema")
    model["training"].update({"epochs": 1, "batch_size": 32, "data": dict(LIMITS), **training})
    return model


def fine_tune_model(source, **training) -> dict:
    """lenet5 on classes 0, 1, 2 with a new 3-unit head, its convolutions frozen, starting from ``source``."""
    model = lenet5(init_from=str(source), **training)
    model["training"]["data"]["classes"] = [0, 1, 2]
    for layer in model["layers"]:
        if layer.get("name") in ("conv1", "conv2"):
            layer["trainable"] = False
    model["layers"][-1] = {"name": "head", "type": "dense", "units": 3}
    return model


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("init") / "src"
    train(RunRequest(model=lenet5(), out=out))
    return out


class FirstWeights(Callback):
    """Keeps a copy of the weights training starts from, before its first step."""

    def on_train_begin(self, trainer) -> None:
        self.weights = {k: v.copy() for k, v in trainer.model.weights_dict().items()}


def test_fine_tuning_lenet5_with_frozen_convolutions(source_run, tmp_path):
    first = FirstWeights()
    lines: list[str] = []
    run, result = train(RunRequest(model=fine_tune_model(source_run), out=tmp_path / "ft", callbacks=[first],
                                   log=lines.append))
    src = load_npz(source_run / "weights.npz")
    done = load_npz(run / "weights.npz")
    for key in ("params/conv1/W", "params/conv1/b", "params/conv2/W", "params/conv2/b"):
        assert np.array_equal(done[key], src[key]), key  # frozen: not moved by a single bit
    for key in ("params/fc1/W", "params/fc2/W"):  # started from the source, then trained
        assert np.array_equal(first.weights[key], src[key]), key
        assert not np.array_equal(done[key], src[key]), key
    assert first.weights["params/head/W"].shape == (84, 3)
    assert result.test_accuracy is not None and result.test_accuracy > 0.5
    assert lines[0].startswith(f"init from {source_run} (weights.npz): 8 tensors loaded, 0 skipped, 2 new")
    assert "  new, not in the source (initialized): head/W, head/b" in lines
    assert "  in the source, not in this model: logits/W, logits/b" in lines
    record = json.loads((run / "init.json").read_text())
    assert record["sha256"] == json.loads((run / "metrics.json").read_text())["init_from"]["sha256"]
    assert record["sha256"] == hashlib.sha256((source_run / "weights.npz").read_bytes()).hexdigest()
    assert record["path"] == str(source_run.resolve())


def test_the_first_loss_is_that_of_the_loaded_weights(source_run, tmp_path):
    # one batch of the whole training split: its loss is computed before the first step, so it is the
    # loss of the source's weights on the source's training data (a mean: the order does not matter)
    model = fine_tune_model(source_run, batch_size=LIMITS["train_limit"])
    model["layers"][-1] = {"name": "logits", "type": "dense", "units": 10}
    del model["training"]["data"]["classes"]
    run, _ = train(RunRequest(model=model, out=tmp_path / "same"))
    first = json.loads((run / "batches.json").read_text())["train_loss"][0]
    source = layerkit.load(source_run)
    data = load_run_data(RunDir(source_run), source.spec, source.net)
    out, _ = source.net.forward(data.x_train, training=True)
    value, _ = source.loss.forward(out, data.y_train)
    assert first == pytest.approx(float(value), rel=1e-5)
    fresh = json.loads((train(RunRequest(model=lenet5(batch_size=LIMITS["train_limit"]), out=tmp_path / "fresh"))[0]
                        / "batches.json").read_text())["train_loss"][0]
    assert fresh != pytest.approx(float(value), rel=1e-2)  # a fresh start has another first loss


def test_shape_differences_are_skipped_and_shown_with_both_shapes(source_run, tmp_path, write_model, capsys):
    model = lenet5(init_from=str(source_run))
    model["layers"][-1]["units"] = 4
    model["training"]["data"]["classes"] = [0, 1, 2, 3]
    path = write_model(model)
    assert main(["fit", str(path), "--quiet", "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "9 tensors loaded" not in err and "8 tensors loaded, 2 skipped, 0 new" in err
    assert "logits/W (shape (84, 10) in the source, (84, 4) here)" in err


def test_fit_init_from_flag_and_a_source_with_nothing_that_matches(source_run, tmp_path, write_model, capsys):
    mlp = {"format": 1, "input": {"shape": [1, 28, 28]},
           "layers": [{"type": "flatten"}, {"name": "other", "type": "dense", "units": 10}],
           "training": {"dataset": "mnist", "epochs": 1, "data": dict(LIMITS)}}
    path = write_model(mlp)
    assert main(["fit", str(path), "--quiet", "--init-from", str(source_run), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {source_run}: no tensor matches model 'model' by layer name and shape "
                   f"(10 tensors in the source, 2 in the model)"]
    assert not (tmp_path / "r").exists()
    assert main(["fit", str(path), "--quiet", "--init-from", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "no such run directory or weights file" in capsys.readouterr().err


class StopAfterFirstEpoch(Callback):
    def on_train_begin(self, trainer) -> None:
        self.trainer = trainer

    def on_epoch_end(self, epoch, record, seconds) -> None:
        self.trainer.request_stop()


def test_resume_continues_from_its_own_checkpoint_not_the_init_source(source_run, tmp_path):
    source = tmp_path / "copy"
    shutil.copytree(source_run, source)
    out = tmp_path / "ft"
    with pytest.raises(TrainingInterrupted):
        train(RunRequest(model=fine_tune_model(source, epochs=2), out=out, callbacks=[StopAfterFirstEpoch()]))
    shutil.rmtree(source)  # re-reading it would fail: a resumed run must not
    run, result = train(RunRequest(resume=out))
    assert result.epochs_run == 2
    assert json.loads((run / "metrics.json").read_text())["init_from"]["path"] == str(source.resolve())


def test_load_weights_from_python(source_run, tmp_path, capsys):
    model = layerkit.load(fine_tune_model(source_run))
    report = model.load_weights(source_run)
    assert report.loaded[:2] == ["conv1/W", "conv1/b"] and report.new == ["head/W", "head/b"]
    assert "8 tensors loaded, 0 skipped, 2 new" in capsys.readouterr().out
    assert np.array_equal(model.weights()["params/fc1/W"], load_npz(source_run / "weights.npz")["params/fc1/W"])
    with pytest.raises(layerkit.LayerkitError, match=r"tensor params/logits/W has shape \(84, 10\) where model "
                                                     r"'lenet5' has head/W of shape \(84, 3\)"):
        model.load_weights(source_run, by_name=False)
    same = layerkit.load(lenet5())
    same.load_weights(source_run / "checkpoint.npz", by_name=False, verbose=False)
    assert np.array_equal(same.weights()["params/logits/W"], load_npz(source_run / "weights.npz")["params/logits/W"])
    with pytest.raises(layerkit.LayerkitError, match="no such run directory or weights file"):
        model.load_weights(tmp_path / "missing")
