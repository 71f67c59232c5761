"""Random numbers per sample (layerkit.nn.samplerandom): the generator against its published
answers, each row drawn from its sample's own stream, and what layers with and without
``sample_rng`` receive."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from layerkit import hookimpl
from layerkit.modelfile.build import build_model
from layerkit.modelfile.spec import spec_from_dict
from layerkit.nn.layer import Coupling, Example, Layer
from layerkit.nn.samplerandom import SampleRandom, epoch_key, splitmix64
from layerkit.parallel.processes import set_processes
from layerkit.plugins.manager import load_registry
from layerkit.training.trainer import Trainer, build_loss

from test_sample_parallel import convnet


def test_splitmix64_matches_its_reference_outputs():
    # the published first outputs of SplitMix64 seeded 1234567 (splitmix64.c; Rosetta Code lists them too)
    assert splitmix64(np.uint64(1234567), 5).tolist() == [
        6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431, 16408922859458223821]
    assert splitmix64(np.array([0, 1234567], np.uint64), 1)[:, 0].tolist() == [0xE220A8397B1DCDAF,
                                                                                6457827717110365317]


@pytest.mark.parametrize("draw", [
    lambda r, n: r.random((n, 3, 5)),
    lambda r, n: r.random((n, 7), dtype=np.float32),
    lambda r, n: r.integers(0, 5, size=(n, 2)),
    lambda r, n: r.normal(0.0, 2.0, size=(n, 4)),
    lambda r, n: r.uniform(-1, 1, (n, 1, 1)),
], ids=["random", "random32", "integers", "normal", "uniform"])
def test_each_row_is_drawn_from_its_own_sample(draw):
    samples = np.array([12, 3, 40_000_000_000, 7, 5])  # beyond 32 bits too
    whole = draw(SampleRandom(99, samples), len(samples))
    # any subset, in any order, held by any process: the same rows
    for part in ([3], [0, 4], [4, 2, 1]):
        np.testing.assert_array_equal(draw(SampleRandom(99, samples[part]), len(part)), whole[part])
    assert not np.array_equal(draw(SampleRandom(98, samples), len(samples)), whole)  # another key, other numbers


def test_draws_are_uniform_and_independent_per_call_and_stream():
    r = SampleRandom(epoch_key(0, 0), np.arange(2000))
    u = r.random((2000, 50), dtype=np.float32)
    assert u.dtype == np.float32 and 0.0 <= u.min() and u.max() < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.std()) - (1 / 12) ** 0.5) < 0.01
    assert not np.array_equal(r.random((2000, 50), dtype=np.float32), u)  # the second draw of a forward
    first = SampleRandom(epoch_key(0, 0), np.arange(2000))
    assert not np.array_equal(first.child("layer/a").random((2000, 50)), first.child("layer/b").random((2000, 50)))
    assert epoch_key(0, 0) != epoch_key(0, 1) and epoch_key(0, 0) < 2 ** 63
    k = SampleRandom(1, np.arange(2000)).integers(0, 5, size=(2000, 10))
    assert set(np.unique(k)) == {0, 1, 2, 3, 4}


def test_a_draw_not_led_by_the_batch_is_refused():
    r = SampleRandom(1, np.arange(4))
    with pytest.raises(ValueError, match=r"batch first \(4, \.\.\.\), got \(3,\)"):
        r.random((3,))
    with pytest.raises(ValueError, match="batch first"):
        r.random()


class LegacyNoise(Layer):
    """Written for 0.2: draws from rng as a numpy Generator, no sample_rng."""

    type = "legacy_noise"
    description = "x plus uniform noise"
    examples = (Example({}, (4,)),)
    uses_rng = True
    sample_coupling = Coupling.NONE
    seen: list = []

    def forward(self, params, x, training=False, rng=None, state=None):
        LegacyNoise.seen.append(rng)
        return (x + rng.uniform(0, 1e-3, x.shape).astype(x.dtype) if training else x), None

    def backward(self, params, cache, dy):
        return dy, {}


class Plugin:
    @hookimpl
    def layerkit_register_layers(self, register):
        register(LegacyNoise)


def noisy_model(legacy: bool):
    spec = convnet(epochs=1)
    spec["layers"][-1:-1] = [{"type": "legacy_noise"} if legacy else {"type": "dropout", "rate": 0.5}]
    registry = load_registry([Plugin()])
    return spec, build_model(spec_from_dict(spec, registry=registry), registry=registry)


def test_layers_without_sample_rng_get_a_generator_and_the_split_is_warned_about(monkeypatch):
    spec, model = noisy_model(legacy=True)
    legacy = np.random.default_rng(3)
    LegacyNoise.seen.clear()
    model.forward(np.zeros((2, 1, 28, 28), np.float32), True, SampleRandom(5, [0, 1], legacy))
    assert LegacyNoise.seen == [legacy]  # their rng argument keeps working, as in 0.1 and 0.2

    data = type("Data", (), {"x_train": np.zeros((64, 1, 28, 28), np.float32), "y_train": np.zeros(64, int),
                             "x_val": None, "y_val": None})()
    loss = build_loss(spec_from_dict(convnet()))
    monkeypatch.setenv("LAYERKIT_SAMPLE_PARALLEL", "1")
    try:
        set_processes(2)
        with pytest.warns(UserWarning, match="legacy_noise.* draw their random numbers per share.*sample_rng"):
            Trainer(model, loss, data, spec["training"])
        # dropout draws per sample: nothing to warn about
        dropout_spec, dropout = noisy_model(legacy=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert Trainer(dropout, loss, data, dropout_spec["training"]).shares == 2
    finally:
        set_processes(None)
