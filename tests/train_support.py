"""Shared helpers for the trainer, resume, data and CLI tests.

Until ``layerkit.losses`` lands, ``registry_with_loss`` adds a minimal softmax
cross-entropy under the same name; once the real one is registered it is used.
"""

from __future__ import annotations

import sys
import types

import numpy as np

from layerkit import hookimpl
from layerkit.plugins import load_registry


class StandInSoftmaxCE:
    type = "softmax_cross_entropy"
    description = "test stand-in"
    params_schema = {"type": "object", "properties": {}, "additionalProperties": False}

    def __init__(self, **config):
        pass

    def forward(self, output, target):
        shifted = output - output.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        n = len(target)
        return float(-logp[np.arange(n), target].mean()), (logp, target)

    def backward(self, cache):
        logp, target = cache
        d = np.exp(logp)
        d[np.arange(len(target)), target] -= 1
        return d / len(target)

    def predict(self, output):
        return output.argmax(axis=1)


def registry_with_loss():
    registry = load_registry(entry_points=False)
    if "softmax_cross_entropy" not in registry.entries["loss"]:
        plugin = types.ModuleType("layerkit_test_standin_loss")

        @hookimpl
        def layerkit_register_losses(register):
            register(StandInSoftmaxCE)

        plugin.layerkit_register_losses = layerkit_register_losses
        registry = load_registry([plugin], entry_points=False)
    return registry


def has_layers(*types_: str) -> bool:
    registry = load_registry(entry_points=False)
    return all(t in registry.entries["layer"] for t in types_)


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


def dense_model(units=(16,), classes=10, shape=(1, 28, 28), **training) -> dict:
    """A model of dense layers only (the only layer guaranteed to exist): a linear
    classifier per stage, with a flat input so no flatten layer is needed."""
    size = int(np.prod(shape))
    layers = [{"name": f"fc{i}", "type": "dense", "units": u, "init": "he_normal"} for i, u in enumerate(units)]
    layers.append({"name": "logits", "type": "dense", "units": classes})
    train = {"dataset": "mnist", "epochs": 1, "batch_size": 32, "seed": 0,
             "optimizer": {"type": "sgd", "lr": 0.1}}
    train.update(training)
    return {"format": 1, "name": "densenet", "input": {"shape": [size]}, "layers": layers,
            "loss": {"type": "softmax_cross_entropy"}, "training": train}
