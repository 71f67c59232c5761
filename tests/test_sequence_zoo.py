"""The shipped sequence models: each validates, passes check-grads, trains offline with no flags, and
the PyTorch twin bench/ trains (bench/torch_sequence.py) starts from the same function."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from conftest import ROOT
from layerkit.api import check_grads
from layerkit.modelfile import zoo
from layerkit.modelfile.build import build_model
from layerkit.training.runs import train

SEQUENCE_MODELS = {"char_lstm": "text", "tiny_transformer": "text", "reverse_transformer": "reverse"}


def _token_models() -> list[str]:
    return [name for name, path in zoo.files().items()
            if (json.loads(path.read_text()).get("input") or {}).get("dtype") == "int64"]


def test_the_three_sequence_models_are_shipped_with_their_tasks():
    assert sorted(_token_models()) == sorted(SEQUENCE_MODELS)
    for name, dataset in SEQUENCE_MODELS.items():
        assert json.loads(zoo.files()[name].read_text())["training"]["dataset"] == dataset


@pytest.mark.parametrize("name", _token_models())
def test_check_grads_passes_on_every_shipped_sequence_model(name):
    # the quick options: one sample, four coordinates per tensor; a long, wide LSTM (128 units over
    # 64 steps) fails here, as its standard-normal weights make the recurrence chaotic
    report = check_grads(zoo.files()[name], batch_size=1, samples=4, verbose=False)
    assert report.ok, report.to_dict()


@pytest.mark.parametrize("name", sorted(SEQUENCE_MODELS))
def test_fit_runs_offline_with_the_shipped_settings(name, tmp_path):
    raw = json.loads(zoo.files()[name].read_text())
    training = raw["training"]
    small = ({"train_limit": 64, "test_limit": 16} if training["dataset"] == "text"
             else {"train_samples": 64, "test_samples": 16})
    raw["training"] = {**training, "epochs": 1, "data": {**training.get("data", {}), **small}}
    run, result = train(raw, out=tmp_path / "run")
    assert np.isfinite(result.history[-1]["train_loss"])
    assert any(run.path.glob("weights*"))


@pytest.mark.parametrize("name", sorted(SEQUENCE_MODELS))
def test_the_pytorch_twin_computes_the_same_function(name, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    sys.modules.pop("torch_sequence", None)
    from torch_sequence import TorchGraph

    network = build_model(zoo.files()[name])
    t = network.graph.input_shape[0]
    x = np.random.default_rng(0).integers(0, network.graph.nodes[0].layer.num_embeddings, (3, t))
    ours = network.forward(x, training=False)[0]
    twin = TorchGraph(network).eval()
    with torch.no_grad():
        theirs = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
