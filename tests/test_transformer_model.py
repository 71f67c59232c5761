"""A causal 2-block pre-norm transformer written as a model file (examples/causal_transformer.json,
the one docs/sequence-models.md shows): it validates, its gradients check, it is causal end to end,
and a few optimizer steps on an mse loss lower the loss."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import ROOT
from layerkit.cli import main
from layerkit.modelfile.build import build_model
from layerkit.training.trainer import build_loss, build_optimizer

MODEL = ROOT / "examples" / "causal_transformer.json"


def test_validates(capsys):
    assert main(["validate", str(MODEL)]) == 0
    assert "output shape (12, 5)" in capsys.readouterr().out


def test_gradients_check_layer_by_layer_and_end_to_end(capsys):
    assert main(["check-grads", str(MODEL), "--json", "--samples", "12"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    checked = {(r["layer"], r["tensor"]) for r in report["layers"]}
    assert {("block1_attention", "in_proj_weight"), ("block2_attention", "out_proj.weight"),
            ("block1_attention", "input")} <= checked
    assert any(r["layer"] == "block2_attention" for r in report["whole_model"])


def _model(**changes):
    spec = json.loads(MODEL.read_text())
    for layer in spec["layers"]:
        layer.update(changes.get(layer["type"], {}))
    return spec


@pytest.mark.parametrize("spec, causal", [(None, True),
                                          # the check below can fail: layer_norm over the whole (T, D)
                                          # sample mixes later positions into earlier ones
                                          (_model(layer_norm={"normalized_dims": None}), False)])
def test_an_output_position_sees_no_later_input(spec, causal):
    net = build_model(spec if spec is not None else MODEL, seed=0, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((2, 12, 16))
    changed = x.copy()
    # not a constant shift: every layer_norm on the last axis would cancel that
    changed[:, 7:] += np.random.default_rng(1).standard_normal((2, 5, 16))
    y, y2 = net.infer(x), net.infer(changed)
    assert np.allclose(y[:, :7], y2[:, :7], rtol=0, atol=1e-12) == causal
    assert not np.allclose(y[:, 7:], y2[:, 7:])


def test_a_few_adam_steps_lower_the_mse():
    net = build_model(MODEL, seed=0)
    loss = build_loss(net.graph.spec)
    optimizer = build_optimizer(net, {"type": "adam", "lr": 0.01})
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 12, 16)).astype(np.float32)
    # a causal target: the running mean of the first 5 features
    target = (np.cumsum(x[..., :5], axis=1) / np.arange(1, 13)[:, None]).astype(np.float32)
    losses = []
    for step in range(15):
        value, _, grads = net.loss_and_gradients(loss, x, target, rng=np.random.default_rng(step))
        optimizer.step([grads[node.name][t] for node in net.nodes for t in net.params[node.name]])
        losses.append(value)
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses


def test_the_whole_model_exports_to_onnx_and_matches():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from layerkit.export.onnx import to_onnx

    net = build_model(MODEL, seed=0)
    x = np.random.default_rng(2).standard_normal((3, 12, 16)).astype(np.float32)
    session = ort.InferenceSession(to_onnx(net).SerializeToString(), providers=["CPUExecutionProvider"])
    (got, _) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(got, net.infer(x), rtol=1e-5, atol=1e-5)
