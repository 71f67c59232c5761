"""Data options (class subsets, limits, validation split, normalisation) and data/model mismatches."""

from __future__ import annotations

import numpy as np
import pytest

from layerkit.data import RawData, prepare
from layerkit.data.idx import parse_idx, read_idx, write_idx
from layerkit.errors import DataError


def raw(n=60, k=10, shape=(28, 28)):
    rng = np.random.default_rng(1)
    y = np.arange(n) % k
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    return RawData(x, y, x[: n // 2], y[: n // 2], source="fake.npz")


def test_class_subset_is_relabelled_in_the_given_order():
    data = prepare(raw(), {"classes": [7, 2, 5]})
    assert set(np.unique(data.y_train)) == {0, 1, 2}
    source = raw()
    picked = source.y_train[np.isin(source.y_train, [7, 2, 5])]
    assert np.array_equal(data.y_train, np.array([{7: 0, 2: 1, 5: 2}[v] for v in picked]))
    assert data.class_names == ["7", "2", "5"]


def test_class_that_is_absent_is_an_error():
    with pytest.raises(DataError, match=r"asks for \[12\]"):
        prepare(raw(), {"classes": [1, 12]})


def test_limits_and_validation_split_are_deterministic():
    a = prepare(raw(), {"train_limit": 40, "test_limit": 7, "validation_split": 0.25}, seed=5)
    b = prepare(raw(), {"train_limit": 40, "test_limit": 7, "validation_split": 0.25}, seed=5)
    assert len(a.x_train) == 30 and len(a.x_val) == 10 and len(a.x_test) == 7
    assert np.array_equal(a.x_val, b.x_val) and np.array_equal(a.y_train, b.y_train)
    c = prepare(raw(), {"train_limit": 40, "validation_split": 0.25}, seed=6)
    assert not np.array_equal(a.y_val, c.y_val)


def test_normalisations():
    unit = prepare(raw(), {"normalize": "unit"})
    assert unit.x_train.dtype == np.float32 and unit.x_train.max() <= 1.0
    std = prepare(raw(), {"normalize": "standardize"})
    assert abs(float(std.x_train.mean())) < 1e-4 and abs(float(std.x_train.std()) - 1) < 1e-3
    none = prepare(raw(), {"normalize": "none"})
    assert none.x_train.max() > 1.0 and none.x_train.dtype == np.float32


def test_image_shape_must_fit_the_model():
    with pytest.raises(DataError,
                       match=r"fake.npz: training images are \(60, 28, 28\).*model's input \(N, 3, 32, 32\)"):
        prepare(raw(), input_shape=(3, 32, 32))
    flat = prepare(raw(), input_shape=(784,))  # same size: reshaped for a flat input
    assert flat.x_train.shape == (60, 784)


def test_labels_must_fit_the_output_units():
    with pytest.raises(DataError, match="labels go up to 9 but the model has 3 output units"):
        prepare(raw(), num_outputs=3)
    assert prepare(raw(), {"classes": [0, 1, 2]}, num_outputs=3).num_classes == 3


def test_mismatched_label_count():
    bad = raw()
    bad.y_train = bad.y_train[:-1]
    with pytest.raises(DataError, match="60 training images but 59 labels"):
        prepare(bad)


def test_idx_round_trip_and_corruption(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    assert np.array_equal(read_idx(tmp_path / "a.gz", 3), array)
    with pytest.raises(DataError, match=r"a.gz: bad magic number 0x00000803, expected 0x00000801"):
        read_idx(tmp_path / "a.gz", 1)
    (tmp_path / "junk").write_bytes(b"\x12\x34\x56\x78" + bytes(20))
    with pytest.raises(DataError, match="junk: bad magic number 0x12345678"):
        read_idx(tmp_path / "junk")
    payload = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + (4).to_bytes(4, "big")
    with pytest.raises(DataError, match=r"x: truncated: the header promises \(2, 3, 4\)"):
        parse_idx(payload + bytes(10), "x", 3)
    (tmp_path / "t.gz").write_bytes((tmp_path / "a.gz").read_bytes()[:-12])
    with pytest.raises(DataError, match="t.gz: corrupt or truncated gzip"):
        read_idx(tmp_path / "t.gz")
