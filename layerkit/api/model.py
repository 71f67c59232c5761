"""A model you can train, evaluate, save, load and predict with from Python.

A :class:`Model` is a model file (the network and how to train it), its weights
and its :class:`~layerkit.data.preprocess.Preprocessing` (how raw inputs become
what the first layer saw in training, and the class names). It is what
``layerkit.load`` returns and what every CLI command that uses a trained model
goes through.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Sequence

import numpy as np

from layerkit.data.preprocess import FILE_NAME as PREPROCESSING_FILE
from layerkit.data.preprocess import Preprocessing, check_numeric, to_model_layout
from layerkit.data.record import DataRecord
from layerkit.errors import DataError, LayerkitError
from layerkit.fileio import write_text_atomic
from layerkit.modelfile.build import build_model
from layerkit.modelfile.spec import ModelSpec, read_model_file, spec_from_dict
from layerkit.nn.network import load_npz
from layerkit.training.trainer import Callback, Trainer, build_callbacks, build_loss, class_targets, evaluate

if TYPE_CHECKING:
    from rich.table import Table

    from layerkit.gradcheck.report import GradCheckReport
    from layerkit.modelfile.shapes import Graph
    from layerkit.nn.network import Network
    from layerkit.plugins.registry import Registry
    from layerkit.training.weights import LoadReport

MODEL_FILE = "model.json"
WEIGHTS = "weights.npz"
CHECKPOINT = "checkpoint.npz"
PREDICT_BATCH = 512
HISTORY_JSON = "history.json"
DATA_RECORD = "data.json"
#: the optimizer of a model file without ``training.optimizer`` (``lr`` 0.01, no momentum)
DEFAULT_OPTIMIZER = "sgd"
CALLBACK_HOOKS = ("on_train_begin", "on_epoch_begin", "on_batch_end", "on_epoch_end", "on_train_end")


class UntrainedWarning(UserWarning):
    """A model that was never trained was asked for predictions, scores or an export: its answers
    come from random initial weights."""


@dataclass
class History:
    """What :meth:`Model.fit` returns, and :attr:`Model.history`: one record per epoch (``epoch``, ``lr``,
    ``train_loss``, ``train_accuracy``, and ``val_loss``/``val_accuracy`` with validation data)."""

    epochs: list[dict] = field(default_factory=list)

    @property
    def history(self) -> dict[str, list[float | None]]:
        """Per key, the values of every epoch (Keras's ``history.history``); None for an epoch without it."""
        keys: list[str] = []
        for record in self.epochs:
            keys += [k for k in record if k not in keys]
        return {k: [r.get(k) for r in self.epochs] for k in keys if k != "epoch"}

    def __getitem__(self, key: str) -> list[float | None]:
        return self.history[key]

    def __len__(self) -> int:
        return len(self.epochs)

    def __repr__(self) -> str:
        last = self.epochs[-1] if self.epochs else {}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k != "epoch" and isinstance(v, float))
        return f"History({len(self.epochs)} epochs{': ' + shown if shown else ''})"


class Model:
    """A network with its weights and preprocessing. Build one with :func:`load`."""

    #: whether the weights were read from a run or a saved folder (see :attr:`trained`)
    _loaded_weights: bool = False
    _warned_untrained: bool = False

    def __init__(self, spec: ModelSpec, net: Network, preprocessing: Preprocessing | None = None, *,
                 source: str = "<model>", registry: Registry | None = None) -> None:
        self.spec = spec
        self.net = net
        self.loss = build_loss(spec, registry)  # before the preprocessing: its class names are checked per class
        self.preprocessing = preprocessing
        self.source = source
        self._registry = registry
        #: every epoch trained so far, across ``fit`` calls (and the run's, for a loaded run); ``save`` writes it
        self.history = History()
        #: what the last ``fit`` trained on (or the loaded run's ``data.json``); ``save`` writes it
        self.data_record: DataRecord | None = None

    @property
    def preprocessing(self) -> Preprocessing | None:
        """How raw inputs become the network's input, and the class names (None before training)."""
        return self._preprocessing

    @preprocessing.setter
    def preprocessing(self, value: Preprocessing | None) -> None:
        # every way class names reach a model (fit(class_names=), a run's or a saved folder's
        # preprocessing.json) ends here: one check that there is one name per output
        if value is not None:
            check_class_names(value.class_names, self, "class_names")
        self._preprocessing = value

    # -- description ------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample input shape, channels first."""
        return tuple(self.spec.input_shape)

    @property
    def num_outputs(self) -> int:
        """Classes the model tells apart: its output width, or a sequence model's classes per position."""
        return class_targets(self.loss, self.net.graph.output.output_shape)[1]

    @property
    def label_shape(self) -> tuple[int, ...]:
        """Per-sample shape of the class-id labels ``fit`` and ``evaluate`` take: ``()`` for one id per
        sample, ``(T,)`` for a sequence model (``sequence_cross_entropy``) with one id per position."""
        return class_targets(self.loss, self.net.graph.output.output_shape)[0]

    @property
    def class_names(self) -> list[str]:
        names = list(self.preprocessing.class_names) if self.preprocessing is not None else []
        return names + [str(i) for i in range(len(names), self.num_outputs)]

    @property
    def trained(self) -> bool:
        """Whether the weights come from training (a run directory, a saved folder, or :meth:`fit`)
        rather than from the random initialisation of a model file or a shipped model's name."""
        return self._loaded_weights or self.preprocessing is not None

    def _warn_if_untrained(self, what: str) -> None:
        # Keras answers from fresh weights silently; a warning (once per model) keeps that working
        # for pipeline tests while saying that the answers mean nothing
        if self.trained or self._warned_untrained:
            return
        self._warned_untrained = True
        warnings.warn(f"model {self.name!r} is untrained: {what} come from its random initial weights; call fit "
                      f"first, or load a run directory (layerkit.load('runs/...'))", UntrainedWarning, stacklevel=3)

    @property
    def input_background(self) -> str | None:
        """The training images' background: "dark" (light strokes on black, as MNIST), "light", or
        None when unknown. From the fitted standardization statistics where they say it (a mean
        under 0.25 or over 0.75 of the scale), else from the dataset (``Dataset.background``)."""
        if len(self.input_shape) != 3:
            return None
        pre = self.preprocessing
        if pre is not None and pre.mean is not None and pre.mean:
            mean = float(np.mean(pre.mean))
            if mean < 0.25 or mean > 0.75:
                return "dark" if mean < 0.25 else "light"
        name = self.spec.training.get("dataset")
        if not name:
            return None
        from layerkit.plugins.manager import get_registry

        try:
            dataset = (self._registry or get_registry()).get("dataset", name)
        except LayerkitError:
            return None
        return getattr(dataset, "background", None)

    @property
    def param_count(self) -> int:
        return self.net.param_count

    def summary(self, file: IO[str] | None = None) -> None:
        """Print the layer table: output shapes, parameters, FLOPs (what ``layerkit summary`` prints)."""
        from rich.console import Console

        console = Console(file=file or sys.stdout, highlight=False, width=None if file is None else 120)
        console.print(layer_table(self.net.graph, title=f"model {self.name}"))

    def __repr__(self) -> str:
        trained = "trained" if self.preprocessing is not None else "untrained"
        return (f"<layerkit.Model {self.name!r}: input {self.input_shape}, {self.num_outputs} outputs, "
                f"{self.param_count:,} parameters, {trained}>")

    # -- inputs -------------------------------------------------------------------
    def _pre(self) -> Preprocessing:
        if self.preprocessing is not None:
            return self.preprocessing
        options = self.spec.training.get("data") or {}
        normalize = options.get("normalize", "unit")
        if normalize == "standardize":
            raise LayerkitError(f"model {self.name!r} standardizes its inputs with statistics of its training data: "
                                f"call fit first, or load a trained run")
        # unit and none need no statistics: the same rule as training would fit
        return Preprocessing(normalize=normalize, input_shape=self.input_shape,
                             layout=options.get("layout", "auto"))

    def prepare(self, x: Any, source: str = "input") -> np.ndarray:
        """Raw inputs (uint8 or float images in any unambiguous layout) as the float32 network input."""
        return self._pre().apply(np.asarray(x), source)

    def _labels(self, y: Any, n: int, source: str) -> np.ndarray:
        y = check_numeric(np.asarray(y), source, "labels")
        shape = self.label_shape
        if shape:
            return self._sequence_labels(y, n, shape, source)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1 or len(y) != n:
            raise DataError(f"{source}: {n} inputs but labels of shape {y.shape}; expected ({n},) class ids")
        if y.size and (y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0)):
            raise DataError(f"{source}: labels are not whole numbers")
        y = y.astype(np.int64)
        if y.size and (y.min() < 0 or y.max() >= self.num_outputs):
            raise DataError(f"{source}: labels go from {y.min()} to {y.max()} but the model has "
                            f"{self.num_outputs} outputs (0 to {self.num_outputs - 1})")
        return y

    def _sequence_labels(self, y: np.ndarray, n: int, shape: tuple[int, ...], source: str) -> np.ndarray:
        dims = ", ".join(str(d) for d in shape)
        if tuple(y.shape) != (n, *shape):
            raise DataError(f"{source}: {n} inputs but labels of shape {y.shape}; expected ({n}, {dims}) class ids, "
                            f"one per position")
        if y.size and not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{source}: labels hold {y.dtype} values; expected integer class ids")
        y = y.astype(np.int64)
        ignore = getattr(self.loss, "ignore_index", None)
        counted = y if ignore is None else y[y != ignore]
        if counted.size and (counted.min() < 0 or counted.max() >= self.num_outputs):
            raise DataError(f"{source}: labels go from {counted.min()} to {counted.max()} but the model has "
                            f"{self.num_outputs} classes per position (0 to {self.num_outputs - 1}; "
                            f"{ignore} marks positions that count for nothing)")
        return y

    # -- training ------------------------------------------------------------------
    def fit(self, x: Any, y: Any, *, epochs: int | None = None, batch_size: int | None = None,
            validation_split: float | None = None, validation_data: tuple[Any, Any] | None = None,
            optimizer: str | dict | None = None, lr: float | None = None, callbacks: Sequence[Callback] = (),
            class_names: Sequence[str] | None = None, shuffle: bool = True, seed: int | None = None,
            verbose: int = 1) -> History:
        """Train on raw inputs ``x`` (uint8 or float images, or feature rows) and class ids ``y``.

        Every argument left out comes from the model file's ``training`` section (see docs/python-api.md
        for the table):

        - ``epochs``, ``batch_size``, ``seed``: default ``training.epochs`` / ``batch_size`` / ``seed``
          (10, 64 and 0 where the model file says nothing).
        - ``validation_split``: a fraction in (0, 1); the LAST fraction of ``x`` and ``y`` (before any
          shuffling, as Keras does) is held out and scored after every epoch. Default: the model file's
          ``training.data.validation_split``, else no validation. Not together with ``validation_data``.
        - ``validation_data``: a pair ``(x_val, y_val)`` scored after every epoch. Early stopping
          (``training.early_stopping``) watches the validation scores, never test data.
        - ``optimizer``: a name (``"adam"``) or a dict as in the model file (``{"type": "sgd", "lr": 0.1,
          "momentum": 0.9}``). Default: ``training.optimizer``, else plain SGD (``lr`` 0.01, no momentum).
        - ``lr``: the learning rate, replacing the optimizer's ``lr`` (the schedule starts from it).
        - ``callbacks``: :class:`layerkit.training.trainer.Callback` objects, added to the model file's
          ``training.callbacks``.
        - ``class_names``: one name per output, kept with the preprocessing (first ``fit`` only;
          default ``"0"``, ``"1"``, ...).
        - ``shuffle``: reshuffle the training samples every epoch (default True); False visits them in
          the given order.
        - ``verbose``: 1 (default) a progress bar per epoch on a terminal and in Jupyter and a summary
          line per epoch, 2 only the summary lines, 0 silent.

        The first ``fit`` fits the preprocessing on the training part of ``x``; later calls keep it and
        continue from the current weights with a fresh optimizer. Returns this call's
        :class:`History`; :attr:`history` keeps every epoch of every call, and :meth:`save` writes it.
        Bad values raise :class:`~layerkit.errors.LayerkitError`.
        """
        from layerkit.data import DataSplits
        from layerkit.data.record import DataRecord

        for key, value in (("epochs", epochs), ("batch_size", batch_size), ("seed", seed)):
            if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
                                      or value < (0 if key == "seed" else 1)):
                raise LayerkitError(f"{key} must be a {'non-negative' if key == 'seed' else 'positive'} "
                                    f"integer, got {value!r}")
        if verbose not in (0, 1, 2) or isinstance(verbose, float):
            raise LayerkitError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        if not isinstance(shuffle, (bool, np.bool_)):
            raise LayerkitError(f"shuffle must be True or False, got {shuffle!r}")
        if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, (list, tuple)):
            raise LayerkitError(f"callbacks must be a list of Callback objects, got {type(callbacks).__name__}")
        for i, cb in enumerate(callbacks):
            if isinstance(cb, type) or not all(callable(getattr(cb, hook, None)) for hook in CALLBACK_HOOKS):
                raise LayerkitError(f"callbacks[{i}]: {cb!r:.60} is not a layerkit.training.trainer.Callback "
                                    f"(subclass it and override any of {', '.join(CALLBACK_HOOKS)}; pass an "
                                    f"instance)")
        training = self._fit_training(optimizer, lr)
        for key, value in (("epochs", epochs), ("batch_size", batch_size), ("seed", seed)):
            if value is not None:
                training[key] = int(value)
        options = dict(training.get("data") or {})
        if validation_split is not None and validation_data is not None:
            raise LayerkitError("give validation_split or validation_data, not both")
        if validation_split is None and validation_data is None:
            validation_split = options.get("validation_split") or None
        if validation_split is not None and (isinstance(validation_split, bool)
                                             or not isinstance(validation_split, (int, float, np.floating))
                                             or not 0 < validation_split < 1):
            raise LayerkitError(f"validation_split must be a fraction between 0 and 1 (exclusive), "
                                f"got {validation_split!r}")
        if class_names is not None:
            if isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names):
                raise LayerkitError("class_names must be a list of strings, one per output")
            check_class_names(class_names, self, "class_names")

        raw_x = check_numeric(np.asarray(x), "x", "images")
        layout = options.get("layout", "auto")
        x = to_model_layout(raw_x, self.input_shape, "x", layout)
        raw_y = np.asarray(y)
        y = self._labels(raw_y, len(x), "y")
        if len(x) == 0:
            raise DataError("x: no training samples")
        x_val = y_val = None
        if validation_split is not None:
            split_at = int(len(x) * (1 - float(validation_split)))  # Keras's rule: the last fraction
            if split_at < 1 or split_at >= len(x):
                raise LayerkitError(f"validation_split {validation_split} of {len(x)} samples leaves "
                                    f"{len(x) - split_at} for validation and {split_at} for training")
            x, x_val, y, y_val = x[:split_at], x[split_at:], y[:split_at], y[split_at:]
        if self.preprocessing is None:
            names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_outputs)]
            self.preprocessing, x = Preprocessing.fit_transform(
                x, options.get("normalize", "unit"), input_shape=self.input_shape, class_names=names, layout=layout,
                tokens=self.net.input_dtype == np.int64)
        else:
            x = self.preprocessing.transform(x, "x")
        if x_val is not None:
            x_val = self.preprocessing.transform(x_val, "validation_split")
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise LayerkitError("validation_data must be a pair (x_val, y_val)")
            x_val = self.prepare(validation_data[0], "validation_data")
            y_val = self._labels(validation_data[1], len(x_val), "validation_data")
        empty = np.empty((0, *self.input_shape), dtype=np.float32)
        data = DataSplits(x_train=x, y_train=y, x_test=empty, y_test=np.empty(0, dtype=np.int64), x_val=x_val,
                          y_val=y_val, source="arrays", class_names=self.class_names, preprocessing=self.preprocessing)
        early = training.get("early_stopping")
        if early:
            monitor = str(early.get("monitor", "val_loss"))
            if monitor.startswith("test_"):
                if x_val is None:
                    training.pop("early_stopping")  # fit has no test split, and selects on no test data
                else:
                    training["early_stopping"] = {**early, "monitor": "val_" + monitor[len("test_"):]}
            elif monitor.startswith("val_") and x_val is None:
                raise LayerkitError(f"the model file's training.early_stopping monitors {monitor}: pass "
                                    f"validation_split= or validation_data= to fit")
        shown: list[Callback] = []
        if verbose:
            from rich.console import Console

            from layerkit.training.progress import ProgressDisplay
            shown.append(ProgressDisplay(Console(highlight=False), quiet=verbose == 2))
        loggers = build_callbacks(training.get("callbacks"), None, self._registry)
        trainer = Trainer(self.net, self.loss, data, training, callbacks=[*shown, *loggers, *callbacks],
                          registry=self._registry, shuffle=bool(shuffle))
        result = trainer.fit()
        history = History([dict(r) for r in result.history])
        offset = int(self.history.epochs[-1].get("epoch", len(self.history))) if self.history.epochs else 0
        self.history.epochs += [{**r, "epoch": offset + int(r["epoch"])} for r in history.epochs]
        record_options = {**options, "validation_split": float(validation_split) if validation_split else None}
        self.data_record = DataRecord.of_arrays(raw_x, raw_y, self.class_names, record_options,
                                                int(trainer.seed), data.counts())
        return history

    def _fit_training(self, optimizer: str | dict | None, lr: float | None) -> dict:
        """The model file's ``training`` section with ``fit``'s ``optimizer`` and ``lr`` applied and checked."""
        training = copy.deepcopy(self.spec.training)
        if optimizer is None and lr is None:
            return training
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating))
                               or not np.isfinite(lr) or lr <= 0):
            raise LayerkitError(f"lr must be a positive number, got {lr!r}")
        if optimizer is None:
            config = dict(training.get("optimizer") or {"type": DEFAULT_OPTIMIZER})
        elif isinstance(optimizer, str):
            config = {"type": optimizer}
        elif isinstance(optimizer, dict):
            config = copy.deepcopy(optimizer)
        else:
            raise LayerkitError(f"optimizer must be a name such as 'adam' or a dict such as "
                                f"{{'type': 'sgd', 'lr': 0.1}}, got {type(optimizer).__name__}")
        if lr is not None:
            config["lr"] = float(lr)
        raw = copy.deepcopy({k: v for k, v in self.spec.raw.items() if k != "$schema"})
        raw["training"] = {**(raw.get("training") or {}), "optimizer": config}
        # checked as the model file's own training.optimizer would be: type, parameters, ranges
        checked = spec_from_dict(raw, source="fit(optimizer=...)", registry=self._registry)
        training["optimizer"] = checked.training["optimizer"]
        return training

    # -- inference -------------------------------------------------------------------
    def _outputs(self, x: np.ndarray) -> np.ndarray:
        if not len(x):
            return np.empty((0, *self.net.graph.output.output_shape), np.float32)
        return self.net.predict(x, PREDICT_BATCH)  # the inference path: no caches, batch norm folded

    def predict_proba(self, x: Any) -> np.ndarray:
        """Class probabilities (softmax of the outputs for ``softmax_cross_entropy``; the outputs
        themselves for other losses), one row per input ((N, T, K) for ``sequence_cross_entropy``)."""
        inputs = self.prepare(x)
        self._warn_if_untrained("its probabilities")
        return self.loss.probabilities(self._outputs(inputs))

    def predict(self, x: Any) -> np.ndarray:
        """Predicted class ids (int64), one per input (a sequence model: one per position, (N, T)).
        On an untrained model (see :attr:`trained`)
        this warns with :class:`UntrainedWarning` (once per model) and answers anyway."""
        inputs = self.prepare(x)
        self._warn_if_untrained("its predictions")
        return self.loss.predict(self._outputs(inputs)).astype(np.int64)

    def evaluate(self, x: Any, y: Any) -> dict[str, float]:
        """``{"loss": ..., "accuracy": ...}`` on raw inputs ``x`` and class ids ``y``. For a sequence
        model ``y`` is (N, T) and both are over the positions whose label is not the loss's
        ``ignore_index``: the mean loss per token and the token accuracy."""
        inputs = self.prepare(x, "x")
        labels = self._labels(y, len(inputs), "y")
        self._warn_if_untrained("its scores")
        loss_value, accuracy, _ = evaluate(self.net, self.loss, inputs, labels)
        return {"loss": loss_value, "accuracy": accuracy}

    def generate(self, prompt: str, length: int = 200, *, temperature: float = 1.0, top_k: int | None = None,
                 seed: int | None = None) -> str:
        """The ``length`` characters (bytes, for a byte-level model) a language model trained on the
        ``text`` dataset writes after ``prompt``, drawn one at a time from its scores at the last of
        its ``T`` input positions: divided by ``temperature`` (> 0; lower is greedier), cut to the
        ``top_k`` most likely, softmaxed. ``seed`` makes the draw repeatable. A prompt character
        outside the model's vocabulary is a :class:`~layerkit.errors.LayerkitError` naming it."""
        from layerkit.api.generate import generate

        return generate(self, prompt, length, temperature, top_k, seed)

    # -- saving ----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``model.json``, ``weights.npz``, ``preprocessing.json``, the training history
        (``history.json`` and ``history.csv``, as ``layerkit fit`` writes them) and the record of the
        data it was trained on (``data.json``: for ``fit`` on arrays, their shapes, dtypes, SHA-256 and
        class names) into the folder ``path`` (created if needed). :func:`load` reads it back, and so
        do ``layerkit predict``, ``export``, ``plot`` and ``evaluate``."""
        path = Path(path)
        if (path / CHECKPOINT).exists():
            raise LayerkitError(f"{path}: holds a training run (checkpoint.npz); save into another folder")
        if path.exists() and not path.is_dir():
            raise LayerkitError(f"{path}: not a directory")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LayerkitError(f"{path}: cannot create the folder ({exc.strerror or exc})") from None
        raw = {k: v for k, v in self.spec.raw.items() if k != "$schema"}
        write_text_atomic(path / MODEL_FILE, json.dumps(raw, indent=2) + "\n", "model file")
        self.net.save_weights(path / WEIGHTS)
        self._pre().save(path / PREPROCESSING_FILE)
        from layerkit.training.runs import RunDir

        RunDir(path).write_history(self.history.epochs)
        if self.data_record is not None:
            self.data_record.save(path / DATA_RECORD)
        elif (path / DATA_RECORD).is_file():
            (path / DATA_RECORD).unlink()  # an earlier save's record is not this model's
        return path

    def export_onnx(self, path: str | Path) -> Path:
        """Write the model, its preprocessing and its softmax as an ONNX file (needs the onnx extra)."""
        from layerkit.export.onnx import save_onnx, to_onnx

        self._warn_if_untrained("the exported weights")
        return save_onnx(to_onnx(self.net, self._pre(), self.loss, name=self.name), path)

    def weights(self) -> dict[str, np.ndarray]:
        """Every tensor by ``params/LAYER/NAME`` and ``state/LAYER/NAME`` (views, not copies)."""
        return self.net.weights_dict()

    # -- fine-tuning -------------------------------------------------------------------
    def load_weights(self, source: str | Path, by_name: bool = True, *, verbose: bool = True) -> LoadReport:
        """Load the weights of ``source``: a run directory, a folder written by :meth:`save`, or a
        weights (or checkpoint) ``.npz``.

        ``by_name=True``: every tensor whose layer name and shape match is loaded; the others keep
        their values (a new head stays initialized). ``by_name=False``: the source's tensors in order,
        and every one must match this model's in number and shape. Raises
        :class:`~layerkit.errors.LayerkitError` when nothing matches. Returns the report of which
        tensors were loaded, skipped (and why) and new, and prints it unless ``verbose=False``.
        """
        from layerkit.training.weights import load_by_name

        report = load_by_name(self.net, source, by_name=by_name)
        if verbose:
            print(report)
        self._loaded_weights = True
        return report

    def _layer_names(self, names: Sequence[str], what: str) -> set[str]:
        known = [node.name for node in self.net.nodes]
        for name in names:
            if name not in known:
                close = difflib.get_close_matches(str(name), known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f" (its layers: {', '.join(known)})"
                raise LayerkitError(f"{what}: model {self.name!r} has no layer {name!r}{hint}")
        return set(names) if names else set(known)

    def _set_trainable(self, names: set[str], trainable: bool) -> None:
        for layer in self.spec.layers:
            if layer.name in names:
                layer.trainable = trainable
        raw_layers = self.spec.raw.get("layers") or []
        for layer, raw in zip(self.spec.layers, raw_layers, strict=False):
            if layer.name in names and isinstance(raw, dict):
                if trainable:
                    raw.pop("trainable", None)
                else:
                    raw["trainable"] = False
        self.net.set_frozen(frozenset(layer.name for layer in self.spec.layers if not layer.trainable))

    def freeze(self, *layers: str) -> None:
        """Freeze the named layers (all of them when none is named): ``fit`` neither updates nor decays
        their tensors and skips their parameter gradients, as ``"trainable": false`` in the model file
        (which :meth:`save` then writes). Batch norm's running statistics still update in training."""
        self._set_trainable(self._layer_names(layers, "freeze"), False)

    def unfreeze(self, *layers: str) -> None:
        """Let the named layers (all of them when none is named) learn again."""
        self._set_trainable(self._layer_names(layers, "unfreeze"), True)

    @property
    def frozen_layers(self) -> list[str]:
        """The names of the frozen layers, in the model file's order."""
        return [layer.name for layer in self.spec.layers if not layer.trainable]


def layer_table(graph: Graph, title: str | None = None) -> Table:
    """The rich table of ``layerkit summary`` and :meth:`Model.summary`: one row per layer."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    columns: list[tuple[str, Literal["left", "right"]]] = [
        ("#", "right"), ("layer", "left"), ("type", "left"), ("inputs", "left"), ("output shape", "left"),
        ("params", "right"), ("FLOPs", "right")]
    for column, justify in columns:
        table.add_column(column, justify=justify)
    table.add_row("", "input", "", "", str(graph.input_shape), "", "")
    for node in graph.nodes:
        params = f"{node.param_count:,}" + (" (frozen)" if not node.spec.trainable and node.param_count else "")
        table.add_row(str(node.spec.index), node.name, node.spec.type, ", ".join(node.inputs),
                      str(node.output_shape), params, f"{node.flops:,}")
    table.add_section()
    table.add_row("", "total", "", "", "", f"{graph.param_count:,}", f"{graph.flops:,}")
    return table


def load(source: str | Path | dict, *, seed: int | None = None, registry: Registry | None = None) -> Model:
    """A :class:`Model` from a model file path, a shipped model's name (``"lenet5"``), a model dict,
    or a folder written by ``layerkit fit`` or :meth:`Model.save` (weights and preprocessing included).
    A model file starts from fresh weights (``seed``, default ``training.seed``)."""
    if isinstance(source, dict):
        spec = spec_from_dict(source, registry=registry)
        return Model(spec, build_model(spec, seed=seed, registry=registry), source="<dict>", registry=registry)
    path = Path(source)
    if path.is_dir():
        return _load_dir(path, registry)
    raw, name = read_model_file(path)
    spec = spec_from_dict(raw, source=name, registry=registry)
    return Model(spec, build_model(spec, seed=seed, registry=registry), source=name, registry=registry)


def check_class_names(names: Sequence[str], model: Model, source: str) -> None:
    """Refuse class names that are not one per output of ``model`` (an autoencoder has none to check)."""
    if not names or (model.spec.training.get("data") or {}).get("target") == "input":
        return
    if len(names) != model.num_outputs:
        raise LayerkitError(f"{source}: {len(names)} names for a model with {model.num_outputs} outputs "
                            f"(model {model.name!r}); give one name per output")


def not_a_run(path: str | Path, command: str | None = None) -> str:
    """Why ``path`` is no run directory (nor a folder from :meth:`Model.save`), in one line that says
    what would do: a missing path, an empty folder, the folder that holds the runs (``runs/``)."""
    path = Path(path)
    if not path.exists():
        return f"{path}: no such file or directory; give a run directory written by 'layerkit fit'"
    try:
        entries = list(itertools.islice(path.iterdir(), 10_000))
    except OSError as exc:
        return f"{path}: cannot list the folder ({exc.strerror or exc})"
    runs = sorted((p for p in entries if (p / MODEL_FILE).is_file()), key=lambda p: p.name)
    if runs:
        shown = ", ".join(p.name for p in runs[:3]) + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")
        newest = max(runs, key=lambda p: p.stat().st_mtime)
        return (f"{path}: not a saved model or run directory but a folder of runs ({shown}); give one of them, "
                f"e.g. {command + ' ' if command else ''}{newest}")
    if not entries:
        return (f"{path}: not a saved model or run directory (an empty folder); give the folder 'layerkit fit' wrote "
                f"(runs/NAME-TIMESTAMP)")
    return f"{path}: not a saved model or run directory (no {MODEL_FILE})"


def _load_dir(path: Path, registry: Registry | None = None) -> Model:
    model_file = path / MODEL_FILE
    if not model_file.is_file():
        raise LayerkitError(not_a_run(path))
    raw, name = read_model_file(model_file)
    spec = spec_from_dict(raw, source=name, registry=registry)
    net = build_model(spec, registry=registry)
    if (path / WEIGHTS).is_file():
        net.load_weights(path / WEIGHTS)
    elif (path / CHECKPOINT).is_file():  # a run still in progress: its last finished epoch
        arrays = load_npz(path / CHECKPOINT)
        net.set_weights({k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")},
                        source=str(path / CHECKPOINT))
    else:
        raise LayerkitError(f"{path}: no {WEIGHTS} (nor a {CHECKPOINT}): nothing trained to load")
    pre = None
    if (path / PREPROCESSING_FILE).is_file():
        pre = Preprocessing.load(path / PREPROCESSING_FILE)
        if tuple(pre.input_shape) != tuple(spec.input_shape):
            raise DataError(f"{path / PREPROCESSING_FILE}: input shape {tuple(pre.input_shape)} is not the "
                            f"model's {tuple(spec.input_shape)}")
        check_class_names(pre.class_names, Model(spec, net, source=str(path), registry=registry),
                          f"{path / PREPROCESSING_FILE}: class_names")
    elif ((spec.training.get("data") or {}).get("normalize", "unit")) == "standardize":
        Preprocessing.load(path)  # raises, naming the missing file
    model = Model(spec, net, pre, source=str(path), registry=registry)
    model._loaded_weights = True
    if (path / HISTORY_JSON).is_file():
        from layerkit.training.runs import RunDir

        records = RunDir(path).history()
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise LayerkitError(f"{path / HISTORY_JSON}: expected a list of per-epoch records")
        model.history = History(records)
    if (path / DATA_RECORD).is_file():
        model.data_record = DataRecord.load(path / DATA_RECORD)
    return model


def load_dataset(name: str = "mnist", data_dir: str | Path | None = None, *, registry: Registry | None = None
                 ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``(x_train, y_train), (x_test, y_test)`` of a registered dataset as stored: raw values (``uint8``
    images for MNIST), labels as int64. Looked for as ``layerkit fit`` does (``data_dir``,
    ``$LAYERKIT_DATA_DIR``, the cache); MNIST falls back to the embedded 5,000/1,000-image sample.
    Sequence datasets (``text``, ``copy``...) give their int64 ``(N, T)`` token windows and targets
    with their default options (``text``: windows of 64, the default corpus without ``data_dir``)."""
    if registry is None:
        from layerkit.plugins.manager import get_registry
        registry = get_registry()
    dataset = registry.get("dataset", name)()
    raw = dataset.load(data_dir)
    from layerkit.data.sequences import SequenceDataset

    if isinstance(dataset, SequenceDataset):  # token ids are made, not stored: the windows as training sees them
        splits = dataset.prepare(raw, {})
        return (splits.x_train, splits.y_train), (splits.x_test, splits.y_test)
    return (np.asarray(raw.x_train), np.asarray(raw.y_train, dtype=np.int64)), \
        (np.asarray(raw.x_test), np.asarray(raw.y_test, dtype=np.int64))


def check_grads(model: Model | str | Path | dict, *, batch_size: int = 2, samples: int = 32, seed: int = 0,
                whole_model: bool = True, verbose: bool = True) -> GradCheckReport:
    """Check every layer's gradients (and the whole model's loss gradient) against central differences,
    in float64. Prints the report unless ``verbose=False``; returns it (``report.ok``, ``report.to_dict()``)."""
    from layerkit.gradcheck.report import check_model

    from layerkit.modelfile.build import SizeLimits, check_size

    if not isinstance(model, Model):
        model = load(model)
    # the check runs in float64 on batch_size samples: its own memory need, checked before allocating
    check_size(model.net.graph, SizeLimits(batch_size=batch_size, itemsize=8))
    report = check_model(model.net.astype(np.float64), batch_size=batch_size, samples=samples, seed=seed,
                         whole_model=whole_model)
    if verbose:
        from rich.console import Console

        console = Console(highlight=False)
        if not console.is_terminal and not console.is_jupyter:
            console = Console(highlight=False, width=140)
        report.render(console)
    return report
