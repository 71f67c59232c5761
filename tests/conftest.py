"""Shared fixtures. Real MNIST lives in ../shared/data/mnist on developer and
CI machines; tests that need it skip elsewhere (users do not have it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "models"
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"


def shipped_model_files() -> list[Path]:
    """Every model file of the zoo, the lab nets in models/labs/ included."""
    return sorted(MODELS_DIR.rglob("*.json"))


@pytest.fixture
def models_dir() -> Path:
    return MODELS_DIR


@pytest.fixture
def mnist_dir() -> Path:
    if not (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("real MNIST not available (../shared/data/mnist)")
    return SHARED_MNIST


@pytest.fixture
def write_model(tmp_path):
    """Write a model dict to a JSON file and return its path."""

    def write(model: dict, name: str = "model.json") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(model, indent=2))
        return path

    return write


def tiny_model(**overrides) -> dict:
    model = {
        "format": 1,
        "name": "tiny",
        "input": {"shape": [1, 8, 8]},
        "layers": [
            {"name": "conv1", "type": "conv2d", "filters": 2, "kernel_size": 3},
            {"type": "relu"},
            {"type": "flatten"},
            {"name": "logits", "type": "dense", "units": 3},
        ],
        "loss": {"type": "softmax_cross_entropy"},
        "training": {"dataset": "mnist", "epochs": 1, "batch_size": 8,
                     "optimizer": {"type": "sgd", "lr": 0.1}},
    }
    model.update(overrides)
    return model
