"""Shared helpers for the trainer, resume, data and CLI tests."""

from __future__ import annotations

import pytest

from layerkit.plugins.manager import load_registry, reset_registry
from layerkit.training.trainer import Callback


def builtin_registry():
    """The built-in plugins only: installed third-party plugins must not change these tests."""
    return load_registry(entry_points=False)


@pytest.fixture
def hermetic(monkeypatch, tmp_path):
    """No data cache or LAYERKIT_DATA_DIR from the machine, and the built-in registry."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LAYERKIT_DATA_DIR", raising=False)
    reset_registry(builtin_registry())
    yield
    reset_registry(None)


def mlp_model(hidden=32, dropout=0.2, classes=10, **training) -> dict:
    """flatten -> dense -> relu -> dropout -> dense: small, and exercises the dropout generator."""
    train = {"dataset": "mnist", "epochs": 2, "batch_size": 50, "seed": 3,
             "optimizer": {"type": "adam", "lr": 0.003}, "data": {"train_limit": 1000, "test_limit": 300}}
    train.update(training)
    return {"format": 1, "name": "mlp_small", "input": {"shape": [1, 28, 28]},
            "layers": [{"type": "flatten"}, {"name": "fc1", "type": "dense", "units": hidden, "init": "he_normal"},
                       {"type": "relu"}, {"type": "dropout", "rate": dropout},
                       {"name": "logits", "type": "dense", "units": classes}],
            "loss": {"type": "softmax_cross_entropy"}, "training": train}


class InterruptAt(Callback):
    """Raise KeyboardInterrupt after batch ``step`` of epoch ``epoch`` (0-based), like Ctrl-C."""

    def __init__(self, epoch, step):
        self.at = (epoch, step)

    def on_batch_end(self, epoch, step, loss, accuracy, samples):
        if (epoch, step) == self.at:
            raise KeyboardInterrupt
