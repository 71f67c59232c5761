"""ONNX export: a trained model, its preprocessing and its class probabilities as one graph.

Each layer maps itself: a layer class implements
``to_onnx(self, g, x, input_shape, params, state) -> str``, where ``g`` is the
:class:`OnnxGraph` being built, ``x`` the name of its input tensor (a list of
names for layers with several inputs), ``input_shape`` its per-sample input
shape (a list of shapes for several inputs), ``params``/``state`` its numpy
tensors; it adds nodes with ``g.op(...)`` and constants with ``g.const(...)``
and returns the name of its output. Plugins do the same for their layers; the
layer modules never import :mod:`onnx` (``g`` does). A layer without a mapping
stops the export with a message naming it.

The graph: input ``input`` (``N x C x H x W`` raw values: ``uint8`` when the
model was trained on integer data, ``float32`` otherwise), the preprocessing
(cast, divide by 255, standardize) exactly as :meth:`Preprocessing.apply`
computes it, the layers in inference mode (dropout removed, batch norm with
its running statistics), and two outputs: ``logits`` (the network's output)
and ``probabilities`` (what :meth:`layerkit.Model.predict_proba` returns:
softmax for ``softmax_cross_entropy``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from layerkit.errors import LayerkitError, install_hint
from layerkit.nn.layer import input_kinds

if TYPE_CHECKING:
    from onnx import ModelProto

    from layerkit.data.preprocess import Preprocessing
    from layerkit.nn.layer import Layer
    from layerkit.nn.losses import Loss
    from layerkit.nn.network import Network

OPSET = 17
#: runtimes released since 2022 read IR version 8 (onnxruntime >= 1.10)
IR_VERSION = 8


class ExportError(LayerkitError):
    """The model cannot be exported (a layer without an ONNX mapping, onnx not installed)."""


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ExportError(f"ONNX export needs the onnx package: {install_hint('onnx')}") from None
    return onnx


class OnnxGraph:
    """The graph being built: unique names, nodes in topological order, constants."""

    def __init__(self, opset: int = OPSET) -> None:
        self.onnx = _onnx()
        self.opset = opset
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._used: set[str] = set()
        self.scope = "model"  # prefix for names: the layer being mapped

    def name(self, hint: str) -> str:
        """A tensor or node name not used before, built from ``hint`` under the current scope."""
        base = f"{self.scope}/{hint}" if self.scope else hint
        name, n = base, 1
        while name in self._used:
            n += 1
            name = f"{base}_{n}"
        self._used.add(name)
        return name

    def const(self, value: Any, hint: str = "const", dtype: type = np.float32) -> str:
        """A constant tensor (float32 unless ``dtype`` says otherwise)."""
        array: np.ndarray = np.asarray(value, dtype=dtype)
        name = self.name(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None, outputs: int = 1,
           out_name: str | None = None, **attrs: Any) -> Any:
        """Add one node; its output name (a list of names when ``outputs`` > 1). ``out_name`` fixes
        the name of a single output (the graph's outputs)."""
        if out_name is not None:
            self._used.add(out_name)
            names = [out_name]
        else:
            names = [self.name(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), names, name=self.name(op_type),
                                                     **attrs))
        return names[0] if outputs == 1 else names


def _input_dtype(pre: Preprocessing | None) -> str:
    return "uint8" if pre is not None and np.dtype(pre.raw_dtype).kind in "iub" else "float32"


def _preprocess(g: OnnxGraph, x: str, pre: Preprocessing | None) -> str:
    """Cast, scale and standardize exactly as ``Preprocessing.transform`` does, in float32."""
    if pre is None:
        return x
    g.scope = "preprocessing"
    if _input_dtype(pre) != "float32":
        x = g.op("Cast", [x], "float", to=g.onnx.TensorProto.FLOAT)
        if pre.normalize in ("unit", "standardize"):
            from layerkit.data.preprocess import INTEGER_SCALE
            x = g.op("Mul", [x, g.const(np.float32(INTEGER_SCALE), "scale")], "scaled")
    if pre.normalize == "standardize":
        mean, inv = pre.statistics()
        x = g.op("Sub", [x, g.const(mean, "mean")], "centred")
        x = g.op("Mul", [x, g.const(inv, "inv_std")], "standardized")
    return x


def missing_mappings(model: Network) -> list[str]:
    """The model's layers whose class has no ``to_onnx``, as ``'name' (type)``."""
    from layerkit.nn.layer import overrides

    return [node.spec.label for node in model.nodes if not overrides(node.layer, "to_onnx")]


def to_onnx(model: Network, preprocessing: Preprocessing | None = None, loss: Loss | None = None, *,
            name: str | None = None, opset: int = OPSET) -> ModelProto:
    """The ``onnx.ModelProto`` of a built :class:`layerkit.nn.network.Network` (float32 weights)."""
    onnx = _onnx()
    missing = missing_mappings(model)
    if missing:
        raise ExportError(f"cannot export to ONNX: no ONNX mapping for {', '.join(missing)}; the layer's "
                          f"plugin must implement to_onnx (see docs/export.md)")
    model = model if model.dtype == np.float32 else model.astype(np.float32)
    g = OnnxGraph(opset)
    g.scope = ""
    graph_input = g.name("input")
    x = graph_input if model.graph.input_dtype == "int64" else _preprocess(g, graph_input, preprocessing)
    values: dict[str, str] = {"input": x}
    shapes: dict[str, Any] = {"input": tuple(model.graph.input_shape)}
    for node in model.nodes:
        g.scope = node.name
        inputs = [values[r] for r in node.inputs]
        in_shapes = [shapes[r] for r in node.inputs]
        single = node.layer.arity == 1
        try:
            out = node.layer.to_onnx(g, inputs[0] if single else inputs, in_shapes[0] if single else in_shapes,
                                     model.params[node.name], model.state[node.name])
        except ExportError:
            raise
        except Exception as exc:  # a plugin's mapping that breaks: name it rather than a traceback
            raise ExportError(f"cannot export layer {node.spec.label} to ONNX: {type(exc).__name__}: {exc}") from None
        values[node.name], shapes[node.name] = out, tuple(node.output_shape)
    g.scope = ""
    g.op("Identity", [values[model.graph.output.name]], out_name="logits")
    g.scope = "probabilities"
    probs = loss.to_onnx(g, "logits") if loss is not None else "logits"
    g.op("Identity", [probs], out_name="probabilities")
    in_type = onnx.TensorProto.UINT8 if _input_dtype(preprocessing) == "uint8" else onnx.TensorProto.FLOAT
    if model.graph.input_dtype == "int64":  # token ids go in as they are
        in_type = onnx.TensorProto.INT64
    out_shape = ["N", *model.graph.output.output_shape]
    graph = onnx.helper.make_graph(
        g.nodes, name or model.graph.spec.name,
        [onnx.helper.make_tensor_value_info(graph_input, in_type, ["N", *model.graph.input_shape])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, out_shape),
         onnx.helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, out_shape)],
        initializer=g.initializers)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                   producer_name="layerkit")
    proto.ir_version = IR_VERSION
    if preprocessing is not None and preprocessing.class_names:
        onnx.helper.set_model_props(proto, {"class_names": ",".join(preprocessing.class_names),
                                            "normalize": preprocessing.normalize})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def save_onnx(proto: ModelProto, path: str | Path) -> Path:
    """Write ``proto`` to ``path`` atomically; returns the path."""
    from layerkit.fileio import write_bytes_atomic

    path = Path(path)
    write_bytes_atomic(path, proto.SerializeToString())
    return path


def layer_to_onnx(layer: Layer, input_shapes: Sequence[Sequence[int]], params: dict, state: dict, *,
                  opset: int = OPSET) -> ModelProto:
    """A graph of one layer alone: float32 inputs ``x0, x1, ...`` (batch first) and output ``y``.
    What the export tests run for every registered layer and example (plugin authors can too)."""
    onnx = _onnx()
    g = OnnxGraph(opset)
    names = [f"x{i}" for i in range(len(input_shapes))]
    g._used.update(names)
    g.scope = layer.type
    single = layer.arity == 1
    out = layer.to_onnx(g, names[0] if single else names, tuple(input_shapes[0]) if single
                        else [tuple(s) for s in input_shapes], params, state)
    g.scope = ""
    g.op("Identity", [out], out_name="y")
    out_shape = layer.output_shape(tuple(input_shapes[0]) if single else [tuple(s) for s in input_shapes])
    graph = onnx.helper.make_graph(
        g.nodes, layer.type,
        [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.INT64 if k == "tokens" else onnx.TensorProto.FLOAT,
                                            ["N", *s])
         for n, s, k in zip(names, input_shapes, input_kinds(layer, len(names)), strict=True)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", *out_shape])],
        initializer=g.initializers)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                   producer_name="layerkit")
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto, full_check=True)
    return proto


def input_description(model: Network, preprocessing: Preprocessing | None) -> str:
    """``uint8 N x 1 x 28 x 28``: what the exported graph takes."""
    return " x ".join(["N", *map(str, model.graph.input_shape)]).join([f"{_input_dtype(preprocessing)} ", ""])
