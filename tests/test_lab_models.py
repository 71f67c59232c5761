"""The CIFAR-10 nets on data in the real `cifar10` loader format, and the Kaggle CSV tool.

There is no CIFAR-10 download here, so the test writes the six python batches itself, exactly as
the dataset ships them (a pickled dict per file: b"batch_label", b"labels" a list, b"data" a
(N, 3072) uint8 array of 1024 red, 1024 green, 1024 blue values, b"filenames"); the colour of each
class is distinct, so a net that reads the channels in the wrong order or mislabels cannot learn it.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, shipped_model_files
from layerkit.cli import main
from layerkit.modelfile import zoo

CIFAR_MODELS = [p.stem for p in shipped_model_files() if json.loads(p.read_text())["training"]["dataset"] == "cifar10"]


def write_cifar(directory: Path, per_batch: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    # class k: its own mean colour; pixels noisy around it
    colours = rng.integers(30, 226, size=(10, 3))
    folder = directory / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, size=per_batch)
        images = colours[labels][:, :, None] + rng.normal(0, 12, size=(per_batch, 3, 1024))
        data = np.clip(images, 0, 255).astype(np.uint8).reshape(per_batch, 3072)
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": data,
                 b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return directory


def test_the_zoo_has_the_cifar_nets():
    assert {"cifar10_cnn", "lab_cifar10_softmax", "lab_cifar10_mlp"} <= set(CIFAR_MODELS)


@pytest.mark.parametrize("name", ["lab_cifar10_softmax", "lab_cifar10_mlp"])
def test_cifar_lab_nets_learn_from_the_cifar_format(tmp_path, name, capsys):
    data = write_cifar(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["fit", name, "--data-dir", str(data), "--epochs", "5", "--quiet", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.9, metrics


def test_cifar10_cnn_trains_on_the_cifar_format(tmp_path, capsys):
    data = write_cifar(tmp_path / "data", per_batch=16)
    out = tmp_path / "run"
    # one step is enough to show the loader, shapes, standardization and augmentation fit the net
    assert main(["fit", "cifar10_cnn", "--data-dir", str(data), "--epochs", "1", "--train-limit", "32",
                 "--quiet", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 1


@pytest.mark.parametrize("name", [n for n in zoo.names() if n.startswith("lab_")])
def test_lab_nets_check_grads(name, capsys):
    assert main(["check-grads", name, "--samples", "3"]) == 0, capsys.readouterr().out


def test_kaggle_csv_tool_writes_the_competition_format(tmp_path, mnist_dir):
    out = tmp_path / "kaggle"
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_kaggle_csv.py"), str(out), "--source",
                    str(mnist_dir), "--train-rows", "300", "--test-rows", "200"], check=True, capture_output=True)
    train = (out / "train.csv").read_text().splitlines()
    test = (out / "test.csv").read_text().splitlines()
    assert train[0] == "label," + ",".join(f"pixel{i}" for i in range(784)) and len(train) == 301
    assert test[0] == ",".join(f"pixel{i}" for i in range(784)) and len(test) == 201
    assert (out / "test_labels.csv").read_text().splitlines()[:2][0] == "ImageId,Label"
    from layerkit.data.builtin import KaggleDigits

    raw = KaggleDigits().read(out / "train.csv")
    assert raw.x_train.shape == (270, 1, 28, 28) and raw.x_test.shape == (30, 1, 28, 28)
