"""plugins/layerkit-activations: found only through its entry point, and its layers check out."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from layerkit.modelfile.build import build_model
from layerkit.gradcheck.layers import check_layer_config
from layerkit.gradcheck.report import check_model
from layerkit.default_plugins import DEFAULT_PLUGINS
from layerkit.plugins.manager import load_registry
from layerkit.testing import conformance_cases

PLUGIN_DIR = Path(__file__).resolve().parent.parent / "plugins" / "layerkit-activations"
LAYERS = {"gelu", "swish", "elu", "softplus"}


@pytest.fixture(scope="module")
def registry():
    eps = [ep for ep in md.entry_points(group="layerkit") if ep.name == "activations"]
    assert eps, "layerkit-activations is not installed: pip install -e plugins/layerkit-activations"
    assert eps[0].value == "layerkit_activations"
    return load_registry()


def test_found_only_through_the_entry_point(registry):
    assert not any("layerkit_activations" in module for module in DEFAULT_PLUGINS)
    without = load_registry(entry_points=False)
    assert LAYERS.isdisjoint(without.names("layer"))
    assert LAYERS <= set(registry.names("layer"))
    for name in LAYERS:
        assert registry.entry("layer", name).plugin == "activations"
    info = registry.plugins["activations"]
    assert info.distribution == "layerkit-activations" and info.version == "0.1.0"
    assert sorted(info.provides["layer"]) == sorted(LAYERS) and not info.errors


def test_can_be_disabled(registry):
    off = load_registry(disabled={"activations"})
    assert LAYERS.isdisjoint(off.names("layer"))
    assert off.plugins["activations"].disabled


def test_conformance_cases_by_distribution_or_entry_point_name(registry):
    by_dist = conformance_cases("layerkit-activations", registry=registry)
    by_ep = conformance_cases("activations", registry=registry)
    assert by_dist == by_ep and {c.layer_type for c in by_dist} == LAYERS
    assert all(not c.problem for c in by_dist)
    [missing] = conformance_cases("layerkit-nonexistent", registry=registry)
    assert "not installed" in missing.problem


def plugin_model() -> dict:
    return {
        "format": 1, "name": "activations_demo", "input": {"shape": [1, 6, 6]},
        "layers": [
            {"name": "conv", "type": "conv2d", "filters": 3, "kernel_size": 3},
            {"name": "act1", "type": "gelu"},
            {"type": "flatten"},
            {"name": "fc1", "type": "dense", "units": 8},
            {"name": "act2", "type": "swish", "beta": 1.5},
            {"name": "fc2", "type": "dense", "units": 8},
            {"name": "act3", "type": "elu", "alpha": 0.5},
            {"name": "fc3", "type": "dense", "units": 8},
            {"name": "act4", "type": "softplus"},
            {"name": "logits", "type": "dense", "units": 3},
        ],
        "loss": {"type": "softmax_cross_entropy"},
    }


def test_plugin_layers_pass_check_grads_in_a_model(registry):
    model = build_model(plugin_model(), registry=registry)
    report = check_model(model, registry=registry)
    assert report.ok, report.verdict()
    checked = {r.layer_type for r in report.layer_rows if r.status == "pass"}
    assert LAYERS <= checked


def test_plugin_layers_pass_check_grads_cli(registry, write_model, capsys):
    from layerkit.cli import main

    rc = main(["check-grads", str(write_model(plugin_model())), "--samples", "8"])
    out = capsys.readouterr().out
    assert rc == 0 and "act2 (swish)" in out and "PASS" in out


def test_a_wrong_swish_would_be_caught(registry):
    swish = registry.layer("swish")

    class WrongSwish(swish):
        def backward(self, params, cache, dy):
            x, s = cache
            return dy * s, {}  # forgets the beta x s (1 - s) term

    [row] = check_layer_config(WrongSwish, {"beta": 1.0}, (6,))
    assert row.status == "fail"


def test_elu_kink_at_zero_only_with_alpha_not_1(registry):
    elu = registry.layer("elu")
    x = np.zeros((2, 4))
    from layerkit.gradcheck.layers import check_layer

    [smooth] = check_layer(elu(alpha=1.0), {}, x)
    assert smooth.status == "pass" and smooth.kinks == 0
    [kinked] = check_layer(elu(alpha=0.5), {}, x)
    assert kinked.status == "skipped" and kinked.kinks == 8


def test_plugin_own_suite_passes():
    """The plugin's tests, with their one-line opt-in, run green from the plugin's directory."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=PLUGIN_DIR,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "passed" in done.stdout
