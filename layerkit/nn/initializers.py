"""Initializers named by :class:`layerkit.nn.layer.ParamSpec.init` (or a constant: ``init=0.25``)."""

from __future__ import annotations

import math

import numpy as np

from layerkit.nn.layer import ParamSpec


def _fans(spec: ParamSpec) -> tuple[int, int]:
    size = int(np.prod(spec.shape)) if spec.shape else 1
    fan_in = spec.fan_in or (spec.shape[0] if spec.shape else 1)
    fan_out = spec.fan_out or max(size // max(fan_in, 1), 1)
    return fan_in, fan_out


def initialize(spec: ParamSpec, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    fan_in, fan_out = _fans(spec)
    shape = tuple(spec.shape)
    name = spec.init
    if isinstance(name, (int, float)) and not isinstance(name, bool):
        if not math.isfinite(name):
            raise ValueError(f"initial value {name!r} is not a finite number")
        value = np.full(shape, float(name))
    elif name == "zeros":
        value = np.zeros(shape)
    elif name == "ones":
        value = np.ones(shape)
    elif name == "he_normal":
        value = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
    elif name == "he_uniform":
        limit = math.sqrt(6.0 / fan_in)
        value = rng.uniform(-limit, limit, shape)
    elif name == "glorot_uniform":
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        value = rng.uniform(-limit, limit, shape)
    elif name == "glorot_normal":
        value = rng.standard_normal(shape) * math.sqrt(2.0 / (fan_in + fan_out))
    elif name == "lecun_normal":
        value = rng.standard_normal(shape) * math.sqrt(1.0 / fan_in)
    else:
        raise ValueError(f"unknown initializer {name!r}")
    if spec.zero_rows:
        value[list(spec.zero_rows)] = 0.0
    return np.ascontiguousarray(value, dtype=dtype)


def init_std(spec: ParamSpec) -> float | None:
    """The standard deviation of the values ``spec.init`` draws, or None for a constant initializer."""
    fan_in, fan_out = _fans(spec)
    return {
        "he_normal": math.sqrt(2.0 / fan_in),
        "he_uniform": math.sqrt(2.0 / fan_in),  # limit sqrt(6 / fan_in) over sqrt(3)
        "glorot_uniform": math.sqrt(2.0 / (fan_in + fan_out)),
        "glorot_normal": math.sqrt(2.0 / (fan_in + fan_out)),
        "lecun_normal": math.sqrt(1.0 / fan_in),
    }.get(spec.init) if isinstance(spec.init, str) else None


INITIALIZERS = ("zeros", "ones", "he_normal", "he_uniform", "glorot_uniform", "glorot_normal", "lecun_normal")


def is_valid_init(init) -> bool:
    """Whether ``init`` is a known initializer name or a finite constant."""
    if isinstance(init, bool):
        return False
    if isinstance(init, (int, float)):
        return math.isfinite(init)
    return init in INITIALIZERS
