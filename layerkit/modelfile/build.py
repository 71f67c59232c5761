"""From a model file to a ready model: validate, infer shapes, check size, allocate."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layerkit.errors import Problem, SizeLimitError
from layerkit.modelfile.shapes import Graph, build_graph
from layerkit.nn.network import Network
from layerkit.plugins import registry_or_global
from layerkit.plugins.registry import Registry
from layerkit.modelfile.spec import ModelSpec, load_spec, spec_from_dict



@dataclass(frozen=True)
class SizeLimits:
    """Refuse models that would exhaust memory before allocating anything.

    ``batch_size`` None means the model file's ``training.batch_size``.
    """

    max_params: int = 200_000_000
    max_activation_bytes: int = 8 * 2**30
    batch_size: int | None = None
    #: bytes per value: 4 for training (float32), 8 for gradient checks (float64)
    itemsize: int = 4


def batch_size_of(graph: Graph, limits: SizeLimits) -> int:
    if limits.batch_size is not None:
        return limits.batch_size
    return int(graph.spec.training["batch_size"])


def check_size(graph: Graph, limits: SizeLimits) -> None:
    problems = []
    if graph.param_count > limits.max_params:
        problems.append(Problem(
            f"model has {graph.param_count:,} parameters, over the limit of {limits.max_params:,} "
            f"(raise it with --max-params)", (), graph.spec.source))
    batch = batch_size_of(graph, limits)
    scale = limits.itemsize // 4 or 1
    need = graph.activation_bytes(batch) * scale
    scratch = graph.workspace_bytes(batch, limits.itemsize)
    doing = "training" if limits.itemsize == 4 else "checking gradients"
    if need + scratch > limits.max_activation_bytes:
        extra = f" and {format_bytes(scratch)} of layer scratch (im2col columns)" if scratch else ""
        problems.append(Problem(
            f"{doing} at batch size {batch} needs about {format_bytes(need)} of activations{extra}, "
            f"over the limit of {format_bytes(limits.max_activation_bytes)} (raise it with --max-memory "
            f"or lower the batch size)", (), graph.spec.source))
    if problems:
        raise SizeLimitError(problems=problems)


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """``"512MiB"``, ``"8GB"``, ``"1e9"`` -> bytes; ValueError otherwise."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"{text!r} is not a size like 512MiB, 8GB or 1000000")
    try:
        value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    except OverflowError:
        raise ValueError(f"{text!r} is too large") from None
    if value < 1:
        raise ValueError(f"{text!r} is not a positive size")
    return value


def format_bytes(n: int) -> str:
    # integer arithmetic: a hostile model file can ask for more bytes than a float holds
    if n >= 2**60:
        return "more than 1 EiB"
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            whole, rest = divmod(n * 10 // size, 10)
            return f"{whole:,}.{rest} {unit}"
    return f"{n} B"


def build_graph_from(source: str | Path | dict | ModelSpec, registry: Registry | None = None,
                     limits: SizeLimits | None = None) -> Graph:
    """Everything ``layerkit validate`` checks: schema, parameters, wiring, shapes, size."""
    registry = registry_or_global(registry)
    if isinstance(source, ModelSpec):
        spec = source
    elif isinstance(source, dict):
        spec = spec_from_dict(source, registry=registry)
    else:
        spec = load_spec(source, registry)
    graph = build_graph(spec, registry)
    check_size(graph, limits or SizeLimits())
    return graph


def build_model(source: str | Path | dict | ModelSpec, seed: int | None = None, dtype: type = np.float32,
                registry: Registry | None = None, limits: SizeLimits | None = None) -> Network:
    """Validate, infer shapes, check size limits, then allocate parameters."""
    graph = build_graph_from(source, registry, limits)
    if seed is None:
        seed = int(graph.spec.training["seed"])
    return Network.initialize(graph, seed=seed, dtype=dtype)
