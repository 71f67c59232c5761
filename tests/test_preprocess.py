"""Preprocessing: fitted on the training split, saved with the run, applied the same way to raw inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from layerkit.data import RawData, prepare
from layerkit.data.preprocess import FILE_NAME, Preprocessing, to_model_layout
from layerkit.errors import DataError

RNG = np.random.default_rng(7)


def raw(n=40, shape=(28, 28), dtype=np.uint8, k=10):
    x = RNG.integers(0, 256, (n, *shape)).astype(dtype)
    y = np.arange(n) % k
    return x, y


@pytest.mark.parametrize("normalize", ["unit", "standardize", "none"])
@pytest.mark.parametrize("input_shape", [(1, 28, 28), (784,)])
def test_saved_preprocessing_reproduces_the_test_split_bit_for_bit(normalize, input_shape, tmp_path):
    (xt, yt), (xs, ys) = raw(40), raw(12)
    data = prepare(RawData(xt, yt, xs, ys, source="mem"), {"normalize": normalize}, input_shape=input_shape,
                   num_outputs=10)
    path = data.preprocessing.save(tmp_path)
    assert path.name == FILE_NAME
    loaded = Preprocessing.load(tmp_path)
    assert loaded == data.preprocessing
    again = loaded.apply(xs)
    assert again.dtype == np.float32 and again.flags.c_contiguous
    assert again.tobytes() == data.x_test.tobytes()


def test_unit_scales_integers_only():
    pre = Preprocessing.fit(np.zeros((2, 1, 2, 2), np.uint8), "unit")
    assert pre.apply(np.full((1, 1, 2, 2), 255, np.uint8)).max() == 1.0
    # float data is taken as already scaled, as Nielsen's pickle and most float datasets are
    assert pre.apply(np.full((1, 1, 2, 2), 0.5, np.float64)).max() == np.float32(0.5)
    assert Preprocessing.fit(np.zeros((2, 4), np.uint8), "none").apply(np.full((1, 4), 255, np.uint8)).max() == 255


def test_standardize_uses_per_channel_training_statistics():
    x = np.stack([RNG.normal(10, 2, (500, 4, 4)), RNG.normal(-3, 0.5, (500, 4, 4))], axis=1).astype(np.float32)
    pre, out = Preprocessing.fit_transform(x, "standardize")
    assert pre.stat_shape == (2, 1, 1)
    np.testing.assert_allclose(pre.mean, [x[:, 0].mean(), x[:, 1].mean()], rtol=1e-5)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1, atol=1e-4)
    # a constant channel is left unscaled rather than divided by zero
    flat = Preprocessing.fit(np.ones((5, 3), np.float32), "standardize")
    assert flat.std == [1.0, 1.0, 1.0]


def test_json_round_trip_is_exact():
    pre = Preprocessing.fit(RNG.random((50, 3, 4, 4)).astype(np.float32), "standardize",
                            class_names=["a", "b"])
    text = json.dumps(pre.to_dict())
    assert Preprocessing.from_dict(json.loads(text)) == pre


@pytest.mark.parametrize("stored, model, expected", [
    ((5, 28, 28), (1, 28, 28), lambda x: x[:, None]),
    ((5, 32, 32, 3), (3, 32, 32), lambda x: x.transpose(0, 3, 1, 2)),
    ((5, 28, 28, 1), (1, 28, 28), lambda x: x.transpose(0, 3, 1, 2)),
    ((5, 3 * 32 * 32), (3, 32, 32), lambda x: x.reshape(5, 3, 32, 32)),
    ((5, 1, 28, 28), (784,), lambda x: x.reshape(5, 784)),
    ((5, 3, 32, 32), (3, 32, 32), lambda x: x),
])
def test_unambiguous_layouts_are_converted(stored, model, expected):
    x = np.arange(np.prod(stored)).reshape(stored)
    np.testing.assert_array_equal(to_model_layout(x, model, "f.npz"), expected(x))


@pytest.mark.parametrize("stored, model, words", [
    ((5, 28, 28), (1, 14, 56), ["(5, 28, 28)", "(N, 1, 14, 56)", "(N, 14, 56, 1) channels last"]),
    ((5, 32, 3, 32), (3, 32, 32), ["(5, 32, 3, 32)", "channels first", "channels last"]),
    ((5, 3, 3, 3), (3, 3, 3), ["channels first", "channels last", "training.data.layout"]),
    ((5, 10), (3, 32, 32), ["(5, 10)", "flat (N, 3072)"]),
])
def test_ambiguous_or_wrong_layouts_are_refused_naming_both(stored, model, words):
    with pytest.raises(DataError) as err:
        to_model_layout(np.zeros(stored), model, "f.npz")
    assert str(err.value).startswith("f.npz: ")
    for word in words:
        assert word in str(err.value)


def test_explicit_layout_settles_the_ambiguous_case():
    x = np.arange(5 * 27).reshape(5, 3, 3, 3)
    np.testing.assert_array_equal(to_model_layout(x, (3, 3, 3), "f", "channels_first"), x)
    np.testing.assert_array_equal(to_model_layout(x, (3, 3, 3), "f", "channels_last"), x.transpose(0, 3, 1, 2))
    with pytest.raises(DataError, match="channels_last"):
        to_model_layout(np.zeros((5, 3, 32, 32)), (3, 32, 32), "f", "channels_last")


@pytest.mark.parametrize("array, word", [
    (np.zeros((2, 1, 2, 2), np.complex64), "complex"),
    (np.array([[["a"]]] * 2), "<U1"),
    (np.array([[None]] * 2, dtype=object), "object"),
])
def test_non_real_inputs_are_refused(array, word):
    pre = Preprocessing.fit(np.zeros((2, 1, 2, 2), np.uint8))
    with pytest.raises(DataError, match=word):
        pre.apply(array, "x.npy")


def test_statistics_are_those_standardizing_applies():
    x = RNG.random((20, 2, 3, 3)).astype(np.float32)
    pre = Preprocessing.fit(x, "standardize")
    mean, inv = pre.statistics()
    assert mean.shape == inv.shape == (2, 1, 1) and mean.dtype == inv.dtype == np.float32
    np.testing.assert_array_equal(pre.transform(x), (x - mean) * inv)
    with pytest.raises(DataError, match="no statistics"):
        Preprocessing.fit(x, "unit").statistics()


def test_non_finite_inputs_are_refused():
    pre = Preprocessing.fit(np.zeros((2, 4), np.float32))
    with pytest.raises(DataError, match="NaN or infinite"):
        pre.apply(np.array([[0, np.nan, 0, 0]]))


GOOD = Preprocessing.fit(RNG.random((20, 2, 3, 3)).astype(np.float32), "standardize").to_dict()


@pytest.mark.parametrize("change, field", [
    (lambda d: d.update(extra=1), "extra"),
    (lambda d: d.pop("mean"), "mean"),
    (lambda d: d.update(mean=[0.0]), "mean"),
    (lambda d: d.update(std=[0.0, 1.0]), "std"),
    (lambda d: d.update(normalize="zscore"), "normalize"),
    (lambda d: d.update(input_shape=[2, -3, 3]), "input_shape"),
    (lambda d: d.update(class_names=[1, 2]), "class_names"),
    (lambda d: d.update(format=99), "format"),
    (lambda d: d.update(stat_shape=[5, 1, 1], mean=[0.0] * 5, std=[1.0] * 5), "stat_shape"),
    (lambda d: d.update(stat_shape=[2]), "stat_shape"),  # per channel, but would broadcast over the width
])
def test_tampered_records_are_refused_naming_file_and_field(change, field, tmp_path):
    data = json.loads(json.dumps(GOOD))
    change(data)
    (tmp_path / FILE_NAME).write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        Preprocessing.load(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / FILE_NAME}: {field}: ")
    assert Preprocessing.from_dict(GOOD) is not None


def test_unreadable_records_are_refused(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        Preprocessing.load(tmp_path)
    (tmp_path / FILE_NAME).write_bytes(b"\xff{")
    with pytest.raises(DataError, match="not UTF-8"):
        Preprocessing.load(tmp_path)
    (tmp_path / FILE_NAME).write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        Preprocessing.load(tmp_path)
