"""The edges of evaluate and predict (issue 19): what is not a run, a run's data with its defaults,
class names that do not fit, and messages in the data's own terms (features, columns, backgrounds)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import layerkit
from layerkit.cli import main
from layerkit.data.builtin import IDX_FILES
from layerkit.data.idx import write_idx
from layerkit.data.record import OPTION_DEFAULTS, DataRecord
from layerkit.errors import DataError, LayerkitError
from layerkit.modelfile.schema import DATA_SCHEMA
from train_support import hermetic, mlp_model  # noqa: F401 (hermetic is a fixture)

pytestmark = pytest.mark.usefixtures("hermetic")

SAMPLE = layerkit.__file__.replace("__init__.py", "data/embedded/mnist_sample.npz")


def _model_file(tmp_path, **training):
    """An MLP model file; without ``data``, no training.data section: every data option at its default."""
    raw = mlp_model(hidden=16, dropout=0.0, epochs=1, **training)
    if "data" not in training:
        raw["training"].pop("data")
    path = tmp_path / "mlp.json"
    path.write_text(json.dumps(raw))
    return path


@pytest.fixture(scope="module")
def limited_run(tmp_path_factory):
    """A run trained with --train-limit and --test-limit on the embedded sample (the issue's case)."""
    root = tmp_path_factory.mktemp("edges")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        mp.delenv("LAYERKIT_DATA_DIR", raising=False)
        model = _model_file(root)
        assert main(["fit", str(model), "--train-limit", "300", "--test-limit", "100", "--out",
                     str(root / "runs" / "mlp-1"), "--quiet"]) == 0
    return model, root / "runs" / "mlp-1"


def _one_error(capsys, *args) -> str:
    assert main([*map(str, args)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1, err
    return err


# -- item 1: evaluate on anything that is not a run --------------------------------------------
def test_evaluate_names_what_each_non_run_needs(limited_run, tmp_path, capsys):
    model, run = limited_run
    err = _one_error(capsys, "evaluate", run.parent)
    assert "folder of runs (mlp-1)" in err and f"layerkit evaluate {run}" in err
    (tmp_path / "empty").mkdir()
    assert "(an empty folder)" in _one_error(capsys, "evaluate", tmp_path / "empty")
    assert "no such file or directory" in _one_error(capsys, "evaluate", tmp_path / "missing")
    err = _one_error(capsys, "evaluate", model)
    assert f"{model}: a model file has no trained weights" in err and "--weights" in err
    assert f"layerkit fit {model}" in err
    assert "lenet5: a shipped model has no trained weights" in _one_error(capsys, "evaluate", "lenet5")


def test_evaluate_refusals_are_agreed_by_every_mpi_rank(tmp_path):
    # rank 0 reports, the other ranks end quietly: only for errors every rank reaches alike
    from layerkit.cli.train import evaluate
    for target in (tmp_path, tmp_path / "missing"):
        with pytest.raises(LayerkitError) as caught:
            evaluate(model=target, weights=None, data_dir=None, dataset=None, allow_other_data=False,
                     as_json=False, untrained=False)
        assert getattr(caught.value, "everywhere", False)


# -- item 2: a run's weights on the run's data ----------------------------------------------------
def test_model_file_with_a_runs_weights_is_scored_on_the_runs_test_split(limited_run, capsys):
    model, run = limited_run
    assert main(["evaluate", str(model), "--weights", str(run / "weights.npz"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    metrics = json.loads((run / "metrics.json").read_text())
    assert report["samples"] == 100 and report["accuracy"] == metrics["test_accuracy"]


def test_other_data_is_refused_naming_only_what_differs_and_flags_given(limited_run, tmp_path, capsys):
    model, run = limited_run
    other = _model_file(tmp_path, data={"test_limit": 50, "train_limit": 7, "normalize": "standardize"})
    err = _one_error(capsys, "evaluate", other, "--weights", run / "weights.npz")
    assert "training.data.test_limit 50 instead of 100" in err
    assert "50 test samples instead of 100" in err
    # the training set's limit and the normalisation (the run's own statistics) do not change the score
    for word in ("train_limit", "normalize", "layout", "--data-dir", "--dataset"):
        assert word not in err
    assert "--allow-other-data" in err
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    rng = np.random.default_rng(0)
    for stem, array in zip(IDX_FILES, (rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), np.arange(50) % 10,
                                       rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), np.arange(20) % 10),
                           strict=True):
        write_idx(other_dir / (stem + ".gz"), array)
    err = _one_error(capsys, "evaluate", run, "--data-dir", other_dir)
    assert "Leave out --data-dir to use the recorded data" in err and "--dataset" not in err


def test_record_differences_fill_defaults_and_ignore_training_only_options():
    assert {k: v["default"] for k, v in DATA_SCHEMA["properties"].items() if k in OPTION_DEFAULTS
            and "default" in v} == {k: v for k, v in OPTION_DEFAULTS.items() if v is not None}
    samples = {"train": 500, "validation": 0, "test": 100}
    then = DataRecord("mnist", None, "embedded", options={"normalize": "unit", "layout": "auto", "train_limit": 500},
                      samples=samples)
    now = DataRecord("mnist", None, "embedded", options={}, samples={**samples, "train": 5000})
    assert then.differences(now, evaluating=True) == []
    assert then.differences(now) == ["training.data.train_limit not set instead of 500",
                                     "5,000 train / 0 validation / 100 test samples instead of "
                                     "500 train / 0 validation / 100 test"]


# -- item 9: class names, one per output ---------------------------------------------------------
def test_class_names_must_be_one_per_output(tmp_path, capsys):
    with np.load(SAMPLE) as data:
        x, y = data["x_train"][:100], data["y_train"][:100]
    model = layerkit.load(mlp_model(hidden=8, dropout=0.0))
    with pytest.raises(LayerkitError, match=r"class_names: 2 names for a model with 10 outputs"):
        model.fit(x, y, epochs=1, verbose=0, class_names=["cat", "dog"])
    model.fit(x, y, epochs=1, verbose=0, class_names=[f"d{i}" for i in range(10)])
    folder = model.save(tmp_path / "saved")
    pre = json.loads((folder / "preprocessing.json").read_text())
    (folder / "preprocessing.json").write_text(json.dumps({**pre, "class_names": ["cat", "dog"]}))
    with pytest.raises(LayerkitError, match=r"preprocessing.json: class_names: 2 names .* 10 outputs"):
        layerkit.load(folder)


def test_a_runs_class_names_are_checked_by_evaluate(limited_run, tmp_path, capsys):
    _, run = limited_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    pre = json.loads((copy / "preprocessing.json").read_text())
    (copy / "preprocessing.json").write_text(json.dumps({**pre, "class_names": ["a", "b"]}))
    assert "class_names: 2 names for a model with 10 outputs" in _one_error(capsys, "evaluate", copy)


# -- item 13: features and columns, not images ----------------------------------------------------
def test_flat_inputs_are_counted_in_features():
    flat = layerkit.load({"format": 1, "name": "flat", "input": {"shape": [20]},
                          "layers": [{"name": "out", "type": "dense", "units": 3}],
                          "loss": {"type": "softmax_cross_entropy"}, "training": {"dataset": "mnist"}})
    with pytest.raises(DataError) as caught:
        flat.prepare(np.zeros((10, 30), np.float32), "x")
    assert "got 30 features per sample" in str(caught.value) and "expects 20" in str(caught.value)
    assert "images" not in str(caught.value)


@pytest.mark.parametrize("columns, label, expected", [
    (783, False, "783 columns, expected 784 (784 pixels for the model's 1x28x28 input)"),
    (784, True, "784 columns, expected 785 (a label column and 784 pixels"),
])
def test_csv_rows_are_counted_in_columns(limited_run, tmp_path, capsys, columns, label, expected):
    _, run = limited_run
    names = (["label"] if label else []) + [f"pixel{i}" for i in range(columns - label)]
    rows = np.random.default_rng(0).integers(0, 256, (3, columns))
    path = tmp_path / "rows.csv"
    path.write_text(",".join(names) + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    err = _one_error(capsys, "predict", run, path)
    assert expected in err and "images" not in err


def test_kaggle_training_csv_counts_its_label_column(tmp_path):
    from layerkit.data.formats import read_label_csv
    path = tmp_path / "train.csv"
    path.write_text("label," + ",".join(f"pixel{i}" for i in range(783)) + "\n" + ",".join(["0"] * 784) + "\n")
    with pytest.raises(DataError, match=r"784 columns .*expected 785: .*a label column and 784 pixels"):
        read_label_csv(path)


# -- item 7: dark ink on white paper ----------------------------------------------------------------
@pytest.fixture(scope="module")
def digit_images(tmp_path_factory):
    Image = pytest.importorskip("PIL.Image", reason="images need the images extra (Pillow)")
    folder = tmp_path_factory.mktemp("digits")
    with np.load(SAMPLE) as data:
        digit = data["x_test"][0]
    Image.fromarray(digit).save(folder / "mnist_like.png")
    Image.fromarray(255 - digit).save(folder / "ink_on_paper.png")
    return folder


def test_predict_notes_a_light_background_for_a_model_trained_on_dark(limited_run, digit_images, capsys):
    _, run = limited_run
    assert main(["predict", str(run), str(digit_images / "ink_on_paper.png")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("note: ") and "ink_on_paper.png" in err and "pass --invert" in err
    assert main(["predict", str(run), str(digit_images / "ink_on_paper.png"), "--invert"]) == 0
    assert "note:" not in capsys.readouterr().err
    assert main(["predict", str(run), str(digit_images / "mnist_like.png")]) == 0
    assert "note:" not in capsys.readouterr().err
    assert main(["predict", str(run), str(digit_images / "mnist_like.png"), "--invert"]) == 0
    assert "try without --invert" in capsys.readouterr().err


def test_the_training_background_comes_from_the_statistics_first():
    with np.load(SAMPLE) as data:
        x, y = data["x_train"][:100], data["y_train"][:100]
    model = layerkit.load(mlp_model(hidden=8, dropout=0.0, data={"normalize": "standardize"}))
    assert model.input_background == "dark"  # MNIST, by the dataset's declaration
    model.fit(255 - x, y, epochs=1, verbose=0)  # trained on dark ink on white: the statistics say light
    assert model.input_background == "light"
