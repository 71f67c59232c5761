"""The size guard refuses huge models before a single tensor is allocated."""

from __future__ import annotations

import pytest
from _core_layers import core_registry, flat_model

from layerkit.modelfile.build import SizeLimits, build_graph_from, build_model, format_bytes, parse_bytes
from layerkit.errors import SizeLimitError
from layerkit.nn.network import Network as Model


@pytest.fixture(scope="module")
def registry():
    return core_registry()


def huge():
    # 10^12 weights: allocating them would take 4 TB
    return flat_model({"name": "fc", "type": "dense", "units": 1_000_000}, shape=[1_000_000],
                      training={"batch_size": 8})


def test_too_many_parameters_refused_before_allocation(registry, monkeypatch):
    def no_allocation(*args, **kwargs):
        raise AssertionError("allocated despite the size guard")

    monkeypatch.setattr(Model, "initialize", no_allocation)
    with pytest.raises(SizeLimitError) as info:
        build_model(huge(), registry=registry)
    assert str(info.value) == (
        "<model>: model has 1,000,001,000,000 parameters, over the limit of 200,000,000 "
        "(raise it with --max-params)")


def test_activation_memory_uses_the_training_batch_size(registry):
    data = flat_model({"type": "dense", "units": 10}, shape=[1000], training={"batch_size": 100})
    graph = build_graph_from(data, registry)
    assert graph.activation_bytes(100) == 2 * (1000 + 10) * 100 * 4
    with pytest.raises(SizeLimitError) as info:
        build_graph_from(data, registry, SizeLimits(max_activation_bytes=500_000))
    assert str(info.value) == (
        "<model>: training at batch size 100 needs about 789.0 KiB of activations, over the limit of "
        "488.2 KiB (raise it with --max-memory or lower the batch size)")
    build_graph_from(data, registry, SizeLimits(max_activation_bytes=500_000, batch_size=10))


def test_both_limits_reported_together(registry):
    with pytest.raises(SizeLimitError) as info:
        build_graph_from(huge(), registry, SizeLimits(max_params=10, max_activation_bytes=10))
    assert len(info.value.problems) == 2


def test_size_parsing_and_formatting():
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("8GB") == 8 * 10**9
    assert parse_bytes("1e6") == 10**6
    for bad in ("", "12 parsecs", "-5MB", "0", "1e999"):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(10**400) == "more than 1 EiB"


def conv_model(layer, shape, batch):
    return {"format": 1, "name": "cols", "input": {"shape": list(shape)}, "layers": [layer, {"type": "flatten"}],
            "loss": {"type": "softmax_cross_entropy"}, "training": {"batch_size": batch}}


@pytest.mark.parametrize("layer, per_sample_cols", [
    # a 31x31 window over 128 channels: 128*31*31 values per output pixel, 128 rows of 143 flat
    # columns (128 + 15: a row's right padding is the next row's left, kernels/windows.py)
    ({"type": "conv2d", "filters": 1, "kernel_size": 31, "padding": 15}, 128 * 31 * 31 * 128 * 143 * 4),
    # the transposed convolution keeps every sample's (F, kh, kw, H, W) columns at once
    ({"type": "conv2d_transpose", "filters": 128, "kernel_size": 31, "padding": 15}, 128 * 31 * 31 * 128 * 128 * 4),
])
def test_layer_scratch_counts_against_the_memory_limit(layer, per_sample_cols, monkeypatch):
    from layerkit.parallel import threads
    from layerkit.plugins.manager import load_registry

    monkeypatch.setattr(threads, "num_threads", lambda: 1)
    data = conv_model(layer, (128, 128, 128), 2)
    registry = load_registry(entry_points=False)
    with pytest.raises(SizeLimitError, match=r"scratch \(im2col columns\), over the limit of 8.0 GiB"):
        build_graph_from(data, registry)
    graph = build_graph_from(data, registry, SizeLimits(max_activation_bytes=2**62))
    batch_factor = 2 if layer["type"] == "conv2d_transpose" else 1  # conv2d: one buffer per thread
    assert graph.workspace_bytes(2) >= per_sample_cols * batch_factor
    assert graph.workspace_bytes(2, itemsize=8) == 2 * graph.workspace_bytes(2)
