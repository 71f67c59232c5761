"""The gradient checker itself: metric, sampling, determinism, stochastic layers, real batches, reports."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from rich.console import Console

from layerkit.modelfile.build import build_model
from layerkit.gradcheck.layers import check_layer, check_layer_config
from layerkit.gradcheck.numerics import PASS_TOL, relative_error, status_of
from layerkit.gradcheck.report import check_model
from layerkit.nn.layer import Example, Layer, ParamSpec
from layerkit.plugins.manager import get_registry


def test_relative_error_metric():
    assert relative_error(1.0, 1.0) == 0.0
    assert relative_error(2.0, 1.0) == pytest.approx(1 / 3)
    assert relative_error(1e-12, -1e-12) == 0.0  # both below the absolute floor
    assert relative_error(float("nan"), 1.0) == math.inf
    assert relative_error(1.0, float("inf")) == math.inf
    # a difference the size of the round-off estimate stays under PASS_TOL / 10
    assert relative_error(3e-9, 0.0, noise=3e-9) <= PASS_TOL / 10 * (1 + 1e-9)
    assert [status_of(e) for e in (1e-9, 1e-5, 1e-2, math.inf)] == ["pass", "warn", "fail", "fail"]


def test_dense_passes_well_below_threshold():
    dense = get_registry().layer("dense")
    rows = check_layer_config(dense, {"units": 5, "use_bias": True, "init": "glorot_uniform"}, (7,))
    assert [(r.tensor, r.status) for r in rows] == [("input", "pass"), ("W", "pass"), ("b", "pass")]
    assert all(r.max_rel_error < 1e-7 for r in rows)


def test_sampling_strategy():
    dense = get_registry().layer("dense")
    rows = {r.tensor: r for r in check_layer_config(dense, {"units": 10, "use_bias": True,
                                                             "init": "glorot_uniform"}, (9,), samples=12)}
    assert rows["W"].strategy == "sampled 12 of 90" and rows["W"].checked == 12 and rows["W"].total == 90
    assert rows["b"].strategy == "exhaustive" and rows["b"].checked == 10
    assert rows["input"].strategy == "sampled 12 of 18"


def test_same_seed_same_result_other_seed_other_coordinates():
    dense = get_registry().layer("dense")
    config = {"units": 6, "use_bias": False, "init": "he_normal"}
    a = check_layer_config(dense, config, (20,), seed=3, samples=4)
    b = check_layer_config(dense, config, (20,), seed=3, samples=4)
    c = check_layer_config(dense, config, (20,), seed=4, samples=4)
    assert [r.to_dict() for r in a] == [r.to_dict() for r in b]
    assert [r.worst.index for r in a] != [r.worst.index for r in c]


class Product(Layer):
    """Two inputs, one scale parameter: y = s * x0 * x1."""

    type = "product"
    arity = None
    examples = (Example({}, [(3,), (3,)]),)

    def output_shape(self, input_shape):
        return tuple(input_shape[0])

    def param_specs(self, input_shape):
        return {"s": ParamSpec((1,), "ones")}

    def forward(self, params, x, training=False, rng=None, state=None):
        a, b = x
        return params["s"] * a * b, (a, b)

    def backward(self, params, cache, dy):
        a, b = cache
        s = params["s"]
        return [dy * s * b, dy * s * a], {"s": np.array([np.sum(dy * a * b)])}


def test_multi_input_layer():
    rows = check_layer_config(Product, {}, [(3,), (3,)])
    assert [(r.tensor, r.status) for r in rows] == [("input[0]", "pass"), ("input[1]", "pass"), ("s", "pass")]


class Noisy(Layer):
    """Training-time multiplicative noise from the rng: checkable only if every forward re-seeds it."""

    type = "noisy"
    uses_rng = True

    def forward(self, params, x, training=False, rng=None, state=None):
        noise = 1 + rng.standard_normal(x.shape) if training else 1.0
        return x * x * noise, (x, noise)

    def backward(self, params, cache, dy):
        x, noise = cache
        return 2 * x * noise * dy, {}


def test_stochastic_layer_made_deterministic():
    [row] = check_layer(Noisy(), {}, np.random.default_rng(0).standard_normal((2, 8)))
    assert row.status == "pass"


class Raises(Layer):
    type = "raises"

    def forward(self, params, x, training=False, rng=None, state=None):
        return x, None

    def backward(self, params, cache, dy):
        raise ValueError("oops")


class NanGrad(Raises):
    def backward(self, params, cache, dy):
        return dy * np.nan, {}


def test_backward_that_raises_or_returns_nan_fails_cleanly():
    x = np.ones((2, 3))
    [row] = check_layer(Raises(), {}, x, name="r")
    assert row.status == "fail" and row.layer == "r" and "ValueError: oops" in row.message
    [row] = check_layer(NanGrad(), {}, x)
    assert row.status == "fail" and row.max_rel_error == math.inf


def test_inputs_and_parameters_not_modified():
    dense = get_registry().layer("dense")(units=3, use_bias=True, init="he_normal")
    rng = np.random.default_rng(1)
    params = {"W": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
    x = rng.standard_normal((2, 4))
    before = (x.copy(), params["W"].copy(), params["b"].copy())
    check_layer(dense, params, x)
    assert all(np.array_equal(a, b) for a, b in zip(before, (x, params["W"], params["b"]), strict=True))


@pytest.mark.parametrize("name", ["mlp.json", "resnet_mini.json", "lenet5.json"])
def test_shipped_models_pass(models_dir, name):
    report = check_model(build_model(models_dir / name), samples=8)
    assert report.ok, report.verdict()
    assert report.layer_rows and report.model_rows
    every = {(n.name, t) for n in report_model_nodes(models_dir / name) for t in n.param_specs}
    assert every <= {(r.layer, r.tensor) for r in report.model_rows}


def report_model_nodes(path):
    return build_model(path).nodes


def test_real_batch_with_zeros_and_ties(models_dir):
    """MNIST-like input: exact zeros make relu kinks and max-pool ties; none may fail."""
    rng = np.random.default_rng(0)
    x = np.maximum(rng.random((6, 1, 28, 28)) * 2 - 1, 0).astype(np.float32)
    y = rng.integers(0, 10, 6)
    report = check_model(build_model(models_dir / "lenet5.json"), x, y, batch_size=3, samples=8)
    assert report.ok, report.verdict()
    assert report.settings["inputs"] == "real batch" and report.settings["batch_size"] == 3
    assert report.kinks > 0


def test_report_json_and_render(models_dir):
    report = check_model(build_model(models_dir / "softmax_regression.json"), samples=4)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["ok"] is True and data["verdict"].startswith("PASS")
    assert {"layer", "tensor", "shape", "checked", "strategy", "max_rel_error", "status"} <= set(data["layers"][0])
    assert data["whole_model"][0]["layer"].startswith("(loss")
    console = Console(record=True, width=150)
    report.render(console)
    text = console.export_text()
    assert "max rel error" in text and "End to end" in text and "PASS:" in text


def test_crashing_layer_in_a_model_is_reported_not_raised():
    import layerkit
    from layerkit.plugins.manager import load_registry

    class Crashing(Raises):
        type = "crashing"

    class Plugin:
        @layerkit.hookimpl
        def layerkit_register_layers(self, register):
            register(Crashing)

    registry = load_registry([Plugin()])
    spec = {"format": 1, "name": "crash", "input": {"shape": [3]},
            # a parameter before it: otherwise training never calls its backward (nothing upstream
            # needs a gradient) and only the per-layer check would meet the crash
            "layers": [{"name": "first", "type": "dense", "units": 3}, {"name": "boom", "type": "crashing"},
                       {"name": "logits", "type": "dense", "units": 2}],
            "loss": {"type": "softmax_cross_entropy"}}
    report = check_model(build_model(spec, registry=registry), registry=registry)
    assert not report.ok
    assert [(r.layer, r.tensor) for r in report.failures] == [("boom", "backward"), ("(model)", "backward")]
    assert "ValueError: oops" in report.blame


@pytest.mark.parametrize("name", ["cnn2.json", "resnet_mini.json"])
def test_real_mnist_batches_never_fail(models_dir, name):
    """Zero biases on zero pixels put relus exactly at 0 and tie max-pool windows: the situation
    `fit --check-grads` meets on its first batch. No seed may produce a failure."""
    from pathlib import Path

    import layerkit.data
    from layerkit.data.builtin import EMBEDDED_MNIST

    path = Path(layerkit.data.__file__).parent / EMBEDDED_MNIST
    if not path.exists():
        pytest.skip("embedded MNIST sample not present")
    with np.load(path) as data:
        x, y = data["x_train"][:64], data["y_train"][:64]
    x = (x.reshape(len(x), 1, 28, 28) / (255.0 if x.max() > 1 else 1.0)).astype(np.float32)
    model = build_model(models_dir / name)
    for seed in range(8):
        idx = np.random.default_rng(seed).choice(len(x), 2, replace=False)
        report = check_model(model, x[idx], y[idx], seed=seed, samples=8)
        assert report.ok, f"seed {seed}: {report.verdict()} {report.blame}"
        assert report.kinks > 0
