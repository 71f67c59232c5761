"""``Model.fit``'s Keras-style arguments, and what ``save`` keeps of a fit on in-memory arrays:
the history (for ``load`` and ``layerkit plot``) and a data record ``layerkit evaluate`` refuses to guess from."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

import layerkit
from layerkit.cli import main
from layerkit.data.record import DataRecord
from layerkit.errors import DataError, LayerkitError
from layerkit.training.trainer import Callback
from train_support import hermetic, mlp_model  # noqa: F401 (fixture)

SAMPLE = layerkit.__file__.replace("__init__.py", "data/embedded/mnist_sample.npz")

pytestmark = pytest.mark.usefixtures("hermetic")


@pytest.fixture(scope="module")
def digits():
    with np.load(SAMPLE) as data:
        return data["x_train"][:200], data["y_train"][:200]


class Spy(Callback):
    """Keeps the trainer, to look at what fit handed it."""

    def on_train_begin(self, trainer):
        self.trainer = trainer


def small(**training):
    return layerkit.load(mlp_model(hidden=8, dropout=0.0, **{"epochs": 1, **training}))


def test_optimizer_lr_and_validation_split_reach_the_trainer(digits):
    x, y = digits
    spy = Spy()
    model = small()
    history = model.fit(x, y, optimizer="rmsprop", lr=0.002, validation_split=0.25, callbacks=[spy], verbose=0)
    trainer = spy.trainer
    assert trainer.optimizer.type == "rmsprop" and trainer.optimizer.lr == pytest.approx(0.002)
    # the last quarter, in the given order (Keras's rule), prepared like the training part
    assert len(trainer.data.x_train) == 150 and np.array_equal(trainer.data.y_val, y[150:])
    assert np.array_equal(trainer.data.x_val, model.prepare(x[150:]))
    assert set(history.history) >= {"val_loss", "val_accuracy"}


def test_an_optimizer_dict_as_in_the_model_file(digits):
    spy = Spy()
    small().fit(*digits, optimizer={"type": "sgd", "lr": 0.1, "momentum": 0.9}, callbacks=[spy], verbose=0)
    assert spy.trainer.optimizer.type == "sgd" and spy.trainer.optimizer.lr == pytest.approx(0.1)
    assert spy.trainer.optimizer.hyper["momentum"] == 0.9


def test_lr_alone_replaces_the_model_files_learning_rate(digits):
    spy = Spy()
    small().fit(*digits, lr=0.0005, callbacks=[spy], verbose=0)
    assert spy.trainer.optimizer.type == "adam" and spy.trainer.optimizer.lr == pytest.approx(0.0005)


def test_without_a_training_section_the_optimizer_is_plain_sgd(digits):
    # the documented default (docs/python-api.md): sgd, lr 0.01, no momentum
    raw = mlp_model(hidden=8, dropout=0.0)
    raw.pop("training")
    spy = Spy()
    layerkit.load(raw).fit(*digits, epochs=1, callbacks=[spy], verbose=0)
    assert spy.trainer.optimizer.type == "sgd" and spy.trainer.optimizer.lr == pytest.approx(0.01)
    assert spy.trainer.optimizer.hyper.get("momentum", 0) == 0


def test_shuffle_false_keeps_the_given_order(digits):
    spies = Spy(), Spy()
    small().fit(*digits, shuffle=False, callbacks=[spies[0]], verbose=0)
    small().fit(*digits, callbacks=[spies[1]], verbose=0)
    assert np.array_equal(spies[0].trainer.permutation(0), np.arange(200))
    assert not np.array_equal(spies[1].trainer.permutation(0), np.arange(200))


def test_early_stopping_selects_on_the_validation_split(digits):
    spy = Spy()
    model = small(epochs=2, early_stopping={"monitor": "test_accuracy", "patience": 1})
    model.fit(*digits, validation_split=0.2, callbacks=[spy], verbose=0)
    assert spy.trainer.early["monitor"] == "val_accuracy"  # never test data
    watching = small(early_stopping={"monitor": "val_loss"})
    with pytest.raises(LayerkitError, match="monitors val_loss: pass validation_split= or validation_data="):
        watching.fit(*digits, verbose=0)
    watching.fit(*digits, verbose=0, validation_split=0.1)


def test_the_model_files_validation_split_is_the_default(digits):
    spy = Spy()
    small(data={"validation_split": 0.1}).fit(*digits, callbacks=[spy], verbose=0)
    assert len(spy.trainer.data.x_val) == 20 and np.array_equal(spy.trainer.data.y_val, digits[1][180:])


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": -1}, "epochs must be a positive integer, got -1"),
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"batch_size": 2.5}, "batch_size must be a positive integer"),
    ({"validation_split": 0}, "validation_split must be a fraction between 0 and 1"),
    ({"validation_split": 1.0}, "validation_split must be a fraction between 0 and 1"),
    ({"validation_split": -0.2}, "validation_split must be a fraction between 0 and 1"),
    ({"validation_split": "0.2"}, "validation_split must be a fraction"),
    ({"validation_split": 0.999}, "leaves 200 for validation and 0 for training"),
    ({"optimizer": "adma"}, "unknown optimizer type 'adma', did you mean 'adam'"),
    ({"optimizer": {"type": "adam", "lr": 0.1, "momentum": 0.9}}, "training.optimizer.momentum: unknown key"),
    ({"optimizer": 3}, "optimizer must be a name such as 'adam' or a dict"),
    ({"lr": 0}, "lr must be a positive number, got 0"),
    ({"lr": -0.1}, "lr must be a positive number"),
    ({"lr": math.nan}, "lr must be a positive number"),
    ({"validation_split": 0.2, "validation_data": ([], [])}, "validation_split or validation_data, not both"),
    ({"class_names": ["a", "b"]}, "class_names: 2 names for a model with 10 outputs"),
    ({"shuffle": "no"}, "shuffle must be True or False"),
    ({"verbose": 3}, "verbose must be 0, 1 or 2"),
    ({"callbacks": [Spy]}, "callbacks[0]: <class"),
    ({"callbacks": [object()]}, "is not a layerkit.training.trainer.Callback"),
    ({"callbacks": Spy()}, "callbacks must be a list of Callback objects"),
])
def test_bad_arguments_are_layerkit_errors(digits, kwargs, message):
    with pytest.raises(LayerkitError, match=re.escape(message)):
        small().fit(*digits, **kwargs)


def test_an_unknown_keyword_is_a_type_error(digits):
    with pytest.raises(TypeError):
        small().fit(*digits, learning_rate=0.1)  # type: ignore[call-arg]


def test_save_carries_the_history_of_every_fit(digits, tmp_path):
    model = small()
    first = model.fit(*digits, verbose=0)
    model.fit(*digits, verbose=0)
    assert [r["epoch"] for r in first.epochs] == [1]
    assert [r["epoch"] for r in model.history.epochs] == [1, 2]  # numbered on across fit calls
    model.save(tmp_path / "saved")
    written = json.loads((tmp_path / "saved" / "history.json").read_text())
    assert [r["epoch"] for r in written] == [1, 2] and (tmp_path / "saved" / "history.csv").is_file()
    again = layerkit.load(tmp_path / "saved")
    assert again.history.history["train_loss"] == model.history.history["train_loss"]


def test_save_records_that_the_model_was_trained_on_arrays(digits, tmp_path):
    from layerkit.data.record import array_fingerprint

    x, y = digits
    model = small()
    model.fit(x, y, validation_split=0.5, class_names=list("abcdefghij"), verbose=0)
    model.save(tmp_path / "saved")
    record = json.loads((tmp_path / "saved" / "data.json").read_text())
    assert record["source"] == "arrays" and record["dataset"] is None and record["files"] == []
    assert record["arrays"] == {"x": {"shape": [200, 28, 28], "dtype": "uint8"},
                                "y": {"shape": [200], "dtype": str(y.dtype)},
                                "sha256": array_fingerprint(x, y), "class_names": list("abcdefghij")}
    assert record["samples"] == {"train": 100, "validation": 100, "test": 0}
    assert record["options"]["validation_split"] == 0.5
    assert layerkit.load(tmp_path / "saved").data_record.arrays == record["arrays"]


def test_the_arrays_record_is_checked_when_read(tmp_path, digits):
    model = small()
    model.fit(*digits, verbose=0)
    good = model.data_record.to_dict()
    assert DataRecord.from_dict(good).from_arrays
    for broken in ({**good, "arrays": None}, {**good, "arrays": {**good["arrays"], "sha256": "x"}},
                   {**good, "dataset": None, "source": "files"}):
        with pytest.raises(DataError, match="damaged"):
            DataRecord.from_dict(broken)


def test_cli_evaluate_refuses_a_model_trained_on_arrays(digits, tmp_path, capsys):
    model = small()
    model.fit(*digits, verbose=0)
    model.save(tmp_path / "saved")
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "saved")]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in captured.err and captured.out == ""
    assert "trained on in-memory arrays" in errors[0] and "model.evaluate(x, y)" in errors[0]
    assert "--dataset NAME or --data-dir DIR" in errors[0]
    # the weights file alone finds the same record
    assert main(["evaluate", str(tmp_path / "saved" / "model.json"), "--weights",
                 str(tmp_path / "saved" / "weights.npz")]) == 2
    # naming the data explicitly scores it there, with a note saying so
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "saved"), "--dataset", "mnist"]) == 0
    captured = capsys.readouterr()
    assert "trained on in-memory arrays; scoring it on" in captured.err and "test accuracy" in captured.out


def test_cli_plot_draws_a_saved_models_history(digits, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model = small()
    model.fit(*digits, verbose=0)
    model.save(tmp_path / "saved")
    assert main(["plot", str(tmp_path / "saved")]) == 0
    assert (tmp_path / "saved" / "curves.png").stat().st_size > 0
    small().save(tmp_path / "untrained")
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "untrained")]) == 2
    assert "trained for 0 epochs" in capsys.readouterr().err
    (tmp_path / "saved" / "history.json").unlink()  # as an older layerkit saved it
    assert main(["plot", str(tmp_path / "saved")]) == 2
    assert "saved without its training history" in capsys.readouterr().err


def test_a_saved_copy_of_a_cli_run_keeps_its_history_and_data(tmp_path):
    raw = mlp_model(hidden=8, dropout=0.0, epochs=1, data={"train_limit": 200, "test_limit": 100})
    (tmp_path / "m.json").write_text(json.dumps(raw))
    assert main(["fit", str(tmp_path / "m.json"), "--quiet", "--out", str(tmp_path / "run")]) == 0
    loaded = layerkit.load(tmp_path / "run")
    assert len(loaded.history) == 1 and loaded.data_record.dataset == "mnist"
    loaded.save(tmp_path / "copy")
    assert json.loads((tmp_path / "copy" / "data.json").read_text()) == \
        json.loads((tmp_path / "run" / "data.json").read_text())
    assert main(["evaluate", str(tmp_path / "copy")]) == 0
