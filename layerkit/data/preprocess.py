"""Preprocessing: what turns raw inputs into what a model's first layer saw in training.

A :class:`Preprocessing` is fitted once, on the training split, from the model
file's ``training.data.normalize`` setting, and saved with the run
(``preprocessing.json``). Training, evaluation and prediction all go through
the same object, so a saved model given raw ``uint8`` images answers exactly as
it did on its test split.

The steps of :meth:`Preprocessing.apply`, in order:

1. **Type**: real numbers only. Strings, objects and complex values are refused
   (a complex image cast to real would silently drop its imaginary part).
2. **Layout** (:func:`to_model_layout`): the per-sample shape must be the
   model's input shape, or one of the unambiguous variants: ``(N, H, W)`` for a
   one-channel ``(1, H, W)`` input, channels-last ``(N, H, W, C)`` (transposed),
   flat rows ``(N, C*H*W)`` (row-major, channels first, as CIFAR and Kaggle CSV
   store them), or anything of the right size for a flat ``(D,)`` input.
   Anything else is refused naming both shapes.
3. **Scale**: with ``unit`` or ``standardize``, integer data is divided by 255;
   float data is taken as already scaled to [0, 1]. ``none`` only converts to float32.
4. **Standardize**: subtract the training split's per-channel mean (per-feature
   for a flat input) and divide by its standard deviation.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from layerkit.data.vocabulary import Vocabulary
from layerkit.errors import DataError
from layerkit.fileio import read_json_record, record_path, write_text_atomic

FORMAT = 1
FILE_NAME = "preprocessing.json"
NORMALIZE = ("unit", "standardize", "none")
LAYOUTS = ("auto", "channels_first", "channels_last")
#: integer pixels 0..255 become [0, 1]
INTEGER_SCALE = 1 / 255


def check_numeric(x: np.ndarray, source: str, what: str) -> np.ndarray:
    """``x`` as an array of real numbers, or a :class:`DataError` saying what it holds instead."""
    x = np.asarray(x)
    kind = x.dtype.kind
    if kind == "c":
        raise DataError(f"{source}: {what} are complex numbers ({x.dtype}); layerkit trains on real values: "
                        f"store their magnitude or real part")
    if kind in "USO" or kind not in "biuf":
        raise DataError(f"{source}: {what} hold {x.dtype} values, not numbers; store them as an integer "
                        f"or float array")
    return x


def to_model_layout(x: np.ndarray, input_shape: Sequence[int], source: str, layout: str = "auto",
                    what: str = "images") -> np.ndarray:
    """Reshape or transpose a batch ``x`` to ``(N, *input_shape)`` where that is unambiguous; a
    :class:`DataError` naming both layouts otherwise. ``layout`` is ``training.data.layout``."""
    shape = tuple(int(d) for d in input_shape)
    if x.ndim < 1:
        raise DataError(f"{source}: {what} are a single number, not a batch of shape (N, {_dims(shape)})")
    sample = tuple(x.shape[1:])
    want = f"(N, {_dims(shape)})"
    if layout == "channels_last":
        if len(shape) != 3 or x.ndim != 4 or sample != (shape[1], shape[2], shape[0]):
            raise DataError(f"{source}: training.data.layout is channels_last, so {what} must be "
                            f"(N, {shape[1] if len(shape) == 3 else 'H'}, {shape[2] if len(shape) == 3 else 'W'}, "
                            f"{shape[0] if len(shape) == 3 else 'C'}), but they are {x.shape}")
        return x.transpose(0, 3, 1, 2)
    if sample == shape:
        if (layout == "auto" and len(shape) == 3 and shape[0] > 1 and shape[0] == shape[1] == shape[2]):
            raise DataError(f"{source}: {what} {x.shape} could be channels first (N, C, H, W) or channels "
                            f"last (N, H, W, C); say which with training.data.layout "
                            f"(--set data.layout=channels_first or channels_last)")
        return x
    size = math.prod(shape)
    if math.prod(sample) == size:
        if len(shape) == 1:
            return x.reshape(len(x), size)  # a flat input: any arrangement flattens the same way
        if len(sample) == 1:
            return x.reshape(len(x), *shape)  # flat rows, stored row-major channels first
        if len(shape) == 3 and shape[0] == 1 and sample == shape[1:]:
            return x[:, None, :, :]
        if len(shape) == 3 and sample == (shape[1], shape[2], shape[0]) and layout == "auto":
            return x.transpose(0, 3, 1, 2)  # channels last, as Keras and most CIFAR tools store images
    if len(shape) == 1:  # flat inputs are features, not images
        noun = what.replace("images", "samples") if "images" in what else what
        raise DataError(f"{source}: got {math.prod(sample):,} features per sample ({noun} are {x.shape}), "
                        f"the model expects {size:,}")
    hint = ""
    if len(shape) == 3 and x.ndim == 4 and sample[2] == shape[0]:
        hint = " (channels last would be (N, H, W, C) with the model's H and W)"
    raise DataError(f"{source}: {what} are {x.shape}, which does not fit the model's input {want}: expected "
                    f"(N, {_dims(shape)}) channels first" +
                    (f", (N, {shape[1]}, {shape[2]}, {shape[0]}) channels last" if len(shape) == 3 else "") +
                    f" or flat (N, {size}){hint}")


def _dims(shape: Sequence[int]) -> str:
    return ", ".join(str(d) for d in shape)


@dataclass
class Preprocessing:
    """Fitted preprocessing of one model's inputs (see the module docstring)."""

    normalize: str
    input_shape: tuple[int, ...]
    class_names: list[str] = field(default_factory=list)
    layout: str = "auto"
    #: the training data's dtype as read (``uint8``, ``float32``...), for messages and docs
    raw_dtype: str = "uint8"
    #: per-sample broadcast shape of mean/std: (C, 1, 1) for images, (D,) for flat inputs
    stat_shape: tuple[int, ...] | None = None
    mean: list[float] | None = None  # float64 statistics of the scaled training split
    std: list[float] | None = None
    #: token inputs only: how text maps to the ids (``layerkit generate`` decodes with it)
    vocabulary: Vocabulary | None = None
    #: the inputs are token ids (a model whose ``input.dtype`` is int64): they pass through as int64,
    #: never scaled or standardized
    tokens: bool = False

    # -- fitting -------------------------------------------------------------------
    @classmethod
    def fit(cls, x_train: np.ndarray, normalize: str = "unit", *, input_shape: Sequence[int] | None = None,
            class_names: Sequence[str] = (), layout: str = "auto") -> "Preprocessing":
        """Fit on the training split ``x_train`` (already in model layout, raw values)."""
        return cls.fit_transform(x_train, normalize, input_shape=input_shape, class_names=class_names,
                                 layout=layout)[0]

    @classmethod
    def fit_transform(cls, x_train: np.ndarray, normalize: str = "unit", *,
                      input_shape: Sequence[int] | None = None, class_names: Sequence[str] = (),
                      layout: str = "auto", tokens: bool = False) -> tuple["Preprocessing", np.ndarray]:
        """Fit on ``x_train`` (model layout) and return it preprocessed too, scaling it only once.
        With ``tokens`` the inputs are token ids: kept as int64, ``normalize`` ignored."""
        if normalize not in NORMALIZE:
            raise DataError(f"training.data.normalize: {normalize!r} is not one of {', '.join(NORMALIZE)}")
        pre = cls(normalize="none" if tokens else normalize, input_shape=tuple(input_shape or x_train.shape[1:]),
                  class_names=[str(n) for n in class_names], layout=layout, raw_dtype=str(x_train.dtype),
                  tokens=tokens)
        scaled = pre._scale(x_train)
        if pre.normalize == "standardize":
            axes = (0, 2, 3) if scaled.ndim == 4 else (0,)
            # float64 accumulation, two passes (np.std subtracts the mean first): no E[x^2]-E[x]^2
            mean = scaled.mean(axis=axes, dtype=np.float64, keepdims=True)[0]
            std = scaled.std(axis=axes, dtype=np.float64, keepdims=True)[0]
            std[std == 0] = 1.0
            pre.stat_shape = tuple(int(d) for d in mean.shape)
            pre.mean, pre.std = [float(v) for v in mean.ravel()], [float(v) for v in std.ravel()]
            pre._standardize(scaled)
        return pre, np.ascontiguousarray(scaled)

    # -- applying ------------------------------------------------------------------
    def apply(self, raw: np.ndarray, source: str = "input", what: str = "images") -> np.ndarray:
        """A batch of raw inputs (uint8 or float images in any accepted layout) as float32 model input."""
        x = check_numeric(raw, source, what)
        x = to_model_layout(x, self.input_shape, source, self.layout, what)
        return self.transform(x, source, what)

    def transform(self, x: np.ndarray, source: str = "input", what: str = "images") -> np.ndarray:
        """Scale and standardize ``x``, already in model layout. Returns a new C-contiguous float32 array."""
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise DataError(f"{source}: {what} are {tuple(x.shape)}, expected (N, {_dims(self.input_shape)})")
        out = self._scale(x)
        if self.normalize == "standardize":
            self._standardize(out)
        if out.dtype.kind == "f" and out.size and not np.isfinite(out).all():
            raise DataError(f"{source}: {what} contain NaN or infinite values")
        return np.ascontiguousarray(out)

    def _scale(self, x: np.ndarray) -> np.ndarray:
        if self.tokens:
            if not np.issubdtype(x.dtype, np.integer):
                raise DataError(f"the model reads token ids (input dtype int64), but the data holds {x.dtype} "
                                f"values")
            return np.array(x, dtype=np.int64, copy=True)
        scaled = np.array(x, dtype=np.float32, copy=True)
        if self.normalize in ("unit", "standardize") and np.issubdtype(x.dtype, np.integer):
            scaled *= np.float32(INTEGER_SCALE)
        return scaled

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, 1 / std)`` as float32 arrays of ``stat_shape``: what standardizing subtracts and
        multiplies by (the ONNX export uses the same arrays)."""
        if self.stat_shape is None or self.mean is None or self.std is None:
            raise DataError("the preprocessing has no statistics: it was not fitted with normalize 'standardize'")
        mean = np.asarray(self.mean, dtype=np.float64).reshape(self.stat_shape).astype(np.float32)
        inv = (1.0 / np.asarray(self.std, dtype=np.float64).reshape(self.stat_shape)).astype(np.float32)
        return mean, inv

    def _standardize(self, x: np.ndarray) -> None:
        mean, inv = self.statistics()
        x -= mean
        x *= inv

    # -- saving ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (floats round-trip exactly through JSON)."""
        return {"format": FORMAT, "normalize": self.normalize, "input_shape": list(self.input_shape),
                "layout": self.layout, "raw_dtype": self.raw_dtype, "class_names": list(self.class_names),
                "integer_scale": INTEGER_SCALE if self.normalize != "none" else 1.0,
                "stat_shape": None if self.stat_shape is None else list(self.stat_shape),
                "mean": self.mean, "std": self.std, **({"tokens": True} if self.tokens else {}),
                **({} if self.vocabulary is None else {"vocabulary": self.vocabulary.to_dict()})}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = FILE_NAME) -> "Preprocessing":
        """The inverse of :meth:`to_dict`; a :class:`DataError` naming ``source`` and the field for
        anything missing, extra or malformed."""
        def bad(key: str, why: str) -> DataError:
            return DataError(f"{source}: {key}: {why}; the preprocessing record is damaged (re-run fit, "
                             f"or restore the file from the run)")

        if not isinstance(data, dict):
            raise bad("(top level)", "expected a JSON object")
        keys = {"format", "normalize", "input_shape", "layout", "raw_dtype", "class_names", "integer_scale",
                "stat_shape", "mean", "std"}
        tokens = data.get("tokens", False)  # written only when true: older records stay valid
        if not isinstance(tokens, bool):
            raise bad("tokens", "expected true or false")
        for key in sorted(set(data) - keys - {"tokens", "vocabulary"}):
            raise bad(key, "unknown field")
        for key in sorted(keys - set(data)):
            raise bad(key, "missing")
        if data["format"] != FORMAT:
            raise bad("format", f"{data['format']!r} is not supported (expected {FORMAT})")
        if data["normalize"] not in NORMALIZE:
            raise bad("normalize", f"{data['normalize']!r} is not one of {', '.join(NORMALIZE)}")
        if data["layout"] not in LAYOUTS:
            raise bad("layout", f"{data['layout']!r} is not one of {', '.join(LAYOUTS)}")
        shape = data["input_shape"]
        if not (isinstance(shape, list) and shape and all(_posint(d) for d in shape)):
            raise bad("input_shape", "expected a list of positive integers")
        if not (isinstance(data["class_names"], list) and all(isinstance(n, str) for n in data["class_names"])):
            raise bad("class_names", "expected a list of strings")
        if not isinstance(data["raw_dtype"], str):
            raise bad("raw_dtype", "expected a string")
        expected_scale = INTEGER_SCALE if data["normalize"] != "none" else 1.0
        if not isinstance(data["integer_scale"], (int, float)) or data["integer_scale"] != expected_scale:
            raise bad("integer_scale", f"expected {expected_scale!r} for normalize {data['normalize']!r}")
        stat_shape, mean, std = data["stat_shape"], data["mean"], data["std"]
        if data["normalize"] == "standardize":
            if not (isinstance(stat_shape, list) and stat_shape and all(_posint(d) for d in stat_shape)):
                raise bad("stat_shape", "expected a list of positive integers")
            n = math.prod(stat_shape)
            for key, values in (("mean", mean), ("std", std)):
                if not (isinstance(values, list) and len(values) == n and all(_finite(v) for v in values)):
                    raise bad(key, f"expected {n} finite numbers")
            if any(v <= 0 for v in std):
                raise bad("std", "standard deviations must be positive")
            # one statistic per axis of the input: numpy would align a shorter shape from the right
            if len(stat_shape) != len(shape) or any(s not in (1, d) for s, d in zip(stat_shape, shape, strict=True)):
                raise bad("stat_shape", f"{stat_shape} does not broadcast over the input shape {shape}")
        elif (stat_shape, mean, std) != (None, None, None):
            raise bad("mean", "statistics are only stored with normalize 'standardize'")
        return cls(normalize=data["normalize"], input_shape=tuple(shape), class_names=list(data["class_names"]),
                   layout=data["layout"], raw_dtype=data["raw_dtype"],
                   stat_shape=None if stat_shape is None else tuple(stat_shape),
                   mean=None if mean is None else [float(v) for v in mean],
                   std=None if std is None else [float(v) for v in std], tokens=tokens,
                   vocabulary=None if data.get("vocabulary") is None
                   else Vocabulary.from_dict(data["vocabulary"], source))

    @classmethod
    def load(cls, path: str | Path) -> "Preprocessing":
        """Read a ``preprocessing.json`` (a run directory's, or any path)."""
        path = record_path(path, FILE_NAME)
        # even per-feature statistics of a large input stay far below 64 MiB
        data = read_json_record(path, "preprocessing record", 64 << 20,
                                " (runs saved before preprocessing was recorded lack it; re-run fit)")
        return cls.from_dict(data, str(path))

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path`` (a directory gets ``preprocessing.json``), atomically."""
        path = record_path(path, FILE_NAME)
        write_text_atomic(path, self.to_json(), "preprocessing record")
        return path


def _posint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = ["Preprocessing", "to_model_layout", "check_numeric", "FILE_NAME"]
