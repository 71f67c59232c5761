"""The built-in dataset loaders, registered through the plugin hook."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from layerkit import hookimpl
from layerkit.errors import DataError
from layerkit.data import Dataset, RawData
from layerkit.data.formats import (csv_has_labels, read_cifar_batch, read_label_csv, read_nielsen_pickle,
                                   read_npz_splits)
from layerkit.data.record import file_fingerprint
from layerkit.data.idx import read_idx

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
EMBEDDED_MNIST = "embedded/mnist_sample.npz"


def idx_path(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _file_in(location: Path, names: tuple[str, ...]) -> Path | None:
    """``location`` itself when it is a file, else the first of ``names`` inside it."""
    if location.is_file():
        return location
    for name in names:
        if (location / name).is_file():
            return location / name
    return None


class IdxDataset(Dataset):
    """The four IDX files of MNIST-format datasets, each gzipped or not."""

    files = tuple(f"{stem}[.gz]" for stem in IDX_FILES)
    image_shape = (1, 28, 28)

    def find(self, location: Path) -> Path | None:
        if location.is_dir() and all(idx_path(location, stem) for stem in IDX_FILES):
            return location
        return None

    def read(self, found: Path) -> RawData:
        paths = []
        for stem in IDX_FILES:  # find() saw all four; one may have gone since
            path = idx_path(found, stem)
            if path is None:
                raise DataError(f"{found}: no {stem} file (nor {stem}.gz)")
            paths.append(path)
        x_train, y_train = read_idx(paths[0], 3), read_idx(paths[1], 1)
        x_test, y_test = read_idx(paths[2], 3), read_idx(paths[3], 1)
        for images, labels, ip, lp in ((x_train, y_train, paths[0], paths[1]), (x_test, y_test, paths[2], paths[3])):
            if len(images) != len(labels):
                raise DataError(f"{ip}: {len(images)} images but {lp.name} has {len(labels)} labels")
        return RawData(x_train, y_train, x_test, y_test, source=str(found), files=[str(p) for p in paths])


class Mnist(IdxDataset):
    """MNIST digits from the four IDX files, or the embedded sample when none are found."""

    name = "mnist"
    background = "dark"
    description = ("MNIST handwritten digits (60,000 + 10,000 28x28 images) from the four IDX files; "
                   "without them, an embedded 5,000 + 1,000 image sample.")

    def fallback(self) -> RawData | None:
        path = resources.files("layerkit.data").joinpath(EMBEDDED_MNIST)
        with resources.as_file(path) as real:
            x_train, y_train, x_test, y_test = read_npz_splits(real)
            digest = [file_fingerprint(real, name=EMBEDDED_MNIST)]
        notice = (f"using the embedded MNIST sample ({len(x_train):,} training / {len(x_test):,} test images); "
                  f"for full MNIST pass --data-dir DIR with the four IDX files "
                  f"or run 'layerkit data download mnist'")
        return RawData(x_train, y_train, x_test, y_test, source="embedded MNIST sample", notice=notice,
                       fingerprint=digest)


class FashionMnist(IdxDataset):
    """Fashion-MNIST: MNIST's IDX layout with clothing images and named classes."""

    name = "fashion_mnist"
    background = "dark"
    description = "Fashion-MNIST (Zalando): 28x28 grayscale clothing images, 10 classes, MNIST's IDX layout."
    class_names = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class MnistNpz(Dataset):
    """MNIST from Keras's ``mnist.npz``."""

    name = "mnist_npz"
    background = "dark"
    description = "MNIST as Keras ships it: mnist.npz with x_train, y_train, x_test, y_test (uint8 N x 28 x 28)."
    files = ("mnist.npz",)
    image_shape = (1, 28, 28)

    def find(self, location: Path) -> Path | None:
        return _file_in(location, self.files)

    def read(self, found: Path) -> RawData:
        x_train, y_train, x_test, y_test = read_npz_splits(found)
        return RawData(x_train, y_train, x_test, y_test, source=str(found))


class MnistPickle(Dataset):
    """MNIST from the pickle of Nielsen's book (``mnist.pkl.gz``); read without running code."""

    name = "mnist_pkl"
    background = "dark"
    description = ("MNIST as in Nielsen's book: mnist.pkl.gz, (train, validation, test) tuples of "
                   "(N x 784 float, labels); train and validation are joined.")
    files = ("mnist.pkl.gz",)
    image_shape = (1, 28, 28)

    def find(self, location: Path) -> Path | None:
        return _file_in(location, ("mnist.pkl.gz", "mnist.pkl"))

    def read(self, found: Path) -> RawData:
        x_train, y_train, x_test, y_test = read_nielsen_pickle(found)
        for x, what in ((x_train, "training"), (x_test, "test")):
            if x.ndim != 2 or x.shape[1] != 784:
                raise DataError(f"{found}: {what} images have shape {x.shape}, expected (N, 784)")
        return RawData(x_train.reshape(-1, 1, 28, 28), y_train, x_test.reshape(-1, 1, 28, 28), y_test,
                       source=str(found))


class KaggleDigits(Dataset):
    """Kaggle's digit-recognizer CSV files; the test split comes from a labelled test.csv or train.csv's tail."""

    name = "kaggle_digits"
    background = "dark"
    description = ("Kaggle digit-recognizer CSV: train.csv (label,pixel0..pixel783). The last 10% of "
                   "train.csv is the test split unless a labelled test.csv is beside it.")
    files = ("train.csv",)
    image_shape = (1, 28, 28)
    test_fraction = 0.1

    def find(self, location: Path) -> Path | None:
        return _file_in(location, self.files)

    def read(self, found: Path) -> RawData:
        x, y = read_label_csv(found)
        test_csv = found.with_name("test.csv")
        files = [str(found)]
        if test_csv.is_file() and test_csv != found and csv_has_labels(test_csv):
            x_test, y_test = read_label_csv(test_csv)
            x_train, y_train = x, y
            files.append(str(test_csv))
        else:
            # Kaggle's own test.csv has no labels, so a test split has to come from train.csv
            n_test = max(1, int(round(len(x) * self.test_fraction)))
            if n_test >= len(x):
                raise DataError(f"{found}: {len(x)} rows are too few to hold out a test split")
            x_train, y_train, x_test, y_test = x[:-n_test], y[:-n_test], x[-n_test:], y[-n_test:]
        return RawData(x_train.reshape(-1, 1, 28, 28), y_train, x_test.reshape(-1, 1, 28, 28), y_test,
                       source=str(found), files=files)


class Cifar10(Dataset):
    """CIFAR-10 from its python batches (read without running code)."""

    name = "cifar10"
    description = "CIFAR-10 python batches (data_batch_1..5, test_batch): 32x32 colour images, 10 classes."
    files = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
    image_shape = (3, 32, 32)
    class_names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

    def find(self, location: Path) -> Path | None:
        for directory in (location, location / "cifar-10-batches-py"):
            if directory.is_dir() and all((directory / f).is_file() for f in self.files):
                return directory
        return None

    def read(self, found: Path) -> RawData:
        batches = [read_cifar_batch(found / f) for f in self.files[:-1]]
        x_test, y_test = read_cifar_batch(found / "test_batch")
        return RawData(np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]),
                       x_test, y_test, source=str(found), files=[str(found / f) for f in self.files])


class NpzDataset(Dataset):
    """Any four arrays in one ``.npz`` (no pickles), images in any accepted layout."""

    name = "npz"
    description = ("Any data in one .npz (no pickles): x_train, y_train, x_test, y_test; images "
                   "(N, H, W), (N, C, H, W) or flat (N, D). --data-dir names the file or a folder with data.npz.")
    files = ("data.npz",)

    def find(self, location: Path) -> Path | None:
        return _file_in(location, self.files)

    def read(self, found: Path) -> RawData:
        x_train, y_train, x_test, y_test = read_npz_splits(found)
        return RawData(x_train, y_train, x_test, y_test, source=str(found))


BUILTIN_DATASETS = (Mnist, FashionMnist, MnistNpz, MnistPickle, KaggleDigits, Cifar10, NpzDataset)


@hookimpl
def layerkit_register_datasets(register: Callable[[type[Dataset]], None]) -> None:
    """The built-in dataset loaders."""
    for cls in BUILTIN_DATASETS:
        register(cls)
