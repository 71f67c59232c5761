"""`layerkit check-grads`: table, JSON, exit codes 0 / 1 / 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

import layerkit
from layerkit.cli import main
from layerkit.nn.layer import Example, Layer
from layerkit.plugins.manager import load_registry, reset_registry


def run(capsys, *argv):
    rc = main(["check-grads", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_passing_model_prints_table_and_verdict(capsys, models_dir):
    rc, out, err = run(capsys, models_dir / "lenet5.json", "--samples", "8")
    assert rc == 0, out + err
    for text in ("layer", "tensor", "shape", "checked", "max rel error", "status", "conv1", "End to end",
                 "PASS:"):
        assert text in out


def test_alexnet_json(capsys, models_dir):
    # every layer kind of the biggest zoo model, in the JSON report; few coordinates per tensor and
    # no end-to-end pass keep it cheap (the end-to-end check is covered on smaller models)
    rc, out, err = run(capsys, models_dir / "alexnet_mnist.json", "--json", "--samples", "4", "--no-whole-model")
    data = json.loads(out)  # nothing but JSON on stdout
    assert rc == 0 and data["ok"] is True, data["verdict"]
    assert {r["layer"] for r in data["layers"]} >= {"conv1", "bn1", "pool1", "fc1", "logits"}
    assert any(r["layer"] == "fc1" and r["strategy"] == "sampled 4 of 802816" for r in data["layers"])
    assert data["whole_model"] == [] and data["seconds"] > 0


def test_options(capsys, models_dir):
    rc, out, _ = run(capsys, models_dir / "mlp.json", "--json", "--no-whole-model", "--samples", "3",
                     "--seed", "5", "--batch-size", "3")
    data = json.loads(out)
    assert rc == 0 and data["whole_model"] == []
    assert data["settings"] == {**data["settings"], "samples": 3, "seed": 5, "batch_size": 3}
    assert all(r["checked"] <= 3 for r in data["layers"])


class HalfGrad(Layer):
    type = "half_grad_relu"
    description = "wrong on purpose"
    examples = (Example({}, (4,)),)

    def forward(self, params, x, training=False, rng=None, state=None):
        return np.tanh(x), x

    def backward(self, params, cache, dy):
        return 0.5 * dy * (1 - np.tanh(cache) ** 2), {}


class Plugin:
    @layerkit.hookimpl
    def layerkit_register_layers(self, register):
        register(HalfGrad)


@pytest.fixture
def broken_registry():
    reset_registry(load_registry([Plugin()]))
    yield
    reset_registry()


def test_failing_layer_exits_1_naming_it(capsys, write_model, broken_registry):
    path = write_model({"format": 1, "name": "bad", "input": {"shape": [4]},
                        "layers": [{"name": "fc", "type": "dense", "units": 4},
                                   {"name": "squash", "type": "half_grad_relu"},
                                   {"name": "logits", "type": "dense", "units": 2}],
                        "loss": {"type": "softmax_cross_entropy"}})
    rc, out, err = run(capsys, path)
    assert rc == 1
    assert "FAIL" in out and "squash.input" in out and "bug in backward" in out
    assert "analytic/numeric = 0.5" in out and "blame:" in out
    rc, out, _ = run(capsys, path, "--json")
    assert rc == 1 and json.loads(out)["ok"] is False


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("{not json", "invalid JSON"),
    ('{"format": 1, "input": {"shape": [4]}, "layers": [{"type": "dense_typo", "units": 2}]}', "did you mean"),
])
def test_bad_input_exits_2_without_traceback(capsys, tmp_path, content, message):
    path = tmp_path / "m.json"
    if content is not None:
        path.write_text(content)
    rc, out, err = run(capsys, path)
    assert rc == 2
    assert message in err and "Traceback" not in err + out
    assert err.startswith("error: ")


def test_bad_option_exits_2(capsys, models_dir):
    rc, _, _ = run(capsys, models_dir / "mlp.json", "--samples", "0")
    assert rc == 2
