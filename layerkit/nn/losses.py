"""Losses: a batch of model outputs and targets -> one number and its gradient.

``forward`` returns the batch-mean loss as a Python float and a cache;
``backward(cache)`` returns d(mean loss)/d(output) in the output's dtype.
Targets are either integer class ids of shape (N,) or rows of shape (N, K).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from layerkit import hookimpl
from layerkit.errors import DataError


class Loss:
    type: ClassVar[str] = ""
    description: ClassVar[str] = ""
    params_schema: ClassVar[dict] = {"type": "object", "properties": {}, "additionalProperties": False}
    #: the loss is the batch mean of a per-sample term (so shards of a batch can be
    #: computed apart and their gradients added, see ``layerkit.parallel.processes``)
    per_sample: ClassVar[bool] = False

    def __init__(self, **config: Any) -> None:
        self.config = dict(config)
        for key, value in config.items():
            setattr(self, key, value)

    def forward(self, output: np.ndarray, target: np.ndarray) -> tuple[float, Any]:
        raise NotImplementedError

    def backward(self, cache: Any) -> np.ndarray:
        raise NotImplementedError

    def predict(self, output: np.ndarray) -> np.ndarray:
        """Predicted class ids: the largest output per sample."""
        return np.asarray(output).argmax(axis=1)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({args})"


def _check_targets(output: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Validate targets against an (N, K) output; return them as an array."""
    target = np.asarray(target)
    if output.ndim != 2:
        raise DataError(f"the loss needs a flat (N, classes) output, got shape {output.shape}")
    n, k = output.shape
    if target.ndim == 1:
        if not np.issubdtype(target.dtype, np.integer):
            raise DataError(f"1-d targets must be integer class ids, got dtype {target.dtype}")
        if target.shape[0] != n:
            raise DataError(f"{target.shape[0]} targets for a batch of {n}")
        if n and (target.min() < 0 or target.max() >= k):
            bad = target[(target < 0) | (target >= k)][0]
            raise DataError(f"target class {int(bad)} is out of range for {k} outputs")
    elif target.shape != output.shape:
        raise DataError(f"targets of shape {target.shape} do not match outputs of shape {output.shape}")
    return target


class SoftmaxCrossEntropy(Loss):
    type = "softmax_cross_entropy"
    per_sample = True
    description = ("Softmax followed by cross-entropy, fused and computed with log-sum-exp so large logits "
                   "cannot overflow. Targets: class ids (N,) or probability rows (N, K). Gradient (p - y) / N.")
    params_schema = {
        "type": "object",
        "properties": {
            "label_smoothing": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0,
                                "description": "mix the targets with the uniform distribution: "
                                               "y = (1 - s) * y + s / classes"},
        },
        "additionalProperties": False,
    }

    def forward(self, output, target):
        target = _check_targets(output, target)
        n, k = output.shape
        shifted = output - output.max(axis=1, keepdims=True)
        prob = np.exp(shifted)
        total = prob.sum(axis=1, keepdims=True)
        log_prob = shifted - np.log(total)
        prob /= total
        smooth = float(getattr(self, "label_smoothing", 0.0))
        if target.ndim == 1:
            picked = log_prob[np.arange(n), target]
            loss = -picked.mean()
            if smooth:
                loss = (1 - smooth) * loss - smooth * log_prob.mean(axis=1).mean()
        else:
            y = target.astype(output.dtype, copy=False)
            if smooth:
                y = y * (1 - smooth) + smooth / k
            loss = -np.einsum("nk,nk->", y, log_prob) / n
        return float(loss), (prob, target, smooth)

    def backward(self, cache):
        prob, target, smooth = cache
        n, k = prob.shape
        grad = prob.copy()
        if target.ndim == 1:
            if smooth:
                grad -= smooth / k
            grad[np.arange(n), target] -= 1 - smooth
        else:
            y = target.astype(prob.dtype, copy=False)
            if smooth:
                y = y * (1 - smooth) + smooth / k
            grad -= y
        grad *= 1.0 / n
        return grad


class MeanSquaredError(Loss):
    type = "mse"
    per_sample = True
    description = ("Squared error summed over the outputs of a sample and averaged over the batch: "
                   "mean_n sum_k (output - target)^2. Integer class ids are one-hot encoded.")
    params_schema = {"type": "object", "properties": {}, "additionalProperties": False}

    def forward(self, output, target):
        target = _check_targets(output, target)
        n, k = output.shape
        if target.ndim == 1:
            diff = output.copy()
            diff[np.arange(n), target] -= 1
        else:
            diff = output - target.astype(output.dtype, copy=False)
        loss = np.einsum("nk,nk->", diff, diff) / n
        return float(loss), diff

    def backward(self, cache):
        diff = cache
        return diff * (2.0 / diff.shape[0])


@hookimpl
def layerkit_register_losses(register):
    register(SoftmaxCrossEntropy)
    register(MeanSquaredError)
