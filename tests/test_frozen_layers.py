"""``"trainable": false``: a frozen layer's tensors are not updated, not decayed, get no optimizer
state and no parameter gradient; the backward pass stops below the last layer that learns."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import layerkit
from layerkit.cli import main
from layerkit.errors import ModelFileError
from layerkit.modelfile.build import build_model
from layerkit.modelfile.spec import spec_from_dict
from layerkit.nn.plan import BackwardCall
from layerkit.training.trainer import build_loss, build_optimizer

MLP = {
    "format": 1, "name": "mlp", "input": {"shape": [6]},
    "layers": [
        {"name": "d1", "type": "dense", "units": 5},
        {"type": "tanh"},
        {"name": "d2", "type": "dense", "units": 4},
        {"type": "tanh"},
        {"name": "out", "type": "dense", "units": 3},
    ],
    "loss": {"type": "softmax_cross_entropy"},
    "training": {"epochs": 2, "batch_size": 8, "weight_decay": 0.1},
}


def mlp(frozen: tuple[str, ...] = (), **changes) -> dict:
    model = copy.deepcopy(MLP)
    for layer in model["layers"]:
        if layer.get("name") in frozen:
            layer["trainable"] = False
    model.update(changes)
    return model





def batch(n: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype(np.float32), rng.integers(0, 3, n)


def test_trainable_must_be_a_boolean():
    with pytest.raises(ModelFileError, match=r"layers\[0\]\.trainable: \"no\" is not of type 'boolean'"):
        spec_from_dict(mlp(layers=[{"type": "dense", "units": 3, "trainable": "no"}]))


def test_a_frozen_first_layer_needs_no_backward_at_all():
    calls = build_model(spec_from_dict(mlp(("d1",)))).plan.backward_calls()
    assert calls["d1"] is calls["tanh_1"] is BackwardCall.SKIP
    assert calls["d2"] is BackwardCall.BACKWARD_PARAMS  # nothing below it learns: no input gradient either


def test_a_frozen_middle_layer_passes_the_input_gradient_alone():
    calls = build_model(spec_from_dict(mlp(("d2",)))).plan.backward_calls()
    assert calls["d2"] is BackwardCall.BACKWARD_INPUT
    assert calls["d1"] is BackwardCall.BACKWARD_PARAMS


def test_gradients_of_the_layers_that_learn_are_unchanged_bit_for_bit():
    x, y = batch()
    whole = build_model(spec_from_dict(mlp()))
    part = build_model(spec_from_dict(mlp(("d2",))))
    loss = build_loss(whole.graph.spec)
    _, _, g_all = whole.loss_and_gradients(loss, x, y)
    _, _, g_part = part.loss_and_gradients(loss, x, y)
    assert g_part["d2"] == {}
    for name in ("d1", "out"):  # d1's gradient went through the frozen d2
        for t in g_all[name]:
            assert np.array_equal(g_all[name][t], g_part[name][t]), (name, t)


@pytest.mark.parametrize("optimizer", [
    {"type": "sgd", "lr": 0.1, "momentum": 0.9}, {"type": "adam", "lr": 0.01}, {"type": "adamw", "lr": 0.01},
    {"type": "rmsprop", "lr": 0.01, "momentum": 0.5}, {"type": "adagrad", "lr": 0.1}])
def test_no_optimizer_updates_decays_or_keeps_state_for_a_frozen_layer(optimizer):
    model = layerkit.load(mlp(("d2",), training={**MLP["training"], "optimizer": optimizer}))
    before = {k: v.copy() for k, v in model.weights().items()}
    x, y = batch(32, 1)
    model.fit(x, y, verbose=0)
    after = model.weights()
    for key in ("params/d2/W", "params/d2/b"):
        assert np.array_equal(before[key], after[key]), key
    for key in ("params/d1/W", "params/out/W"):
        assert not np.array_equal(before[key], after[key]), key
    opt = build_optimizer(model.net, optimizer, weight_decay=0.1)
    assert not [name for name in opt.names if name.startswith("d2/")]
    assert not [key for key in opt.state_dict() if "/d2/" in key or key.split("/", 1)[-1].startswith("d2/")]


def test_batch_norm_frozen_keeps_its_scale_and_shift_but_its_running_statistics_update():
    model = mlp()
    model["layers"].insert(1, {"name": "bn", "type": "batch_norm", "trainable": False})
    m = layerkit.load(model)
    before = {k: v.copy() for k, v in m.weights().items()}
    x, y = batch(32, 2)
    m.fit(x, y, verbose=0)
    after = m.weights()
    for key in [k for k in before if k.startswith("params/bn/")]:
        assert np.array_equal(before[key], after[key]), key
    assert any(not np.array_equal(before[k], after[k]) for k in before if k.startswith("state/bn/"))


def test_summary_counts_trainable_and_frozen_parameters(write_model, capsys):
    path = write_model(mlp(("d1",)))
    assert main(["summary", str(path)]) == 0
    out = capsys.readouterr().out
    assert "parameters: 74 (39 trainable, 35 frozen)" in out
    assert main(["summary", str(path), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["trainable_parameters"], record["frozen_parameters"]) == (39, 35)
    assert [layer["trainable"] for layer in record["layers"]][:2] == [False, True]


def test_check_grads_checks_a_frozen_layers_gradients_too():
    report = layerkit.check_grads(mlp(("d2",)), verbose=False)
    assert report.ok


def test_freeze_from_python_is_the_model_files_trainable_false(tmp_path):
    model = layerkit.load(mlp())
    model.freeze("d1")
    assert model.frozen_layers == ["d1"]
    assert model.net.plan.backward_calls()["d1"] is BackwardCall.SKIP
    with pytest.raises(layerkit.LayerkitError, match="has no layer 'd11'; did you mean 'd1'"):
        model.freeze("d11")
    saved = json.loads((model.save(tmp_path / "m") / "model.json").read_text())
    assert saved["layers"][0]["trainable"] is False
    model.unfreeze()
    assert model.frozen_layers == [] and model.net.plan.backward_calls()["d1"] is BackwardCall.BACKWARD_PARAMS
