"""Random-shift augmentation: each image is a translated copy of itself, drawn from the trainer's
generator (so runs stay reproducible and resumable), and the model file validates it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from layerkit.data.augment import augmenter, random_shift
from layerkit.errors import LayerkitError
from layerkit.nn.network import load_npz
from layerkit.training.runs import WEIGHTS, train
from layerkit.modelfile.spec import spec_from_dict

from train_support import hermetic  # noqa: F401 (a fixture)


def shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Reference: move a (C, H, W) image by (dy, dx) pixels, zero fill, with plain slicing."""
    out = np.zeros_like(image)
    h, w = image.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def test_every_image_is_a_shift_of_itself_within_the_limit():
    rng = np.random.default_rng(0)
    x = rng.random((40, 2, 7, 9)).astype(np.float32) + 0.5  # no zeros: every shift is distinguishable
    y = random_shift(x, 2, np.random.default_rng(1))
    assert y.shape == x.shape and y.dtype == np.float32
    seen = set()
    for image, out in zip(x, y, strict=True):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if np.array_equal(out, shifted(image, dy, dx))]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 10  # offsets really vary per image
    np.testing.assert_array_equal(y, random_shift(x, 2, np.random.default_rng(1)))


def test_no_shift_is_no_copy():
    x = np.ones((3, 1, 4, 4), np.float32)
    assert random_shift(x, 0, np.random.default_rng(0)) is x
    assert augmenter(None) is None and augmenter({"shift": 0}) is None


def model(shift, **training) -> dict:
    train_cfg = {"dataset": "mnist", "epochs": 2, "batch_size": 32, "seed": 1,
                 "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9},
                 "data": {"train_limit": 320, "test_limit": 200, "augment": {"shift": shift}}}
    train_cfg.update(training)
    return {"format": 1, "name": "aug", "input": {"shape": [1, 28, 28]},
            "layers": [{"type": "conv2d", "filters": 4, "kernel_size": 3}, {"type": "relu"},
                       {"type": "max_pool2d", "pool_size": 2}, {"type": "flatten"},
                       {"name": "logits", "type": "dense", "units": 10}],
            "loss": {"type": "softmax_cross_entropy"}, "training": train_cfg}


@pytest.mark.usefixtures("hermetic")
@pytest.mark.parametrize("split", ["0", "1"], ids=["one-process", "sample-parallel"])
def test_training_with_shifts_learns_and_repeats_itself(tmp_path, monkeypatch, split):
    from layerkit.parallel import threads as parallel

    monkeypatch.setenv("LAYERKIT_SAMPLE_PARALLEL", split)
    parallel.set_num_threads(2)
    try:
        results = [train(model(2), out=tmp_path / name) for name in ("a", "b")]
        train(model(0), out=tmp_path / "plain")
    finally:
        parallel.set_num_threads(None)
    assert results[0][1].test_accuracy > 0.5  # chance is 0.1
    wa, wb, wp = (load_npz(tmp_path / name / WEIGHTS) for name in ("a", "b", "plain"))
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert not all(np.array_equal(wa[k], wp[k]) for k in wa)  # the shifts did change the training


@pytest.mark.parametrize("shift, message", [
    (-1, "training.data.augment.shift: -1 is less than the minimum of 0"),
    (9, "training.data.augment.shift: 9 is greater than the maximum of 8"),
])
def test_bad_shift_is_a_model_file_error(shift, message):
    with pytest.raises(LayerkitError) as info:
        spec_from_dict(json.loads(json.dumps(model(shift))), source="aug.json")
    assert message in str(info.value)
