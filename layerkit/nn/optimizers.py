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
``grad += lambda * w``, only to tensors whose ``ParamSpec.decay`` is true;
an optimizer with ``decoupled_decay`` (AdamW) shrinks those weights in its
own update instead. Gradient clipping (``training.gradient_clipping``) runs
first, on the loss gradients alone, as ``torch.nn.utils.clip_grad_*_`` before
``optimizer.step()``.
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
    #: weight decay is applied by ``_update`` as a shrink of the weights (AdamW), not as an L2 gradient
    decoupled_decay: ClassVar[bool] = False

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
        self.clip_norm: float | None = None
        self.clip_value: float | None = None

    def set_clipping(self, max_norm: float | None = None, value: float | None = None) -> None:
        """Clip the gradients before every step: each element to [-value, value], then all
        of them together to a global L2 norm of at most ``max_norm`` (PyTorch's
        ``clip_grad_value_`` and ``clip_grad_norm_``: scale by max_norm / (norm + 1e-6) when
        that is below 1)."""
        self.clip_norm = None if max_norm is None else float(max_norm)
        self.clip_value = None if value is None else float(value)

    def _clip(self, grads: Sequence[np.ndarray]) -> None:
        if self.clip_value is not None:
            for g in grads:
                np.clip(g, -self.clip_value, self.clip_value, out=g)
        if self.clip_norm is not None:
            # per-tensor dot products (BLAS) summed in a Python float: one pass, nothing allocated
            total = math.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in grads))
            coef = self.clip_norm / (total + 1e-6)
            if coef < 1.0:
                for g in grads:
                    g *= coef

    def step(self, grads: Sequence[np.ndarray], lr: float | None = None) -> None:
        """Update every tensor in place. ``grads`` may be modified (decay is added to them)."""
        lr = self.lr if lr is None else float(lr)
        self.t += 1
        if self.clip_norm is not None or self.clip_value is not None:
            self._clip(grads)
        wd = 0.0 if self.decoupled_decay else self.weight_decay
        for i, (w, g, tmp) in enumerate(zip(self.params, grads, self._tmp, strict=True)):
            if wd and self.decay[i]:
                axpy(wd, w, g)
            self._update(i, w, g, tmp, lr)

    def _update(self, i: int, w: np.ndarray, g: np.ndarray, tmp: np.ndarray, lr: float) -> None:
        raise NotImplementedError

    # -- checkpoints -----------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        out = {"t": np.array(self.t, dtype=np.int64)}
        for slot, buffers in self.state.items():
            for name, buf in zip(self.names, buffers, strict=True):
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
    """Stochastic gradient descent, with optional (Nesterov) momentum (``sgd``)."""

    type = "sgd"
    description = ("Stochastic gradient descent with optional (Nesterov) momentum and dampening, as PyTorch: "
                   "v = g on the first step, then v = momentum*v + (1 - dampening)*g; w -= lr*v "
                   "(Nesterov: w -= lr*(g + momentum*v)). training.weight_decay adds the L2 term to the gradient, "
                   "on weights only (PyTorch: every tensor of the group).")
    params_schema = {
        "type": "object",
        "properties": {
            "lr": {**LR_SCHEMA, "default": 0.01},
            "momentum": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.0,
                         "description": "velocity decay; 0 is plain SGD"},
            "dampening": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.0,
                          "description": "scale the new gradient by (1 - dampening) in the velocity (after "
                                         "the first step)"},
            "nesterov": {"type": "boolean", "default": False,
                         "description": "Nesterov momentum (needs momentum > 0 and dampening 0)"},
        },
        "additionalProperties": False,
    }

    def __init__(self, params, names=None, decay=None, weight_decay=0.0, **hyper):
        super().__init__(params, names, decay, weight_decay, **hyper)
        self.momentum = float(self.hyper["momentum"])
        self.dampening = float(self.hyper.get("dampening", 0.0))
        self.nesterov = bool(self.hyper["nesterov"])
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ModelFileError(problems=[Problem("nesterov needs momentum > 0 and dampening 0 (as PyTorch)",
                                                   ("training", "optimizer", "nesterov"))])
        # plain SGD keeps no velocity: do not allocate a model-sized buffer for nothing
        if self.momentum:
            self.state["velocity"] = [np.zeros_like(p) for p in self.params]

    def _update(self, i, w, g, tmp, lr):
        if not self.momentum:
            axpy(-lr, g, w)
            return
        v = self.state["velocity"][i]
        # the velocity starts at zero, so the first step's v = g whatever the dampening (PyTorch's
        # buffer starts as a copy of g)
        axpby(1.0 if self.t == 1 else 1.0 - self.dampening, g, self.momentum, v)
        if self.nesterov:  # w -= lr * (g + momentum * v)
            axpy(-lr, g, w)
            axpy(-lr * self.momentum, v, w)
        else:
            axpy(-lr, v, w)


class Adam(Optimizer):
    """Adam (``adam``): a step scaled per weight by running averages of the gradient and its square."""

    type = "adam"
    description = ("Adam (Kingma & Ba): bias-corrected first and second moment estimates; "
                   "w -= lr * m_hat / (sqrt(v_hat) + eps), as PyTorch's Adam (beta1, beta2 are its betas; no "
                   "amsgrad). training.weight_decay is the L2 term added to the gradient, on weights only "
                   "(PyTorch: every tensor of the group).")
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
    """RMSprop (``rmsprop``): the gradient divided by a running root mean square of its recent values."""

    type = "rmsprop"
    description = ("RMSprop, as PyTorch's (rho is its alpha; no centered variant): divide the gradient by a "
                   "running RMS; "
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


class AdamW(Adam):
    """Adam with decoupled weight decay (``adamw``): the weights shrink in the update, apart from the gradient."""

    type = "adamw"
    description = ("AdamW (Loshchilov & Hutter): Adam with decoupled weight decay, w -= lr * weight_decay * w "
                   "before the Adam step, as PyTorch's AdamW. The decay is training.weight_decay (default 0; "
                   "PyTorch's AdamW defaults to 0.01) and applies to the tensors layerkit decays (weights, not "
                   "biases or normalisation scales; PyTorch decays every tensor of the group).")
    decoupled_decay = True

    def _update(self, i, w, g, tmp, lr):
        if self.weight_decay and self.decay[i]:
            w *= 1.0 - lr * self.weight_decay
        super()._update(i, w, g, tmp, lr)


class Adagrad(Optimizer):
    """Adagrad (``adagrad``): each weight's step shrinks with the sum of its squared gradients so far."""

    type = "adagrad"
    description = ("Adagrad (Duchi et al.), as PyTorch: s += g^2; w -= lr / (1 + (t - 1) * lr_decay) * g / "
                   "(sqrt(s) + eps).")
    params_schema = {
        "type": "object",
        "properties": {
            "lr": {**LR_SCHEMA, "default": 0.01},
            "lr_decay": {"type": "number", "minimum": 0, "default": 0.0,
                         "description": "the step size is lr / (1 + (step - 1) * lr_decay)"},
            "initial_accumulator_value": {"type": "number", "minimum": 0, "default": 0.0,
                                          "description": "starting value of the squared-gradient sums"},
            "eps": {"type": "number", "exclusiveMinimum": 0, "default": 1e-10},
        },
        "additionalProperties": False,
    }
    slots = ("sum",)

    def __init__(self, params, names=None, decay=None, weight_decay=0.0, **hyper):
        super().__init__(params, names, decay, weight_decay, **hyper)
        self.lr_decay = float(self.hyper["lr_decay"])
        self.eps = float(self.hyper["eps"])
        for s in self.state["sum"]:
            s.fill(float(self.hyper["initial_accumulator_value"]))

    def _update(self, i, w, g, tmp, lr):
        s = self.state["sum"][i]
        np.multiply(g, g, out=tmp)
        s += tmp
        np.sqrt(s, out=tmp)
        tmp += self.eps
        np.divide(g, tmp, out=tmp)
        axpy(-lr / (1.0 + (self.t - 1) * self.lr_decay), tmp, w)


@hookimpl
def layerkit_register_optimizers(register):
    for cls in (SGD, Adam, AdamW, RMSprop, Adagrad):
        register(cls)
