"""The training loop: learning, determinism, dtypes, early stopping, NaN stops, no plugin calls."""

from __future__ import annotations

import numpy as np
import pytest

import layerkit.plugins.manager
from layerkit.modelfile.build import build_model
from layerkit.data import load_data
from layerkit.errors import LayerkitError, TrainingError
from layerkit.nn.network import load_npz
from layerkit.plugins.manager import reset_registry
from layerkit.training.runs import CHECKPOINT, num_outputs, train
from layerkit.modelfile.spec import spec_from_dict
from layerkit.training.trainer import Callback, Trainer, build_loss

from train_support import builtin_registry, mlp_model


@pytest.fixture(autouse=True)
def registry(monkeypatch, tmp_path):
    # hermetic data lookup: no real cache or env dir may change which data a test sees
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LAYERKIT_DATA_DIR", raising=False)
    reg = builtin_registry()
    reset_registry(reg)
    yield reg
    reset_registry(None)


def make_trainer(model_dict, callbacks=(), save=None):
    spec = spec_from_dict(model_dict)
    model = build_model(spec)
    data = load_data(spec.training["dataset"], spec.training.get("data"), seed=spec.training["seed"],
                     input_shape=spec.input_shape, num_outputs=num_outputs(model))
    return Trainer(model, build_loss(spec), data, spec.training, callbacks=callbacks, save_checkpoint=save)


def test_learns_on_the_embedded_sample():
    trainer = make_trainer(mlp_model(epochs=3, data={"train_limit": 2000, "test_limit": 500}))
    result = trainer.fit()
    losses = [r["train_loss"] for r in result.history]
    assert losses[0] > losses[-1]
    assert result.history[-1]["test_loss"] < result.history[0]["test_loss"] * 1.05
    assert result.test_accuracy > 0.75  # chance is 0.10


def test_same_file_and_seed_give_identical_weights_and_history():
    runs = []
    for _ in range(2):
        trainer = make_trainer(mlp_model(epochs=2))
        result = trainer.fit()
        runs.append((trainer.model.weights_dict(), result.history))
    (w1, h1), (w2, h2) = runs
    assert h1 == h2
    assert all(np.array_equal(w1[k], w2[k]) for k in w1)
    other = make_trainer(mlp_model(epochs=2, seed=4))
    other.fit()
    assert not np.array_equal(other.model.params["fc1"]["W"], w1["params/fc1/W"])


def test_float32_through_a_training_step():
    seen = {}

    class Spy(Callback):
        def on_batch_end(self, epoch, step, loss, accuracy, samples):
            seen["called"] = True
            raise StopIteration

    trainer = make_trainer(mlp_model(epochs=1))
    assert trainer.data.x_train.dtype == np.float32 and trainer.data.y_train.dtype == np.int64
    x = trainer.data.x_train[:8]
    out, caches = trainer.model.forward(x, training=True, rng=np.random.default_rng(0))
    assert out.dtype == np.float32
    _, lcache = trainer.loss.forward(out, trainer.data.y_train[:8])
    dout = trainer.loss.backward(lcache)
    assert dout.dtype == np.float32
    grads = trainer.model.backward(caches, dout)
    assert all(g.dtype == np.float32 for tensors in grads.values() for g in tensors.values())
    trainer.callbacks = [Spy()]
    with pytest.raises(StopIteration):
        trainer.fit()  # exactly one optimizer step
    assert seen["called"]
    assert all(v.dtype == np.float32 for _, _, v in trainer.model.parameters())
    assert all(b.dtype == np.float32 for bufs in trainer.optimizer.state.values() for b in bufs)


@pytest.fixture
def plugins_forbidden(monkeypatch):
    """Every way into the plugin machinery raises: every registry lookup (patched on the class,
    so no module's own reference escapes) and every function that finds or loads a registry,
    under whatever name each layerkit module imported it."""
    import sys

    from layerkit.plugins.registry import Registry

    def forbidden(*args, **kwargs):
        raise AssertionError("the plugin machinery was used during training")

    def install():
        for method in ("get", "layer", "entry", "names"):
            monkeypatch.setattr(Registry, method, forbidden)
        for name, module in list(sys.modules.items()):
            if name.startswith("layerkit"):
                for attr in ("get_registry", "load_registry", "registry_or_global"):
                    if callable(vars(module).get(attr)):  # its own names, not the deprecated aliases
                        monkeypatch.setattr(module, attr, forbidden)
    return install


def test_no_plugin_calls_while_training(plugins_forbidden):
    trainer = make_trainer(mlp_model(epochs=1))
    plugins_forbidden()
    trainer.fit()


def test_plugin_calls_while_training_would_be_caught(plugins_forbidden):
    # the check above can fail: a training loop that looks a layer up per batch trips it
    class LooksUp(Callback):
        def on_batch_end(self, *args, **kwargs):
            layerkit.plugins.manager.get_registry().layer("dense")

    trainer = make_trainer(mlp_model(epochs=1))
    trainer.callbacks = [LooksUp()]
    plugins_forbidden()
    with pytest.raises(AssertionError, match="plugin machinery"):
        trainer.fit()


def test_early_stopping_keeps_the_best_epoch():
    # an impossible min_delta: epoch 1 is best, epoch 2 does not improve, patience 1 stops there
    stopping = {"monitor": "val_accuracy", "patience": 1, "min_delta": 1.0}
    data = {"train_limit": 1000, "test_limit": 300, "validation_split": 0.2}
    trainer = make_trainer(mlp_model(epochs=5, early_stopping=stopping, data=data))
    result = trainer.fit()
    assert result.stopped_early and result.epochs_run == 2 and result.best_epoch == 1
    one = make_trainer(mlp_model(epochs=1, data=data))
    one.fit()
    assert np.array_equal(trainer.model.params["fc1"]["W"], one.model.params["fc1"]["W"])
    assert "val_loss" in result.history[0]


def test_monitoring_validation_without_a_split_is_an_error():
    with pytest.raises(LayerkitError, match="no validation split"):
        make_trainer(mlp_model(early_stopping={"monitor": "val_loss"}))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    class Poison(Callback):
        def on_epoch_end(self, epoch, record, seconds):
            self.trainer.model.params["fc1"]["W"][0, 0] = np.nan  # after the epoch's checkpoint

        def on_train_begin(self, trainer):
            self.trainer = trainer

    out = tmp_path / "run"
    with pytest.raises(TrainingError) as info:
        train(mlp_model(epochs=3, data={"train_limit": 2000, "test_limit": 300}), out=out, callbacks=[Poison()])
    message = str(info.value)
    assert "nan" in message and "epoch 2" in message and str(out / CHECKPOINT) in message
    assert info.value.exit_code == 1
    saved = load_npz(out / CHECKPOINT)
    assert np.isfinite(saved["model/params/fc1/W"]).all()


def test_huge_learning_rate_reports_a_clear_error(tmp_path):
    model = mlp_model(epochs=1, optimizer={"type": "sgd", "lr": 1e30}, data={"train_limit": 500})
    with pytest.raises(TrainingError, match="the loss became (nan|inf).*no epoch finished"):
        train(model, out=tmp_path / "run")


def test_real_mnist_smoke(mnist_dir, tmp_path):
    model = mlp_model(epochs=1, data={"train_limit": 3000, "test_limit": 1000, "data_dir": str(mnist_dir)})
    run, result = train(model, out=tmp_path / "run")
    assert result.test_accuracy > 0.8
    import json
    assert json.loads((run / "metrics.json").read_text())["data_source"] == str(mnist_dir)
