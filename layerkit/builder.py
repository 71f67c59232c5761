"""From a model file to a ready model: validate, infer shapes, check size, allocate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import Problem, SizeLimitError
from .graph import Graph, build_graph
from .model import Model
from .plugins import get_registry
from .registry import Registry
from .spec import ModelSpec, load_spec, spec_from_dict


@dataclass(frozen=True)
class SizeLimits:
    """Refuse models that would exhaust memory before allocating anything."""

    max_params: int = 200_000_000
    max_activation_bytes: int = 8 * 2**30
    batch_size: int = 64


def check_size(graph: Graph, limits: SizeLimits) -> None:
    problems = []
    if graph.param_count > limits.max_params:
        problems.append(Problem(
            f"model has {graph.param_count:,} parameters, over the limit of {limits.max_params:,} "
            f"(raise it with --max-params)", (), graph.spec.source))
    need = graph.activation_bytes(limits.batch_size)
    if need > limits.max_activation_bytes:
        problems.append(Problem(
            f"training at batch size {limits.batch_size} needs about {need / 2**30:.1f} GiB of activations, "
            f"over the limit of {limits.max_activation_bytes / 2**30:.1f} GiB (raise it with --max-memory "
            f"or lower the batch size)", (), graph.spec.source))
    if problems:
        raise SizeLimitError(problems=problems)


def build_graph_from(source: str | Path | dict | ModelSpec, registry: Registry | None = None,
                     limits: SizeLimits | None = None) -> Graph:
    registry = registry or get_registry()
    if isinstance(source, ModelSpec):
        spec = source
    elif isinstance(source, dict):
        spec = spec_from_dict(source, registry=registry)
    else:
        spec = load_spec(source, registry)
    graph = build_graph(spec, registry)
    if limits is None:
        limits = SizeLimits(batch_size=int(spec.training.get("batch_size", 64)))
    check_size(graph, limits)
    return graph


def build_model(source: str | Path | dict | ModelSpec, seed: int | None = None, dtype=np.float32,
                registry: Registry | None = None, limits: SizeLimits | None = None) -> Model:
    """Validate, infer shapes, check size limits, then allocate parameters."""
    graph = build_graph_from(source, registry, limits)
    if seed is None:
        seed = int(graph.spec.training.get("seed", 0))
    return Model.initialize(graph, seed=seed, dtype=dtype)
