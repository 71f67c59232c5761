"""The CIFAR-10 nets on data in the real `cifar10` loader format, and the Kaggle CSV tool.

There is no CIFAR-10 download here, so the test writes the six python batches itself, exactly as
the dataset ships them (a pickled dict per file: b"batch_label", b"labels" a list, b"data" a
(N, 3072) uint8 array of 1024 red, 1024 green, 1024 blue values, b"filenames"); the colour of each
class is distinct, so a net that reads the channels in the wrong order or mislabels cannot learn it.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, shipped_model_files
from layerkit.cli import main
from layerkit.modelfile import zoo

CIFAR_MODELS = [p.stem for p in shipped_model_files() if json.loads(p.read_text())["training"]["dataset"] == "cifar10"]


def colours(seed: int = 0) -> np.ndarray:
    """Class k's mean colour (red, green, blue); the pixels are noisy around it."""
    return np.random.default_rng([seed, 1]).integers(30, 226, size=(10, 3))


def write_cifar(directory: Path, per_batch: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    mean = colours(seed)
    folder = directory / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, size=per_batch)
        images = mean[labels][:, :, None] + rng.normal(0, 12, size=(per_batch, 3, 1024))
        data = np.clip(images, 0, 255).astype(np.uint8).reshape(per_batch, 3072)
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": data,
                 b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return directory


def test_the_loader_reads_the_channels_in_order(tmp_path):
    from layerkit.data.builtin import Cifar10

    raw = Cifar10().read(write_cifar(tmp_path) / "cifar-10-batches-py")
    assert raw.x_train.shape == (200, 3, 32, 32) and raw.x_test.shape == (40, 3, 32, 32)
    means = raw.x_train.reshape(200, 3, -1).mean(axis=2)
    assert np.abs(means - colours()[raw.y_train]).max() < 5


def test_the_zoo_has_the_cifar_nets():
    assert {"cifar10_cnn", "lab_cifar10_softmax", "lab_cifar10_mlp"} <= set(CIFAR_MODELS)


def test_cifar_softmax_lab_net_learns_from_the_cifar_format(tmp_path, capsys):
    name = "lab_cifar10_softmax"
    data = write_cifar(tmp_path / "data", per_batch=30)
    out = tmp_path / "run"
    # small batches: 200 images would be one step an epoch at the files' batch sizes
    assert main(["fit", name, "--data-dir", str(data), "--epochs", "2", "--batch-size", "20", "--lr", "0.01",
                 "--quiet", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.9, metrics


@pytest.mark.parametrize("name", ["cifar10_cnn", "lab_cifar10_mlp"])
def test_cifar_nets_train_on_the_cifar_format(tmp_path, name, capsys):
    data = write_cifar(tmp_path / "data", per_batch=8)
    out = tmp_path / "run"
    # one step is enough to show the loader, shapes, standardization and augmentation fit the net
    assert main(["fit", name, "--data-dir", str(data), "--epochs", "1", "--batch-size", "32",
                 "--quiet", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 1


# lab_alexnet_kaggle is alexnet_mnist's net, which tests/test_cli_check.py checks already: checking the
# largest net twice would only add time
@pytest.mark.parametrize("name", [n for n in zoo.names() if n.startswith("lab_") and n != "lab_alexnet_kaggle"])
def test_lab_nets_check_grads(name, capsys):
    assert main(["check-grads", name, "--samples", "3"]) == 0, capsys.readouterr().out


def kaggle_tool():
    spec = importlib.util.spec_from_file_location("make_kaggle_csv", ROOT / "tools" / "make_kaggle_csv.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kaggle_csv_tool_writes_the_competition_format(tmp_path, mnist_dir, capsys):
    out = tmp_path / "kaggle"
    tool = kaggle_tool()
    tool.main([str(out), "--source", str(mnist_dir), "--train-rows", "300", "--test-rows", "200"])
    train = (out / "train.csv").read_text().splitlines()
    test = (out / "test.csv").read_text().splitlines()
    assert train[0] == "label," + ",".join(f"pixel{i}" for i in range(784)) and len(train) == 301
    assert test[0] == ",".join(f"pixel{i}" for i in range(784)) and len(test) == 201
    assert (out / "test_labels.csv").read_text().splitlines()[:2][0] == "ImageId,Label"
    from layerkit.data.builtin import KaggleDigits

    raw = KaggleDigits().read(out / "train.csv")
    assert raw.x_train.shape == (270, 1, 28, 28) and raw.x_test.shape == (30, 1, 28, 28)
    # with the answers in test.csv, the loader tests on its rows: the same images as test_labels.csv
    tool.main([str(out), "--source", str(mnist_dir), "--train-rows", "300", "--test-rows", "200", "--labelled-test"])
    labelled = KaggleDigits().read(out / "train.csv")
    answers = np.loadtxt(out / "test_labels.csv", delimiter=",", skiprows=1, dtype=np.int64)
    assert labelled.x_train.shape == (300, 1, 28, 28) and np.array_equal(labelled.y_test, answers[:, 1])
