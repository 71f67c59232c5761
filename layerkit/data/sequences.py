"""Sequence datasets: token ids in, next-token or answer ids out.

The base class of the ``text`` loader (:mod:`layerkit.data.text`) and the
synthetic tasks (:mod:`layerkit.data.sequence_tasks`). Every sample is a pair
of int64 arrays of shape ``(T,)``: the input ids ``x`` and the target ids
``y``, where ``y`` is :data:`IGNORE_INDEX` at positions nothing is to be
predicted (before a task's separator, and at padding). ``T`` is the model's
input shape ``[T]``. The :class:`~layerkit.data.vocabulary.Vocabulary` goes
into the run's ``preprocessing.json``, which never rescales token ids.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np

from layerkit.data import Dataset, DataSplits, RawData, split_validation
from layerkit.data.preprocess import Preprocessing
from layerkit.data.vocabulary import Vocabulary
from layerkit.errors import DataError
from layerkit.nn.layer import RESERVED_INPUT

#: the target id of a position that is not scored (PyTorch's default ``ignore_index``)
IGNORE_INDEX = -100


class SequenceDataset(Dataset):
    """A dataset of token sequences. Subclasses implement :meth:`make`; limits, the validation
    split and the saved vocabulary are handled here for all of them alike."""

    class_names: ClassVar[Sequence[str]] = ()

    def make(self, raw: RawData, options: dict, length: int | None, vocabulary: Vocabulary | None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Vocabulary]:
        """``(x_train, y_train, x_test, y_test, vocabulary)`` of int64 ``(N, T)`` arrays. ``length``
        is the model's ``T`` (None without a model); ``vocabulary``, a trained model's, must be used
        as it is."""
        raise NotImplementedError

    def prepare(self, raw: RawData, options: dict, *, seed: int = 0, input_shape: Sequence[int] | None = None,
                num_outputs: int | None = None, preprocessing: Preprocessing | None = None,
                tokens: bool = True, label_shape: Sequence[int] = (), ignore_index: int | None = None
                ) -> DataSplits:
        options = options or {}
        length = None
        if input_shape is not None:
            if len(input_shape) != 1:
                raise DataError(f"dataset {self.name!r} holds token sequences, so the model's input must have shape "
                                f"[T] (dtype int64); it is {list(input_shape)}")
            length = int(input_shape[0])
        if num_outputs is not None and len(tuple(label_shape)) != 1:
            raise DataError(f"dataset {self.name!r} has a target token at every position, but the model outputs "
                            f"{num_outputs} numbers per sample; a sequence model outputs (T, K): one row of K "
                            f"token scores per position")
        saved = None
        if preprocessing is not None:
            saved = preprocessing.vocabulary
            if saved is None:
                raise DataError(f"dataset {self.name!r} holds token sequences, but the model's preprocessing has "
                                f"no vocabulary: it was trained on other data")
        x_train, y_train, x_test, y_test, vocab = self.make(raw, options, length, saved)
        src = raw.source
        if options.get("train_limit"):
            x_train, y_train = x_train[:options["train_limit"]], y_train[:options["train_limit"]]
        if options.get("test_limit"):
            x_test, y_test = x_test[:options["test_limit"]], y_test[:options["test_limit"]]
        x_train, y_train, x_val, y_val = split_validation(x_train, y_train, options.get("validation_split"), seed,
                                                          src, "sequences")
        if len(x_train) == 0:
            raise DataError(f"{src}: no training sequences left")
        if preprocessing is None:
            preprocessing = Preprocessing(normalize="none", input_shape=(int(x_train.shape[1]),), raw_dtype="int64",
                                          vocabulary=vocab, tokens=True)
        return DataSplits(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, x_val=x_val, y_val=y_val,
                          source=src, notice=raw.notice, class_names=[], preprocessing=preprocessing,
                          files=list(raw.files), location=raw.location, fingerprint=raw.fingerprint)


def check_fits(data: DataSplits, graph: Any) -> None:
    """Refuse a model too small for the data's vocabulary, before training starts: a layer reading
    the token ids whose ``token_range`` is below the vocabulary size, or fewer scores per position
    than there are tokens. ``graph`` is the model's shape-inferred graph; data without a vocabulary
    (images) passes."""
    vocab = data.preprocessing.vocabulary if data.preprocessing is not None else None
    if vocab is None:
        return
    what = f"{data.source} has {vocab.size} tokens ({vocab.unit} vocabulary)"
    for node in graph.nodes:
        reach = getattr(node.layer, "token_range", None)
        if RESERVED_INPUT in node.inputs and callable(reach) and reach() < vocab.size:
            raise DataError(f"{what}, but layer {node.name!r} takes ids 0 .. {reach() - 1} only; give it a "
                            f"vocabulary of {vocab.size}")
    shape = tuple(graph.output.output_shape)
    if len(shape) == 2 and shape[1] < vocab.size:
        raise DataError(f"{what}, but the model outputs {shape[1]} scores per position; make its last layer "
                        f"{vocab.size} wide, one score per token")


def window_length(name: str, length: int | None, options: dict, key: str = "length", default: int = 64) -> int:
    """``T``: the model's, else ``options[key]``, else ``default``; both given and different is an error."""
    given = options.get(key)
    if length is not None and given is not None and given != length:
        raise DataError(f"training.data.{key}: {given} does not fit the model's input [{length}] "
                        f"(dataset {name!r}); leave it out or make them agree")
    return int(length if length is not None else given if given is not None else default)


def windows(ids: np.ndarray, length: int, stride: int, source: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Next-token windows of ``ids``: ``x = ids[i:i+T]``, ``y = ids[i+1:i+T+1]`` for ``i = 0, stride, ...``."""
    if len(ids) < length + 1:
        raise DataError(f"{source}: the {what} split has {len(ids):,} tokens, too few for one window of "
                        f"{length} + 1; give more text, or a smaller model input length")
    view = np.lib.stride_tricks.sliding_window_view
    x = np.ascontiguousarray(view(ids[:-1], length)[::stride], dtype=np.int64)
    y = np.ascontiguousarray(view(ids[1:], length)[::stride], dtype=np.int64)
    return x, y


__all__ = ["SequenceDataset", "IGNORE_INDEX", "check_fits", "window_length", "windows"]
