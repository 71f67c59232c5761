"""Every built-in loader on small files the test writes, and the restricted unpickler."""

from __future__ import annotations

import gzip
import pickle
import pickletools

import numpy as np
import pytest

from layerkit.data import load_data
from layerkit.data.builtin import IDX_FILES
from layerkit.data.formats import safe_unpickle
from layerkit.data.idx import write_idx
from layerkit.errors import DataError
from layerkit.plugins.manager import load_registry

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def hermetic(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LAYERKIT_DATA_DIR", raising=False)


@pytest.fixture(scope="module")
def registry():
    return load_registry(entry_points=False)


def images(n, shape=(28, 28)):
    return RNG.integers(0, 256, (n, *shape), dtype=np.uint8)


def labels(n, k=10):
    return (np.arange(n) % k).astype(np.uint8)


def write_idx_set(directory, n_train=30, n_test=10, gz=True):
    directory.mkdir(parents=True, exist_ok=True)
    arrays = (images(n_train), labels(n_train), images(n_test), labels(n_test))
    for stem, array in zip(IDX_FILES, arrays, strict=True):
        write_idx(directory / (stem + (".gz" if gz else "")), array)
    return arrays


def test_an_idx_file_gone_after_the_search_is_named(tmp_path):
    from layerkit.data.builtin import Mnist

    write_idx_set(tmp_path / "mnist")
    found = Mnist().find(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()  # removed between find() and read()
    with pytest.raises(DataError, match=r"mnist: no t10k-labels-idx1-ubyte file \(nor t10k-labels-idx1-ubyte.gz\)"):
        Mnist().read(found)


def test_builtin_datasets_are_registered(registry):
    assert {"mnist", "fashion_mnist", "mnist_npz", "mnist_pkl", "kaggle_digits", "cifar10", "npz"} \
        <= set(registry.names("dataset"))


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_directory(tmp_path, registry, gz, name):
    x_train, y_train, x_test, y_test = write_idx_set(tmp_path / "d", gz=gz)
    data = load_data(name, data_dir=tmp_path / "d", registry=registry)
    assert data.x_train.shape == (30, 1, 28, 28) and data.x_train.dtype == np.float32
    assert data.y_train.dtype == np.int64 and data.x_test.shape == (10, 1, 28, 28)
    np.testing.assert_allclose(data.x_train[:, 0], x_train / 255, rtol=1e-6)
    assert np.array_equal(data.y_test, y_test)
    assert data.notice is None


def test_env_dir_with_a_subfolder_per_dataset(tmp_path, registry, monkeypatch):
    write_idx_set(tmp_path / "root" / "fashion_mnist")
    monkeypatch.setenv("LAYERKIT_DATA_DIR", str(tmp_path / "root"))
    data = load_data("fashion_mnist", registry=registry)
    assert len(data.x_train) == 30 and data.class_names[0] == "T-shirt/top"


def test_cache_dir_is_searched(tmp_path, registry):
    write_idx_set(tmp_path / "cache" / "layerkit" / "mnist", n_train=12)
    assert len(load_data("mnist", registry=registry).x_train) == 12


def test_mnist_falls_back_to_the_embedded_sample(registry):
    data = load_data("mnist", registry=registry)
    assert data.x_train.shape == (5000, 1, 28, 28) and data.x_test.shape == (1000, 1, 28, 28)
    assert np.bincount(data.y_train).min() == 500
    assert "embedded" in data.notice and "--data-dir" in data.notice
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0


def test_explicit_dir_without_files_is_an_error_not_a_fallback(tmp_path, registry):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no mnist files here"):
        load_data("mnist", data_dir=tmp_path / "empty", registry=registry)


def test_fashion_without_files_says_how_to_get_them(registry):
    with pytest.raises(DataError, match="--data-dir"):
        load_data("fashion_mnist", registry=registry)


def test_keras_npz(tmp_path, registry):
    x, y = images(20), labels(20)
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=x[:5], y_test=y[:5])
    for where in (tmp_path, tmp_path / "mnist.npz"):
        data = load_data("mnist_npz", data_dir=where, registry=registry)
        assert data.x_train.shape == (20, 1, 28, 28) and len(data.y_test) == 5


def test_generic_npz_with_channels(tmp_path, registry):
    x = RNG.random((12, 3, 8, 8)).astype(np.float32)
    y = np.arange(12) % 4
    np.savez(tmp_path / "data.npz", x_train=x, y_train=y, x_test=x[:4], y_test=y[:4])
    data = load_data("npz", data_dir=tmp_path, input_shape=(3, 8, 8), num_outputs=4, registry=registry)
    assert data.x_train.shape == (12, 3, 8, 8)
    np.testing.assert_array_equal(data.x_train, x)  # float data is taken as already scaled


def test_npz_with_pickled_objects_is_refused(tmp_path, registry):
    np.savez(tmp_path / "data.npz", x_train=np.array([object()], dtype=object), y_train=np.zeros(1),
             x_test=np.zeros((1, 2)), y_test=np.zeros(1))
    with pytest.raises(DataError, match="data.npz"):
        load_data("npz", data_dir=tmp_path, registry=registry)


def nielsen_pickle(path, n=(20, 6, 8)):
    parts = tuple((RNG.random((k, 784)).astype(np.float32), (np.arange(k) % 10).astype(np.int64)) for k in n)
    with gzip.open(path, "wb") as f:
        pickle.dump(parts, f, protocol=2)
    return parts


def test_nielsen_pickle(tmp_path, registry):
    parts = nielsen_pickle(tmp_path / "mnist.pkl.gz")
    data = load_data("mnist_pkl", data_dir=tmp_path, registry=registry)
    assert data.x_train.shape == (26, 1, 28, 28)  # train and validation joined
    np.testing.assert_array_equal(data.x_test.reshape(8, 784), parts[2][0])


class Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickling_refuses_code(tmp_path, registry):
    with gzip.open(tmp_path / "mnist.pkl.gz", "wb") as f:
        pickle.dump(((Evil(), np.zeros(1)), (np.zeros((1, 784)), np.zeros(1)), (np.zeros((1, 784)), np.zeros(1))),
                    f, protocol=2)
    with pytest.raises(DataError, match=r"refusing to load (posix|os)\.system"):
        load_data("mnist_pkl", data_dir=tmp_path, registry=registry)


def test_restricted_unpickling_refuses_arbitrary_classes(tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({"a": pickletools.OpcodeInfo}, protocol=2))  # a class: a global
    with pytest.raises(DataError, match="refusing to load"):
        safe_unpickle(path)
    path.write_bytes(pickle.dumps({b"data": np.arange(3)}, protocol=4))
    assert np.array_equal(safe_unpickle(path, encoding="bytes")[b"data"], np.arange(3))


def test_kaggle_csv_holds_out_a_test_split(tmp_path, registry):
    x, y = images(40).reshape(40, 784), labels(40)
    rows = ["label," + ",".join(f"pixel{i}" for i in range(784))]
    rows += [",".join(map(str, [int(lab), *px])) for lab, px in zip(y, x, strict=True)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    data = load_data("kaggle_digits", data_dir=tmp_path, registry=registry)
    assert len(data.x_train) == 36 and len(data.x_test) == 4
    np.testing.assert_allclose(data.x_test.reshape(4, 784), x[-4:] / 255, rtol=1e-6)


def test_kaggle_csv_with_a_bad_header(tmp_path, registry):
    (tmp_path / "train.csv").write_text("id,a,b\n1,2,3\n")
    with pytest.raises(DataError, match="train.csv.*header"):
        load_data("kaggle_digits", data_dir=tmp_path, registry=registry)


def cifar_batch(path, n):
    data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"x", b"data": data, b"labels": [i % 10 for i in range(n)]}, f, protocol=2)
    return data


def test_cifar10_batches(tmp_path, registry):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    first = cifar_batch(folder / "data_batch_1", 4)
    for i in range(2, 6):
        cifar_batch(folder / f"data_batch_{i}", 4)
    cifar_batch(folder / "test_batch", 3)
    data = load_data("cifar10", data_dir=tmp_path, input_shape=(3, 32, 32), num_outputs=10, registry=registry)
    assert data.x_train.shape == (20, 3, 32, 32) and data.x_test.shape == (3, 3, 32, 32)
    # rows are R, G, B planes of 1024 values: channel 1 of sample 0 is bytes 1024..2047
    np.testing.assert_allclose(data.x_train[0, 1].ravel(), first[0, 1024:2048] / 255, rtol=1e-6)
    assert data.class_names[0] == "airplane"


def test_fashion_mnist_package(registry):
    from pathlib import Path
    folder = Path("/usr/share/datasets/fashion-mnist")
    if not (folder / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("dataset-fashion-mnist is not installed")
    data = load_data("fashion_mnist", {"train_limit": 100}, data_dir=folder, registry=registry)
    assert data.x_train.shape == (100, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)


def test_real_mnist(mnist_dir, registry):
    data = load_data("mnist", {"test_limit": 100}, data_dir=mnist_dir, input_shape=(1, 28, 28),
                     num_outputs=10, registry=registry)
    assert data.x_train.shape == (60000, 1, 28, 28) and len(data.y_test) == 100
    assert np.bincount(data.y_train).tolist()[:3] == [5923, 6742, 5958]
