"""ONNX export: every registered layer and every shipped model runs in onnxruntime and gives what
layerkit gives (the graph includes the preprocessing and the softmax)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import ROOT
from layerkit.data.preprocess import Preprocessing, to_model_layout
from layerkit.modelfile.build import build_model
from layerkit.modelfile import zoo
from layerkit.plugins.manager import get_registry
from layerkit.training.trainer import build_loss

onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx extra")
ort = pytest.importorskip("onnxruntime", reason="the export check needs onnxruntime (onnx extra)")

from layerkit.export.onnx import ExportError, layer_to_onnx, to_onnx  # noqa: E402
from layerkit.nn.layer import input_kinds  # noqa: E402

TOLERANCE = 1e-5
SAMPLE = ROOT / "layerkit" / "data" / "embedded" / "mnist_sample.npz"


def _run(proto, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _layer_cases():
    registry = get_registry()
    for name in registry.names("layer"):
        cls = registry.get("layer", name)
        for i, example in enumerate(cls.examples):
            yield pytest.param(cls, example, id=f"{name}-{i}")


@pytest.mark.parametrize("cls, example", list(_layer_cases()))
def test_every_layer_example_exports_and_matches(cls, example):
    # parametrized over the live registry: a new layer (built-in or plugin) without to_onnx fails here
    from layerkit.nn.layer import overrides
    assert overrides(cls, "to_onnx"), f"{cls.type}: no to_onnx mapping (see docs/export.md)"
    layer = cls(**_with_defaults(cls, example.config))
    multi = layer.arity != 1
    shapes = [tuple(s) for s in example.input_shape] if multi else [tuple(example.input_shape)]
    rng = np.random.default_rng(0)
    arg = shapes if multi else shapes[0]
    params = {k: rng.normal(size=s.shape).astype(np.float32) for k, s in layer.param_specs(arg).items()}
    state = {k: (rng.uniform(0.5, 2.0, size=s.shape) if "var" in k else rng.normal(size=s.shape)).astype(np.float32)
             for k, s in layer.state_specs(arg).items()}
    # token ids (an embedding's, a recurrent layer's mask) go in as int64 from the layer's range
    kinds = input_kinds(layer, len(shapes))
    xs = [rng.integers(0, layer.token_range(), size=(3, *s)) if kind == "tokens"
          else rng.normal(size=(3, *s)).astype(np.float32) for s, kind in zip(shapes, kinds, strict=True)]
    want, _ = layer.forward(params, xs if multi else xs[0], training=False, rng=None, state=state)
    (got,) = _run(layer_to_onnx(layer, shapes, params, state), {f"x{i}": x for i, x in enumerate(xs)})
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= TOLERANCE * max(1.0, float(np.max(np.abs(want))))


def _with_defaults(cls, config):
    props = cls.params_schema.get("properties", {})
    return {**{k: v["default"] for k, v in props.items() if isinstance(v, dict) and "default" in v}, **config}


def _prepared(name: str, normalize: str | None = None, images: int | None = None):
    """A shipped model with random weights (batch-norm statistics too), its preprocessing fitted on the
    embedded sample (random uint8 images for inputs that are not 28x28), and raw uint8 test images in
    the model's layout: 500, or 100 for the nets that need more than 20 MFLOP per image (fewer images
    of the largest nets keep the suite short; a wrong mapping shows on any image)."""
    net = build_model(zoo.files()[name])
    if images is None:
        images = 500 if net.graph.flops < 20_000_000 else 100
    rng = np.random.default_rng(1)
    for node in net.nodes:  # the initial statistics (0, 1) would hide a wrong mapping
        for key, value in net.state[node.name].items():
            value[...] = rng.uniform(0.5, 1.5, value.shape) if "var" in key else rng.normal(0, 0.1, value.shape)
    data = (net.graph.spec.training.get("data") or {})
    if net.graph.input_dtype == "int64":  # token ids go in as they are: no preprocessing
        return net, None, rng.integers(0, net.nodes[0].layer.token_range(), (images, *net.graph.input_shape))
    if int(np.prod(net.graph.input_shape)) == 28 * 28:
        with np.load(SAMPLE) as sample:
            train = to_model_layout(sample["x_train"], net.graph.input_shape, "sample")
            raw = to_model_layout(sample["x_test"][:images], net.graph.input_shape, "sample")
    else:  # CIFAR-10 nets: images of their shape
        train = rng.integers(0, 256, (1000, *net.graph.input_shape), dtype=np.uint8)
        raw = rng.integers(0, 256, (images, *net.graph.input_shape), dtype=np.uint8)
    pre = Preprocessing.fit(train, normalize or data.get("normalize", "unit"), input_shape=net.graph.input_shape)
    return net, pre, raw


def _max_difference(name: str, normalize: str | None = None) -> float:
    net, pre, raw = _prepared(name, normalize)
    loss = build_loss(net.graph.spec)
    want = loss.probabilities(net.predict(raw if pre is None else pre.apply(raw)))
    proto = to_onnx(net, pre, loss)
    logits, probs = _run(proto, {"input": raw})
    assert probs.shape == want.shape and probs.dtype == np.float32
    assert np.array_equal(probs.argmax(axis=1), want.argmax(axis=1)) or np.max(np.abs(probs - want)) < TOLERANCE
    return float(np.max(np.abs(probs - want)))


@pytest.mark.parametrize("name", zoo.names())
def test_every_shipped_model_exports_and_matches_predict_proba(name):
    # parametrized over the zoo folder (labs/ included): a model added there is covered without touching this test
    assert _max_difference(name) <= TOLERANCE


def test_standardized_input_is_part_of_the_graph():
    assert _max_difference("cnn1", "standardize") <= TOLERANCE


def test_exported_graph_takes_raw_uint8_images_and_names_its_outputs():
    net, pre, raw = _prepared("softmax_regression", images=4)
    proto = to_onnx(net, pre, build_loss(net.graph.spec))
    (graph_input,) = proto.graph.input
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in proto.graph.output] == ["logits", "probabilities"]
    (probs_of_raw,) = _run(proto, {"input": raw})[1:]
    assert probs_of_raw.shape == (4, 10)
    # float input to a uint8 graph is refused by onnxruntime's type check, not misread (nor failing elsewhere)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument,
                       match=r"Unexpected input data type.*expected: \(tensor\(uint8\)\)"):
        _run(proto, {"input": raw.astype(np.float32)})


def test_a_layer_without_a_mapping_is_named(monkeypatch):
    net, pre, _ = _prepared("cnn1", images=1)
    layer_cls = type(net.nodes[0].layer)
    monkeypatch.delattr(layer_cls, "to_onnx")
    with pytest.raises(ExportError, match=r"no ONNX mapping for 'conv1' \(conv2d\)"):
        to_onnx(net, pre)


def test_wrong_mapping_is_caught_by_the_comparison():
    # the check itself can fail: a leaky relu exported with the wrong slope differs
    from layerkit.layers.activations import LeakyReLU

    layer = LeakyReLU(alpha=0.2)
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(2, 6)
    wrong = LeakyReLU(alpha=0.1)
    (got,) = _run(layer_to_onnx(wrong, [(6,)], {}, {}), {"x0": x})
    want, _ = layer.forward({}, x)
    assert np.max(np.abs(got - want)) > TOLERANCE


@pytest.mark.parametrize("loss", sorted(get_registry().names("loss")))
def test_every_loss_gives_the_same_probabilities_in_onnx(loss):
    # predict_proba and the exported 'probabilities' output agree for every registered loss
    from layerkit.export.onnx import OnnxGraph

    cls = get_registry().get("loss", loss)
    instance = cls(**_with_defaults(cls, {}))
    logits = np.random.default_rng(2).normal(0, 3, size=(5, 4)).astype(np.float32)
    if loss == "binary_cross_entropy":  # its outputs are probabilities already
        logits = 1 / (1 + np.exp(-logits))
    if loss == "nll":  # its outputs are log-probabilities
        logits = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    g = OnnxGraph()
    g.op("Identity", [instance.to_onnx(g, "x")], out_name="p")
    graph = onnx.helper.make_graph(g.nodes, loss, [onnx.helper.make_tensor_value_info("x", 1, ["N", 4])],
                                   [onnx.helper.make_tensor_value_info("p", 1, ["N", 4])], initializer=g.initializers)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    proto.ir_version = 8
    (got,) = _run(proto, {"x": logits})
    assert np.max(np.abs(got - instance.probabilities(logits))) <= TOLERANCE
