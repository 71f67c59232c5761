"""Optimizers: in-place parameter updates over a fixed list of tensors.

An optimizer is built once per training run with the model's tensors (in a
fixed order, with names and a weight-decay mask) and then called once per
step with the gradients in the same order. Every update writes into
preallocated buffers with ``out=`` or goes through the fused BLAS updates of
``layerkit.parallel.blas`` (one memory pass for ``y = a*x + b*y`` instead of two), so a
step allocates nothing that scales with the parameter count, and float32
tensors stay float32: the scalars are Python floats, which numpy does not let
upcast an array.

L2 weight decay ``(lambda/2)*||w||^2`` is applied here, once, as
``grad += lambda * w``, only to tensors whose ``ParamSpec.decay`` is true.
"""

from __future__ import annotations

import math
from typing import ClassVar, Sequence

import numpy as np

from layerkit import hookimpl
from layerkit.parallel.blas import axpby, axpy
from layerkit.errors import CheckpointError, ModelFileError, Problem

LR_SCHEMA = {"type": "number", "exclusiveMinimum": 0, "description": "learning rate"}


class Optimizer:
    """Base class. Subclasses set ``type``, ``description``, ``params_schema``,
    ``slots`` (names of per-tensor state buffers) and implement :meth:`_update`."""

    type: ClassVar[str] = ""
    description: ClassVar[str] = ""
    params_schema: ClassVar[dict] = {"type": "object", "properties": {"lr": {**LR_SCHEMA, "default": 0.01}},
                                     "additionalProperties": False}
    slots: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Sequence[np.ndarray], names: Sequence[str] | None = None,
                 decay: Sequence[bool] | None = None, weight_decay: float = 0.0, **hyper) -> None:
        self.params = list(params)
        self.names = list(names) if names is not None else [str(i) for i in range(len(self.params))]
        self.decay = list(decay) if decay is not None else [False] * len(self.params)
        if not (len(self.names) == len(self.decay) == len(self.params)):
            raise ValueError("params, names and decay must have the same length")
        self.weight_decay = float(weight_decay)
        defaults = {k: v["default"] for k, v in self.params_schema.get("properties", {}).items()
                    if isinstance(v, dict) and "default" in v}
        self.hyper = {**defaults, **hyper}
        self.lr = float(self.hyper.get("lr", 0.01))
        self.t = 0  # completed steps; Adam's bias correction needs it
        self.state = {slot: [np.zeros_like(p) for p in self.params] for slot in self.slots}
        # scratch space for intermediate products, one per tensor, reused every step
        self._tmp = [np.empty_like(p) for p in self.params]

    def step(self, grads: Sequence[np.ndarray], lr: float | None = None) -> None:
        """Update every tensor in place. ``grads`` may be modified (decay is added to them)."""
        lr = self.lr if lr is None else float(lr)
        self.t += 1
        wd = self.weight_decay
        for i, (w, g, tmp) in enumerate(zip(self.params, grads, self._tmp)):
            if wd and self.decay[i]:
                axpy(wd, w, g)
            self._update(i, w, g, tmp, lr)

    def _update(self, i: int, w: np.ndarray, g: np.ndarray, tmp: np.ndarray, lr: float) -> None:
        raise NotImplementedError

    # -- checkpoints -----------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        out = {"t": np.array(self.t, dtype=np.int64)}
        for slot, buffers in self.state.items():
            for name, buf in zip(self.names, buffers):
                out[f"{slot}/{name}"] = buf
        return out

    def load_state_dict(self, data: dict[str, np.ndarray], source: str = "checkpoint") -> None:
        expected = {k: v for k, v in self.state_dict().items()}
        missing = sorted(set(expected) - set(data))
        if missing:
            raise CheckpointError(f"{source}: optimizer {self.type!r} state is missing {', '.join(missing[:5])}")
        for key, buf in expected.items():
            if key == "t":
                continue
            if data[key].shape != buf.shape:
                raise CheckpointError(f"{source}: optimizer state {key} has shape {data[key].shape}, "
                                      f"expected {buf.shape}")
            buf[...] = data[key]
        self.t = int(data["t"])


class SGD(Optimizer):
    type = "sgd"
    description = ("Stochastic gradient descent with optional (Nesterov) momentum: "
                   "v = momentum*v + g; w -= lr*v (Nesterov: w -= lr*(g + momentum*v)).")
    params_schema = {
        "type": "object",
        "properties": {
            "lr": {**LR_SCHEMA, "default": 0.01},
            "momentum": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.0,
                         "description": "velocity decay; 0 is plain SGD"},
            "nesterov": {"type": "boolean", "default": False,
                         "description": "Nesterov momentum (needs momentum > 0)"},
        },
        "additionalProperties": False,
    }

    def __init__(self, params, names=None, decay=None, weight_decay=0.0, **hyper):
        super().__init__(params, names, decay, weight_decay, **hyper)
        self.momentum = float(self.hyper["momentum"])
        self.nesterov = bool(self.hyper["nesterov"])
        if self.nesterov and self.momentum == 0:
            raise ModelFileError(problems=[Problem("nesterov needs momentum > 0",
                                                   ("training", "optimizer", "nesterov"))])
        # plain SGD keeps no velocity: do not allocate a model-sized buffer for nothing
        if self.momentum:
            self.state["velocity"] = [np.zeros_like(p) for p in self.params]

    def _update(self, i, w, g, tmp, lr):
        if not self.momentum:
            axpy(-lr, g, w)
            return
        v = self.state["velocity"][i]
        axpby(1.0, g, self.momentum, v)
        if self.nesterov:  # w -= lr * (g + momentum * v)
            axpy(-lr, g, w)
            axpy(-lr * self.momentum, v, w)
        else:
            axpy(-lr, v, w)


class Adam(Optimizer):
    type = "adam"
    description = ("Adam (Kingma & Ba): bias-corrected first and second moment estimates; "
                   "w -= lr * m_hat / (sqrt(v_hat) + eps).")
    params_schema = {
        "type": "object",
        "properties": {
            "lr": {**LR_SCHEMA, "default": 0.001},
            "beta1": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.9},
            "beta2": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.999},
            "eps": {"type": "number", "exclusiveMinimum": 0, "default": 1e-8},
        },
        "additionalProperties": False,
    }
    slots = ("m", "v")

    def __init__(self, params, names=None, decay=None, weight_decay=0.0, **hyper):
        super().__init__(params, names, decay, weight_decay, **hyper)
        self.beta1 = float(self.hyper["beta1"])
        self.beta2 = float(self.hyper["beta2"])
        self.eps = float(self.hyper["eps"])

    def _update(self, i, w, g, tmp, lr):
        m, v = self.state["m"][i], self.state["v"][i]
        b1, b2 = self.beta1, self.beta2
        axpby(1.0 - b1, g, b1, m)
        np.multiply(g, g, out=tmp)
        axpby(1.0 - b2, tmp, b2, v)
        bc1 = 1.0 - b1 ** self.t
        bc2 = 1.0 - b2 ** self.t
        # m_hat / (sqrt(v_hat) + eps) computed without materialising m_hat or v_hat
        np.sqrt(v, out=tmp)
        tmp *= 1.0 / math.sqrt(bc2)
        tmp += self.eps
        np.divide(m, tmp, out=tmp)
        axpy(-lr / bc1, tmp, w)


class RMSprop(Optimizer):
    type = "rmsprop"
    description = ("RMSprop: divide the gradient by a running RMS; "
                   "s = rho*s + (1-rho)*g^2; w -= lr*g/(sqrt(s)+eps), optionally through momentum.")
    params_schema = {
        "type": "object",
        "properties": {
            "lr": {**LR_SCHEMA, "default": 0.001},
            "rho": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.9,
                    "description": "decay of the squared-gradient average"},
            "eps": {"type": "number", "exclusiveMinimum": 0, "default": 1e-8},
            "momentum": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.0},
        },
        "additionalProperties": False,
    }
    slots = ("square_avg",)

    def __init__(self, params, names=None, decay=None, weight_decay=0.0, **hyper):
        super().__init__(params, names, decay, weight_decay, **hyper)
        self.rho = float(self.hyper["rho"])
        self.eps = float(self.hyper["eps"])
        self.momentum = float(self.hyper["momentum"])
        if self.momentum:
            self.state["velocity"] = [np.zeros_like(p) for p in self.params]

    def _update(self, i, w, g, tmp, lr):
        s = self.state["square_avg"][i]
        np.multiply(g, g, out=tmp)
        axpby(1.0 - self.rho, tmp, self.rho, s)
        np.sqrt(s, out=tmp)
        tmp += self.eps
        np.divide(g, tmp, out=tmp)
        if self.momentum:
            v = self.state["velocity"][i]
            axpby(1.0, tmp, self.momentum, v)
            axpy(-lr, v, w)
        else:
            axpy(-lr, tmp, w)


@hookimpl
def layerkit_register_optimizers(register):
    register(SGD)
    register(Adam)
    register(RMSprop)
