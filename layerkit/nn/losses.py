"""Losses: a batch of model outputs and targets -> one number and its gradient.

``forward`` returns the reduced loss as a Python float and a cache;
``backward(cache)`` returns d(loss)/d(output) in the output's dtype.
Targets are either integer class ids of shape (N,) or rows shaped like the output.

This module holds the base class and the losses over class scores (softmax
cross-entropy, NLL, multiclass hinge); :mod:`layerkit.nn.elementwise_losses` the
element-wise ones (mse, l1, huber, smooth_l1, binary cross-entropy). Reductions
and option names follow PyTorch; the descriptions state where they do not.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from layerkit import hookimpl
from layerkit.errors import DataError
from layerkit.nn.layer import Coupling, migrate_declarations


class Loss:
    """Base class for every loss: a batch of outputs and targets to one number (:meth:`forward`)
    and its gradient with respect to the outputs (:meth:`backward`); its hyper-parameters, described by
    :attr:`params_schema`, become attributes, with the schema's defaults filled in."""

    type: ClassVar[str] = ""
    description: ClassVar[str] = ""
    params_schema: ClassVar[dict] = {"type": "object", "properties": {}, "additionalProperties": False}
    #: ``Coupling.NONE`` when the loss is the batch mean of a per-sample term, so shards of a
    #: batch can be computed apart and their gradients added (``layerkit.parallel.processes``);
    #: the default ``Coupling.OTHER`` keeps training in one process; a loss whose options couple
    #: the samples (a sum, a weighted mean) sets it per instance
    sample_coupling: Coupling | str = Coupling.OTHER

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        migrate_declarations(cls)

    def __init__(self, **config: Any) -> None:
        defaults = {k: v["default"] for k, v in self.params_schema.get("properties", {}).items()
                    if isinstance(v, dict) and "default" in v}
        self.config = dict(config)
        for key, value in {**defaults, **config}.items():
            setattr(self, key, value)

    def output_problem(self, output_shape: tuple[int, ...]) -> str | None:
        """Why a model whose output has the per-sample shape ``output_shape`` (no batch axis) cannot
        be trained with this loss, or None. ``layerkit validate`` asks it before any data is read;
        the default accepts every shape (the targets decide, at run time)."""
        return None

    def forward(self, output: np.ndarray, target: np.ndarray) -> tuple[float, Any]:
        raise NotImplementedError

    def backward(self, cache: Any) -> np.ndarray:
        raise NotImplementedError

    def predict(self, output: np.ndarray) -> np.ndarray:
        """Predicted class ids: the largest output per sample."""
        return np.asarray(output).argmax(axis=1)

    def correct(self, output: np.ndarray, target: np.ndarray) -> float:
        """How many samples of the batch the output gets right (the numerator of the accuracy):
        the predicted class equals the class id, or for probability rows their largest entry."""
        target = np.asarray(target)
        if target.ndim != 1:
            target = target.reshape(len(target), -1).argmax(axis=1)
        return float(np.count_nonzero(self.predict(output) == target))

    def counted(self, target: np.ndarray) -> int:
        """How many terms the mean of :meth:`forward` runs over for ``target`` (the denominator of
        the accuracy, and the weight of a batch in an epoch's mean): one per sample by default."""
        return len(target)

    def probabilities(self, output: np.ndarray) -> np.ndarray:
        """Class scores for ``predict_proba``: the outputs themselves unless the loss says otherwise."""
        return np.asarray(output)

    def to_onnx(self, g, x: str) -> str:
        """The ONNX form of :meth:`probabilities` (``g`` as in ``Layer.to_onnx``)."""
        return x

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({args})"


def _check_targets(output: np.ndarray, target: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """Validate targets against an (N, K) output; return them as an array.

    Class ids equal to ``ignore_index`` are let through (the loss skips them)."""
    target = np.asarray(target)
    if output.ndim != 2:
        raise DataError(f"the loss needs a flat (N, classes) output, got shape {output.shape}")
    n, k = output.shape
    if target.ndim == 1:
        if not np.issubdtype(target.dtype, np.integer):
            raise DataError(f"1-d targets must be integer class ids, got dtype {target.dtype}")
        if target.shape[0] != n:
            raise DataError(f"{target.shape[0]} targets for a batch of {n}")
        bad = (target < 0) | (target >= k)
        if ignore_index is not None:
            bad &= target != ignore_index
        if n and bad.any():
            raise DataError(f"target class {int(target[bad][0])} is out of range for {k} outputs")
    elif target.shape != output.shape:
        raise DataError(f"targets of shape {target.shape} do not match outputs of shape {output.shape}")
    return target


def class_weights_schema(what: str) -> dict:
    return {"type": ["array", "null"], "items": {"type": "number", "minimum": 0}, "minItems": 1, "default": None,
            "description": f"one weight per class ({what}; PyTorch's `weight`); null: all 1"}


IGNORE_SCHEMA = {"type": ["integer", "null"], "default": None,
                 "description": "class id whose samples contribute nothing to the loss or its gradient and are "
                                "left out of the mean (PyTorch's default -100 is null here: every other "
                                "out-of-range id is an error, not skipped)"}


def reduction_schema(default: str = "mean", batchmean: bool = False) -> dict:
    options = ["mean", "sum"] + (["batchmean"] if batchmean else [])
    text = ("mean: over every element (PyTorch); sum; batchmean: summed over a sample's outputs and averaged "
            "over the batch" if batchmean else
            "mean: over the samples (weighted by the target's class weight when there are class weights, as "
            "PyTorch); sum: over the samples")
    return {"enum": options, "default": default, "description": text}


class _ClassLoss(Loss):
    """Shared handling of class weights, ignore_index and the reduction for losses over class scores."""

    # hyper-parameters, set from the config (schema defaults filled in)
    reduction: str
    ignore_index: int | None

    #: PyTorch divides a weighted mean by the summed weight of the targets (CrossEntropy, NLL), not
    #: by N; MultiMarginLoss does not
    weighted_mean_normalises: ClassVar[bool] = True

    def __init__(self, **config):
        super().__init__(**config)
        coupled = getattr(self, "ignore_index", None) is not None or (
            self.weighted_mean_normalises and getattr(self, "class_weights", None) is not None)
        self.sample_coupling = Coupling.NONE if self.reduction == "mean" and not coupled else Coupling.OTHER

    def output_problem(self, output_shape: tuple[int, ...]) -> str | None:
        """A flat output, one score per class; class_weights, if given, one per class."""
        if len(output_shape) != 1:
            return "needs a flat output, one score per class: (classes,) per sample"
        w = getattr(self, "class_weights", None)
        if w is not None and len(w) != output_shape[0]:
            return f"class_weights has {len(w)} entries for {output_shape[0]} outputs"
        return None

    def _weights(self, k: int, dtype) -> np.ndarray | None:
        w = getattr(self, "class_weights", None)
        if w is None:
            return None
        if len(w) != k:
            raise DataError(f"class_weights has {len(w)} entries for {k} outputs")
        return np.asarray(w, dtype=dtype)

    def _ids(self, target: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Class ids safe to index with, and the mask of samples that count (None: all)."""
        ignore = getattr(self, "ignore_index", None)
        if ignore is None:
            return target, None
        keep = target != ignore
        return np.where(keep, target, 0), keep

    def _sample_weights(self, ids, keep, w, n, dtype) -> tuple[np.ndarray, float]:
        """Per-sample weights (the target's class weight, 0 when ignored) and the reduction's divisor:
        1 for a sum, the total weight of the counted samples for a mean (0 when none counts: see _mean)."""
        sw = np.ones(n, dtype=dtype) if w is None else w[ids]
        if keep is not None:
            sw = sw * keep
        return sw, (1.0 if self.reduction == "sum" else float(sw.sum()))


def _mean(total: float, div: float) -> float:
    """A reduction's value: NaN when nothing counted (every target ignored), as PyTorch's mean."""
    return float(total) / div if div else float("nan")


def _inverse(div: float) -> float:
    """The gradient's scale: 0 when nothing counted, as PyTorch (no sample reaches the loss)."""
    return 1.0 / div if div else 0.0


class SoftmaxCrossEntropy(_ClassLoss):
    """Cross-entropy of the softmax of class scores, fused into one stable pass (``softmax_cross_entropy``)."""

    label_smoothing: float
    type = "softmax_cross_entropy"
    description = ("Softmax followed by cross-entropy (PyTorch's CrossEntropyLoss), fused and computed with "
                   "log-sum-exp so large logits cannot overflow. Targets: class ids (N,) or probability rows "
                   "(N, K). class_weights, ignore_index (class ids only), label_smoothing and the reduction "
                   "follow PyTorch: the mean over class ids divides by the summed weight of the counted "
                   "targets, over rows by N. Default gradient (p - y) / N. When every target of a batch is "
                   "ignore_index the mean is NaN and the gradient 0, as PyTorch.")
    params_schema = {
        "type": "object",
        "properties": {
            "label_smoothing": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0,
                                "description": "mix the targets with the uniform distribution: "
                                               "y = (1 - s) * y + s / classes"},
            "class_weights": class_weights_schema("scales each sample's term by its target's weight"),
            "ignore_index": IGNORE_SCHEMA,
            "reduction": reduction_schema(),
        },
        "additionalProperties": False,
    }

    def forward(self, output, target):
        target = _check_targets(output, target, getattr(self, "ignore_index", None))
        n, k = output.shape
        shifted = output - output.max(axis=1, keepdims=True)
        prob = np.exp(shifted)
        total = prob.sum(axis=1, keepdims=True)
        log_prob = shifted - np.log(total)
        prob /= total
        smooth = float(self.label_smoothing)
        w = self._weights(k, output.dtype)
        if w is None and self.ignore_index is None and self.reduction == "mean":
            # the plain case, kept to the fewest passes (the training hot path of most nets)
            if target.ndim == 1:
                loss = -log_prob[np.arange(n), target].mean()
                if smooth:
                    loss = (1 - smooth) * loss - smooth * log_prob.mean(axis=1).mean()
            else:
                y = target.astype(output.dtype, copy=False)
                if smooth:
                    y = y * (1 - smooth) + smooth / k
                loss = -np.einsum("nk,nk->", y, log_prob) / n
            return float(loss), (prob, target, smooth, None)
        wk = np.ones(k, dtype=output.dtype) if w is None else w
        if target.ndim == 1:
            ids, keep = self._ids(target)
            sw, div = self._sample_weights(ids, keep, w, n, output.dtype)
            nll = -(sw * log_prob[np.arange(n), ids]).sum()
            # PyTorch: the smoothing term is -sum_k w_k log p_k per counted sample, over the same divisor
            counted = np.ones(n, dtype=output.dtype) if keep is None else keep.astype(output.dtype)
            smooth_sum = -(counted * (log_prob @ wk)).sum()
            loss = _mean((1 - smooth) * nll + smooth / k * smooth_sum, div)
            return float(loss), (prob, target, smooth, (ids, sw, counted, wk, div))
        if self.ignore_index is not None:
            raise DataError("ignore_index needs class-id targets, got probability rows")
        y = target.astype(output.dtype, copy=False)
        if smooth:
            y = y * (1 - smooth) + smooth / k
        div = float(n) if self.reduction == "mean" else 1.0
        loss = _mean(-np.einsum("nk,nk->", y * wk, log_prob), div)
        return float(loss), (prob, target, smooth, (y, wk, div))

    def probabilities(self, output):
        y = output - output.max(axis=1, keepdims=True)
        np.exp(y, out=y)
        y /= y.sum(axis=1, keepdims=True)
        return y

    def to_onnx(self, g, x):
        return g.op("Softmax", [x], axis=1)

    def backward(self, cache):
        prob, target, smooth, extra = cache
        n, k = prob.shape
        if extra is None:
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
        if target.ndim == 1:
            ids, sw, counted, wk, div = extra
            # d/dz of -w_y log p_y is w_y (p - e_y); of -sum_k w_k log p_k it is (sum w) p - w
            grad = prob * ((1 - smooth) * sw)[:, None]
            grad[np.arange(n), ids] -= (1 - smooth) * sw
            if smooth:
                grad += (smooth / k) * counted[:, None] * (prob * wk.sum() - wk)
        else:
            y, wk, div = extra
            yw = y * wk
            grad = prob * yw.sum(axis=1, keepdims=True) - yw
        grad *= _inverse(div)
        return grad.astype(prob.dtype, copy=False)


class NLLLoss(_ClassLoss):
    """Negative log-likelihood of class ids given log-probabilities, for use after ``log_softmax`` (``nll``)."""

    type = "nll"
    description = ("Negative log-likelihood of class ids given log-probabilities (PyTorch's NLLLoss): pair it "
                   "with a log_softmax layer; loss = -output[n, target_n], with class_weights, ignore_index and "
                   "the reduction as PyTorch (the mean divides by the summed weight of the counted targets). "
                   "log_softmax + nll equals softmax_cross_entropy, which is one fused pass. When every target "
                   "of a batch is ignore_index the mean is NaN and the gradient 0, as PyTorch.")
    params_schema = {
        "type": "object",
        "properties": {
            "class_weights": class_weights_schema("scales each sample's term by its target's weight"),
            "ignore_index": IGNORE_SCHEMA,
            "reduction": reduction_schema(),
        },
        "additionalProperties": False,
    }

    def probabilities(self, output):
        """The outputs are log-probabilities: their exponential."""
        return np.exp(output)

    def to_onnx(self, g, x):
        return g.op("Exp", [x])

    def forward(self, output, target):
        target = _check_targets(output, target, self.ignore_index)
        if target.ndim != 1:
            raise DataError(f"nll needs class-id targets (N,), got shape {target.shape}")
        n, k = output.shape
        ids, keep = self._ids(target)
        sw, div = self._sample_weights(ids, keep, self._weights(k, output.dtype), n, output.dtype)
        loss = _mean(-(sw * output[np.arange(n), ids]).sum(), div)
        return float(loss), (output.shape, output.dtype, ids, sw, div)

    def backward(self, cache):
        shape, dtype, ids, sw, div = cache
        grad = np.zeros(shape, dtype=dtype)
        grad[np.arange(shape[0]), ids] = -sw * _inverse(div)
        return grad


class MulticlassHinge(_ClassLoss):
    """The multiclass SVM loss on class scores (``multiclass_hinge``): each wrong class that scores
    within ``margin`` of the true one costs the gap."""

    margin: float
    p: int
    average_over_classes: bool
    type = "multiclass_hinge"
    description = ("Multiclass SVM (hinge) loss on class scores, PyTorch's MultiMarginLoss: per sample "
                   "sum over j != y of max(0, margin - x_y + x_j)^p, times the target's class weight, divided "
                   "by the number of classes; the mean is over samples (weights do not renormalise it, as "
                   "PyTorch). average_over_classes: false gives the CS231n SVM loss (no division by classes). "
                   "Gradient at the hinge's kink (margin exactly met) is 0.")
    params_schema = {
        "type": "object",
        "properties": {
            "margin": {"type": "number", "minimum": 0, "default": 1.0,
                       "description": "how far the true class must score above each other class"},
            "p": {"enum": [1, 2], "default": 1, "description": "1: hinge; 2: squared hinge"},
            "class_weights": class_weights_schema("scales each sample's term by its target's weight"),
            "average_over_classes": {"type": "boolean", "default": True,
                                     "description": "divide each sample's sum by the number of classes "
                                                    "(PyTorch); false: CS231n's multiclass SVM"},
            "reduction": reduction_schema(),
        },
        "additionalProperties": False,
    }
    weighted_mean_normalises = False

    def forward(self, output, target):
        target = _check_targets(output, target)
        if target.ndim != 1:
            raise DataError(f"multiclass_hinge needs class-id targets (N,), got shape {target.shape}")
        n, k = output.shape
        rows = np.arange(n)
        h = output - output[rows, target][:, None]
        h += float(self.margin)
        h[rows, target] = 0.0
        np.maximum(h, 0.0, out=h)
        w = self._weights(k, output.dtype)
        sw = np.ones(n, dtype=output.dtype) if w is None else w[target]
        scale = (1.0 / k if self.average_over_classes else 1.0) / (n if self.reduction == "mean" else 1.0)
        per = (h if self.p == 1 else h * h).sum(axis=1)
        loss = float((sw * per).sum() * scale)
        return loss, (h, target, sw, scale)

    def backward(self, cache):
        h, target, sw, scale = cache
        n = h.shape[0]
        grad = (h > 0).astype(h.dtype) if self.p == 1 else 2 * h
        grad *= (sw * scale)[:, None].astype(h.dtype)
        grad[np.arange(n), target] = -grad.sum(axis=1)
        return grad


#: scores in [-SAFE_SCORE, SAFE_SCORE] go through exp unshifted: e^30 summed over even a million
#: classes stays far below float32's largest value, and e^-30 far above its smallest normal one
SAFE_SCORE = 30.0


class SequenceCrossEntropy(Loss):
    """Softmax cross-entropy at every position of a sequence (``sequence_cross_entropy``): (N, T, K)
    class scores, (N, T) class ids, positions holding ``ignore_index`` skipped."""

    type = "sequence_cross_entropy"
    description = ("Softmax cross-entropy at every position of a sequence: outputs (N, T, K), targets (N, T) class "
                   "ids; positions whose target is ignore_index (padding) count for nothing, and the loss is the "
                   "mean over the positions that count in the whole batch (PyTorch's CrossEntropyLoss on the "
                   "flattened positions).")
    params_schema = {
        "type": "object",
        "properties": {
            "ignore_index": {"type": "integer", "default": -100,
                             "description": "target id of positions that contribute nothing (padding)"},
        },
        "additionalProperties": False,
    }
    ignore_index: int
    #: a mean over the counted positions of the whole batch: a share of a batch is weighted by its
    #: counted positions (``counted``) when shares are added, so it splits over samples all the same
    sample_coupling = Coupling.NONE

    def output_problem(self, output_shape: tuple[int, ...]) -> str | None:
        if len(output_shape) != 2:
            return (f"needs a (steps, classes) output per sample, got {tuple(output_shape)}: a recurrent layer with "
                    f"return_sequences and a dense layer on the last axis give one")
        return None

    def _targets(self, output: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        target = np.asarray(target)
        if output.ndim != 3:
            raise DataError(f"the loss needs an (N, steps, classes) output, got shape {output.shape}")
        if target.shape != output.shape[:2] or not np.issubdtype(target.dtype, np.integer):
            raise DataError(f"targets must be integer class ids of shape {output.shape[:2]} (one per position), "
                            f"got {target.dtype} of shape {target.shape}")
        keep = target != self.ignore_index
        bad = keep & ((target < 0) | (target >= output.shape[2]))
        if bad.any():
            raise DataError(f"target class {int(target[bad][0])} is out of range for {output.shape[2]} outputs")
        return np.where(keep, target, 0), keep

    def forward(self, output, target):
        ids, keep = self._targets(output, target)
        # one exponential over the (N*T, K) scores, kept for backward: softmax = e / sum(e).
        # Scores within +-SAFE_SCORE need no shift (no exp overflows, even summed, and none
        # underflows), which spares a reduction along the short class axis; others get the usual
        # shift by each position's maximum.
        lo, hi = float(output.min()), float(output.max())
        if -SAFE_SCORE <= lo and hi <= SAFE_SCORE:
            e = np.exp(output)
            picked = np.take_along_axis(output, ids[..., None], axis=2)[..., 0]
        else:
            e = output - output.max(axis=2, keepdims=True)
            picked = np.take_along_axis(e, ids[..., None], axis=2)[..., 0]
            np.exp(e, out=e)
        # the sum over classes as a matrix-vector product: a reduction along a short contiguous
        # axis costs numpy a loop per position
        total = (e.reshape(-1, e.shape[2]) @ np.ones(e.shape[2], dtype=e.dtype)).reshape(e.shape[:2])
        # per position in float64 (N*T numbers): log(total) and the picked score are both large where
        # the scores were not shifted, and their difference must not lose float32's digits
        nll = np.log(total.astype(np.float64)) - picked
        # the mask only when some position is padding
        masked = not keep.all()
        count = int(keep.sum()) if masked else keep.size
        loss = float((nll * keep).sum() if masked else nll.sum()) / max(count, 1)
        return loss, (e, total, ids, keep if masked else None, count)

    def backward(self, cache):
        e, total, ids, keep, count = cache
        # d loss / d scores = (softmax - onehot) * keep / count, written into one fresh array
        scale = np.reciprocal(total)
        scale *= 1.0 / max(count, 1)
        if keep is not None:
            scale *= keep
        grad = e * scale[..., None].astype(e.dtype, copy=False)
        flat = grad.reshape(-1, grad.shape[2])
        rows = np.arange(flat.shape[0])
        # one target per position: the indices are distinct, so a plain fancy-index update is exact
        flat[rows, ids.reshape(-1)] -= (keep.reshape(-1) / max(count, 1) if keep is not None
                                        else np.full(flat.shape[0], 1.0 / max(count, 1))).astype(grad.dtype)
        return grad

    def predict(self, output):
        """Predicted class ids per position, (N, T)."""
        return np.asarray(output).argmax(axis=-1)

    def correct(self, output, target):
        """Counted positions predicted right (token accuracy: divided by :meth:`counted`)."""
        target = np.asarray(target)
        return float(np.count_nonzero((self.predict(output) == target) & (target != self.ignore_index)))

    def counted(self, target):
        """Positions whose target is not ``ignore_index``: the terms of the loss's mean."""
        return int(np.count_nonzero(np.asarray(target) != self.ignore_index))

    def probabilities(self, output):
        z = np.exp(output - output.max(axis=-1, keepdims=True))
        return z / z.sum(axis=-1, keepdims=True)

    def to_onnx(self, g, x):
        return g.op("Softmax", [x], axis=-1)


@hookimpl
def layerkit_register_losses(register):
    register(SoftmaxCrossEntropy)
    register(SequenceCrossEntropy)
    register(NLLLoss)
    register(MulticlassHinge)
