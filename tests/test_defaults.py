"""Defaults are written once, in the schema, and filled at every depth."""

from __future__ import annotations

import numpy as np

from layerkit.data import DataSplits
from layerkit.modelfile.build import build_model
from layerkit.modelfile.schema import TRAINING_SCHEMA
from layerkit.modelfile.spec import fill_defaults, spec_from_dict
from layerkit.nn.losses import SoftmaxCrossEntropy
from layerkit.training.trainer import Trainer

SPEC = {"format": 1, "name": "tiny", "input": {"shape": [3]},
        "layers": [{"type": "dense", "units": 2}], "loss": {"type": "softmax_cross_entropy"}}
DEFAULTS = {k: v["default"] for k, v in TRAINING_SCHEMA["properties"].items() if "default" in v}
EARLY = TRAINING_SCHEMA["properties"]["early_stopping"]["properties"]


def test_nested_sections_get_their_defaults():
    spec = spec_from_dict({**SPEC, "training": {"early_stopping": {"patience": 5}, "data": {"augment": {}}}})
    assert spec.training["early_stopping"] == {"monitor": EARLY["monitor"]["default"], "patience": 5,
                                               "min_delta": EARLY["min_delta"]["default"]}
    assert spec.training["data"]["augment"] == {"shift": 0}
    assert all(spec.training[k] == v for k, v in DEFAULTS.items())
    assert "early_stopping" not in spec_from_dict(SPEC).training  # optional sections stay absent


def test_fill_defaults_leaves_its_input_alone():
    schema = {"properties": {"a": {"type": "object", "properties": {"b": {"default": 1}}}}}
    config = {"a": {}}
    assert fill_defaults(schema, config) == {"a": {"b": 1}} and config == {"a": {}}


def test_trainer_takes_the_schema_defaults_for_a_bare_training_dict():
    model = build_model(SPEC)
    x = np.zeros((10, 3), np.float32)
    data = DataSplits(x, np.zeros(10, np.int64), x, np.zeros(10, np.int64))
    trainer = Trainer(model, SoftmaxCrossEntropy(), data, {"early_stopping": {"monitor": "train_loss"}})
    assert (trainer.epochs, trainer.batch_size, trainer.seed) == (DEFAULTS["epochs"], DEFAULTS["batch_size"],
                                                                  DEFAULTS["seed"])
    assert trainer.early["patience"] == EARLY["patience"]["default"]
