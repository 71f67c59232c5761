"""Element-wise losses: mse, l1, huber, smooth_l1, binary cross-entropy (on probabilities and on logits).

Each compares the output with a target of the same shape, element by element, and reduces:
``mean`` over every element (PyTorch's default), ``sum``, or ``batchmean`` (summed over a
sample's elements, averaged over the batch: the textbook convention of the quadratic and
cross-entropy costs, and mse's default here). Integer class ids (N,) against an (N, K) output
are one-hot encoded; against an (N, 1) output they are the 0/1 target itself. Any output shape
works with a target of that shape (an autoencoder's reconstruction).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from layerkit import hookimpl
from layerkit.errors import DataError
from layerkit.nn.layer import Coupling
from layerkit.nn.losses import Loss, reduction_schema

LOG_FLOOR = -100.0  # PyTorch's BCELoss clamps each log at -100, so a saturated output costs 100, not inf


def _dense_targets(output: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Targets as an array shaped like the output, in the output's dtype."""
    target = np.asarray(target)
    if target.ndim == 1 and output.ndim == 2 and target.shape[0] == output.shape[0] \
            and np.issubdtype(target.dtype, np.integer):
        n, k = output.shape
        if k == 1:
            if n and (target.min() < 0 or target.max() > 1):
                raise DataError(f"class ids for a single output must be 0 or 1, got {int(target.max())}")
            return target.reshape(n, 1).astype(output.dtype)
        if n and (target.min() < 0 or target.max() >= k):
            bad = target[(target < 0) | (target >= k)][0]
            raise DataError(f"target class {int(bad)} is out of range for {k} outputs")
        onehot = np.zeros(output.shape, dtype=output.dtype)
        onehot[np.arange(n), target] = 1
        return onehot
    if target.ndim == 1 and output.ndim == 2:
        if target.shape[0] != output.shape[0]:
            raise DataError(f"{target.shape[0]} targets for a batch of {output.shape[0]}")
        raise DataError(f"1-d targets must be integer class ids, got dtype {target.dtype}")
    if target.shape != output.shape:
        raise DataError(f"targets of shape {target.shape} do not match outputs of shape {output.shape}")
    return target.astype(output.dtype, copy=False)


class _Elementwise(Loss):
    """Subclasses implement ``_terms(output, target) -> (values, d values / d output)``."""

    default_reduction: ClassVar[str] = "mean"
    reduction: str

    def _terms(self, output: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def __init__(self, **config):
        super().__init__(**config)
        self.sample_coupling = Coupling.NONE if self.reduction != "sum" else Coupling.OTHER

    def output_problem(self, output_shape: tuple[int, ...]) -> str | None:
        """Any shape (the target matches it), except that per-output weights need a flat output of as many."""
        for key in ("weight", "pos_weight"):
            w = getattr(self, key, None)
            if w is not None and (len(output_shape) != 1 or len(w) != output_shape[0]):
                return f"has {len(w)} {key} entries, one per output: it needs a flat output ({len(w)},)"
        return None

    def _weight(self, output):
        """The per-output weight row (PyTorch's `weight`, here one number per output of a flat output)."""
        w = getattr(self, "weight", None)
        if w is None:
            return None
        if output.ndim != 2 or len(w) != output.shape[1]:
            raise DataError(f"weight has {len(w)} entries for outputs of shape {output.shape[1:]}")
        return np.asarray(w, dtype=output.dtype)

    def forward(self, output, target):
        t = _dense_targets(output, target)
        values, grad = self._terms(output, t)
        w = self._weight(output)
        if w is not None:
            values, grad = values * w, grad * w
        n = max(output.shape[0], 1)
        div = {"mean": max(output.size, 1), "sum": 1, "batchmean": n}[self.reduction]
        return float(values.sum(dtype=np.float64) / div), (grad, div)

    def backward(self, cache):
        grad, div = cache
        return grad * (1.0 / div)

    def predict(self, output):
        """Class ids: the largest output, or for a single output whether it is past the midpoint."""
        output = np.asarray(output)
        if output.ndim == 2 and output.shape[1] == 1:
            return (output[:, 0] > self.threshold).astype(np.int64)
        return output.argmax(axis=1)

    def correct(self, output, target):
        """Class ids: as every loss. A target shaped like the output (a reconstruction, or several
        0/1 labels per sample) counts, per sample, the fraction of its elements on the same side of
        the threshold as the target is of 0.5: the pixel accuracy of a binarised image."""
        target = np.asarray(target)
        if target.ndim == 1 and np.issubdtype(target.dtype, np.integer):
            return float(np.count_nonzero(self.predict(output) == target))
        agree = (np.asarray(output) > self.threshold) == (target > 0.5)
        return float(agree.reshape(len(agree), -1).mean(axis=1).sum())

    threshold: ClassVar[float] = 0.5


def _elementwise_schema(default: str, **extra) -> dict:
    return {"type": "object", "properties": {**extra, "reduction": reduction_schema(default, batchmean=True)},
            "additionalProperties": False}


WEIGHT_SCHEMA = {"type": ["array", "null"], "items": {"type": "number", "minimum": 0}, "minItems": 1,
                 "default": None, "description": "one weight per output of an (N, K) output; null: all 1"}


class MeanSquaredError(_Elementwise):
    """Squared error per element (``mse``), by default summed over a sample and averaged over the batch."""

    type = "mse"
    description = ("Squared error (output - target)^2. Its default reduction is batchmean, summed over a "
                   "sample's outputs and averaged over the batch (the quadratic cost of Nielsen's book, and "
                   "layerkit's from the start); PyTorch's MSELoss is reduction: mean (over every element).")
    params_schema = _elementwise_schema("batchmean")

    def _terms(self, output, t):
        diff = output - t
        return diff * diff, 2 * diff


class L1(_Elementwise):
    """Absolute error per element (``l1``)."""

    type = "l1"
    description = "Absolute error |output - target| (PyTorch's L1Loss); gradient sign(output - target), 0 at 0."
    params_schema = _elementwise_schema("mean")

    def _terms(self, output, t):
        diff = output - t
        return np.abs(diff), np.sign(diff)


class Huber(_Elementwise):
    """Squared error for small differences, absolute error beyond ``delta`` (``huber``): robust to outliers."""

    delta: float
    type = "huber"
    description = ("Huber loss (PyTorch's HuberLoss): 0.5 d^2 for |d| <= delta, delta (|d| - 0.5 delta) beyond, "
                   "d = output - target. Equals delta * smooth_l1 with beta = delta.")
    params_schema = _elementwise_schema(
        "mean", delta={"type": "number", "exclusiveMinimum": 0, "default": 1.0,
                       "description": "where the quadratic part turns linear"})

    def _terms(self, output, t):
        d = output - t
        delta = float(self.delta)
        small = np.abs(d) <= delta
        values = np.where(small, 0.5 * d * d, delta * (np.abs(d) - 0.5 * delta))
        return values, np.where(small, d, delta * np.sign(d))


class SmoothL1(_Elementwise):
    """Huber's shape scaled by ``1 / beta`` (``smooth_l1``): quadratic below ``beta``, absolute error beyond."""

    beta: float
    type = "smooth_l1"
    description = ("Smooth L1 loss (PyTorch's SmoothL1Loss): 0.5 d^2 / beta for |d| < beta, |d| - 0.5 beta "
                   "beyond; beta = 0 is l1.")
    params_schema = _elementwise_schema(
        "mean", beta={"type": "number", "minimum": 0, "default": 1.0,
                      "description": "where the quadratic part turns linear"})

    def _terms(self, output, t):
        d = output - t
        beta = float(self.beta)
        if beta == 0:
            return np.abs(d), np.sign(d)
        small = np.abs(d) < beta
        values = np.where(small, 0.5 * d * d / beta, np.abs(d) - 0.5 * beta)
        return values, np.where(small, d / beta, np.sign(d))


class BinaryCrossEntropy(_Elementwise):
    """Binary cross-entropy of probabilities, such as a sigmoid's outputs (``binary_cross_entropy``)."""

    type = "binary_cross_entropy"
    description = ("Binary cross-entropy of probabilities (a sigmoid output) against targets in [0, 1] "
                   "(PyTorch's BCELoss): -(t log p + (1 - t) log(1 - p)), each log clamped at -100 and the "
                   "gradient's denominator p (1 - p) at 1e-12, as PyTorch. For stability and speed prefer "
                   "binary_cross_entropy_with_logits on the pre-sigmoid output. Reduction batchmean is the "
                   "cross-entropy cost of Nielsen's book.")
    params_schema = _elementwise_schema("mean", weight=WEIGHT_SCHEMA)

    def _terms(self, output, t):
        with np.errstate(divide="ignore"):
            log_p = np.maximum(np.log(output), LOG_FLOOR)
            log_q = np.maximum(np.log1p(-output), LOG_FLOOR)
        values = -(t * log_p + (1 - t) * log_q)
        grad = (output - t) / np.maximum((1 - output) * output, 1e-12)
        return values, grad


class BinaryCrossEntropyWithLogits(_Elementwise):
    """Sigmoid and binary cross-entropy fused on the logits (``binary_cross_entropy_with_logits``):
    stable where the two apart would overflow or lose precision."""

    type = "binary_cross_entropy_with_logits"
    description = ("Sigmoid and binary cross-entropy fused on logits z (PyTorch's BCEWithLogitsLoss): "
                   "(1 - t) softplus(z) + pos_weight t softplus(-z), each softplus computed as "
                   "max(z, 0) + log1p(exp(-|z|)) so no logit overflows or loses its tail; gradient "
                   "(1 - t) sigmoid(z) - pos_weight t sigmoid(-z). A single output predicts class 1 where z > 0.")
    params_schema = _elementwise_schema(
        "mean", weight=WEIGHT_SCHEMA,
        pos_weight={"type": ["array", "null"], "items": {"type": "number", "minimum": 0}, "minItems": 1,
                    "default": None, "description": "weight of the positive targets, one per output; null: 1"})
    threshold = 0.0

    def probabilities(self, output):
        """The sigmoid of the logits (overflow-free), as predict_proba and the ONNX export give it."""
        y = np.tanh(np.asarray(output) * 0.5)
        y += 1
        y *= 0.5
        return y

    def to_onnx(self, g, x):
        return g.op("Sigmoid", [x])

    def _terms(self, output, t):
        z = output
        e = np.exp(-np.abs(z))
        tail = np.log1p(e)
        # (1 - t) softplus(z) + pw t softplus(-z) and (1 - t) sigmoid(z) - pw t sigmoid(-z): every
        # term is computed without cancellation, so far-out logits keep their relative accuracy
        sp_pos, sp_neg = np.maximum(z, 0) + tail, np.maximum(-z, 0) + tail
        sig_pos = np.where(z >= 0, 1, e) / (1 + e)
        sig_neg = np.where(z >= 0, e, 1) / (1 + e)
        pw = getattr(self, "pos_weight", None)
        if pw is not None:
            if z.ndim != 2 or len(pw) != z.shape[1]:
                raise DataError(f"pos_weight has {len(pw)} entries for outputs of shape {z.shape[1:]}")
            pt = np.asarray(pw, dtype=z.dtype) * t
        else:
            pt = t
        return (1 - t) * sp_pos + pt * sp_neg, (1 - t) * sig_pos - pt * sig_neg


@hookimpl
def layerkit_register_losses(register):
    for cls in (MeanSquaredError, L1, Huber, SmoothL1, BinaryCrossEntropy, BinaryCrossEntropyWithLogits):
        register(cls)
