"""`layerkit check-grads FILE.py` runs the check engine exactly as the pytest plugin does, and its text
names the method training calls when that method is the wrong one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layerkit.cli import main
from layerkit.errors import ContractError
from layerkit.plugins.manager import load_registry
from layerkit.testing import check_cases

LAYER = '''\
import numpy as np
from layerkit.nn.layer import Coupling, Example, Layer, ParamSpec


class Scale(Layer):
    """y = x * w per feature; backward is right."""

    type = "file_scale"
    description = "per-feature scale"
    examples = (Example({}, (4,)),)
    sample_coupling = Coupling.NONE

    def param_specs(self, input_shape):
        return {"w": ParamSpec(tuple(input_shape), "ones")}

    def forward(self, params, x, training=False, rng=None, state=None):
        return x * params["w"], x

    def backward(self, params, cache, dy):
        return dy * params["w"], {"w": (dy * cache).sum(axis=0)}
'''
WRONG_INPLACE = '''
    def backward_inplace(self, params, cache, dy):
        dy *= 2 * params["w"]  # twice the input gradient
        return dy, {"w": (dy * cache).sum(axis=0)}
'''
WRONG_PARAMS = '''
    def backward_params(self, params, cache, dy):
        return {"w": 2 * (dy * cache).sum(axis=0)}
'''


def layer_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "scale.py"
    path.write_text(LAYER + extra)
    return path


def check_grads(capsys, *argv) -> tuple[int, str]:
    rc = main(["check-grads", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out + err


def pytest_cases(path: Path):
    """What the pytest plugin parametrises over for the layers of this file."""
    return check_cases(registry=load_registry(default_plugins=(), entry_points=False, plugin_files=[path]))


@pytest.mark.parametrize("extra", ["", WRONG_INPLACE, WRONG_PARAMS], ids=["right", "inplace", "params"])
def test_check_grads_and_pytest_run_the_same_checks(capsys, tmp_path, extra):
    path = layer_file(tmp_path, extra)
    _, out = check_grads(capsys, path, "--json")
    from_cli = sorted(c["check"] for c in json.loads(out)["checks"])
    from_pytest = sorted(c.check for c in pytest_cases(path))
    assert from_cli == from_pytest
    assert "split_batch_equals_whole" in from_cli and "gradients_match_finite_differences" in from_cli


def test_a_wrong_backward_inplace_is_caught_by_both(capsys, tmp_path):
    path = layer_file(tmp_path, WRONG_INPLACE)
    rc, out = check_grads(capsys, path)
    assert rc == 1
    assert "check backward_inplace_equals_backward failed [backward_inplace]" in out
    [case] = [c for c in pytest_cases(path) if c.check == "backward_inplace_equals_backward"]
    assert case.id == "file_scale-0-backward_inplace_equals_backward"
    registry = load_registry(default_plugins=(), entry_points=False, plugin_files=[path])
    with pytest.raises(ContractError, match="backward_inplace"):
        case.run(registry)


def test_text_names_backward_params_for_a_layer_file(capsys, tmp_path):
    rc, out = check_grads(capsys, layer_file(tmp_path, WRONG_PARAMS))
    assert rc == 1
    assert "backward_params" in out and "a bug in backward" not in out


def test_text_names_backward_params_for_a_model(capsys, tmp_path, write_model):
    """In a model the first layer trains through backward_params: the text must send the author there."""
    model = write_model({"format": 1, "name": "first_scaled", "input": {"shape": [4]},
                         "layers": [{"name": "first", "type": "file_scale"},
                                    {"name": "logits", "type": "dense", "units": 3}],
                         "loss": {"type": "softmax_cross_entropy"}})
    rc, out = check_grads(capsys, model, "--plugin", layer_file(tmp_path, WRONG_PARAMS), "--no-whole-model")
    assert rc == 1
    assert "first.w (in isolation, through backward_params): FAIL" in out
    assert "a bug in backward_params" in out and "a bug in backward;" not in out
    assert "first.w (through backward_params)" in out  # the verdict line


def test_plugin_loading_runs_the_load_time_checks(capsys, tmp_path, write_model):
    """--plugin stops a command on a broken load-time claim (here backward's gradient shapes), at its line."""
    path = layer_file(tmp_path)
    path.write_text(path.read_text().replace('{"w": (dy * cache).sum(axis=0)}', '{"w": dy * cache}'))
    from conftest import tiny_model
    rc, out = check_grads(capsys, write_model(tiny_model()), "--plugin", path)
    assert rc == 2
    assert f"{path}:19: Scale.backward: the gradient of 'w' has shape 2x4, the parameter 4" in out


def test_layer_check_fixture_runs_one_check(layer_check):
    layer_check.run()


test_layer_check_fixture_runs_one_check = pytest.mark.layerkit_plugin("activations")(
    test_layer_check_fixture_runs_one_check)
