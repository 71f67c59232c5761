"""A model you can train, evaluate, save, load and predict with from Python.

A :class:`Model` is a model file (the network and how to train it), its weights
and its :class:`~layerkit.data.preprocess.Preprocessing` (how raw inputs become
what the first layer saw in training, and the class names). It is what
``layerkit.load`` returns and what every CLI command that uses a trained model
goes through.
"""

from __future__ import annotations

import copy
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
from layerkit.errors import DataError, LayerkitError
from layerkit.fileio import write_text_atomic
from layerkit.modelfile.build import build_model
from layerkit.modelfile.spec import ModelSpec, read_model_file, spec_from_dict
from layerkit.nn.network import load_npz
from layerkit.training.trainer import Callback, Trainer, build_callbacks, build_loss, evaluate

if TYPE_CHECKING:
    from rich.table import Table

    from layerkit.gradcheck.report import GradCheckReport
    from layerkit.modelfile.shapes import Graph
    from layerkit.nn.network import Network
    from layerkit.plugins.registry import Registry

MODEL_FILE = "model.json"
WEIGHTS = "weights.npz"
CHECKPOINT = "checkpoint.npz"
PREDICT_BATCH = 512


class UntrainedWarning(UserWarning):
    """A model that was never trained was asked for predictions, scores or an export: its answers
    come from random initial weights."""


@dataclass
class History:
    """What :meth:`Model.fit` returns: one record per epoch (``epoch``, ``lr``, ``train_loss``,
    ``train_accuracy``, and ``val_loss``/``val_accuracy`` with validation data)."""

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
        self.preprocessing = preprocessing
        self.source = source
        self._registry = registry
        self.loss = build_loss(spec, registry)

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
        return int(np.prod(self.net.graph.output.output_shape))

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

    # -- training ------------------------------------------------------------------
    def fit(self, x: Any, y: Any, *, epochs: int | None = None, batch_size: int | None = None,
            validation_data: tuple[Any, Any] | None = None, callbacks: Sequence[Callback] = (),
            verbose: int = 1, seed: int | None = None, class_names: Sequence[str] | None = None) -> History:
        """Train on raw inputs ``x`` (uint8 or float images) and class ids ``y`` with the model file's
        ``training`` settings (optimizer, schedule, augmentation...); ``epochs``, ``batch_size`` and ``seed``
        override them. The first ``fit`` fits the preprocessing on ``x``; later calls keep it and
        continue from the current weights.

        ``verbose``: 1 a progress bar per epoch (on a terminal and in Jupyter) and a summary line per
        epoch, 2 only the summary lines, 0 silent. ``callbacks`` are
        :class:`layerkit.training.trainer.Callback` objects; the model file's ``training.callbacks``
        are added.
        """
        from layerkit.data import DataSplits

        x = check_numeric(np.asarray(x), "x", "images")
        options = self.spec.training.get("data") or {}
        layout = options.get("layout", "auto")
        x = to_model_layout(x, self.input_shape, "x", layout)
        y = self._labels(y, len(x), "y")
        if len(x) == 0:
            raise DataError("x: no training samples")
        if self.preprocessing is None:
            names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_outputs)]
            self.preprocessing, x = Preprocessing.fit_transform(
                x, options.get("normalize", "unit"), input_shape=self.input_shape, class_names=names, layout=layout)
        else:
            x = self.preprocessing.transform(x, "x")
        x_val = y_val = None
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise LayerkitError("validation_data must be a pair (x_val, y_val)")
            x_val = self.prepare(validation_data[0], "validation_data")
            y_val = self._labels(validation_data[1], len(x_val), "validation_data")
        empty = np.empty((0, *self.input_shape), dtype=np.float32)
        data = DataSplits(x_train=x, y_train=y, x_test=empty, y_test=np.empty(0, dtype=np.int64), x_val=x_val,
                          y_val=y_val, source="arrays", class_names=self.class_names, preprocessing=self.preprocessing)
        training = copy.deepcopy(self.spec.training)
        for key, value in (("epochs", epochs), ("batch_size", batch_size), ("seed", seed)):
            if value is not None:
                if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "seed" else 1):
                    raise LayerkitError(f"{key} must be a {'non-negative' if key == 'seed' else 'positive'} "
                                        f"integer, got {value!r}")
                training[key] = value
        early = training.get("early_stopping")
        if early and str(early.get("monitor", "val_loss")).startswith("test_"):
            training.pop("early_stopping")  # no test split here
        shown: list[Callback] = []
        if verbose:
            from rich.console import Console

            from layerkit.training.progress import ProgressDisplay
            shown.append(ProgressDisplay(Console(highlight=False), quiet=verbose == 2))
        loggers = build_callbacks(training.get("callbacks"), None, self._registry)
        trainer = Trainer(self.net, self.loss, data, training, callbacks=[*shown, *loggers, *callbacks],
                          registry=self._registry)
        result = trainer.fit()
        return History(list(result.history))

    # -- inference -------------------------------------------------------------------
    def _outputs(self, x: np.ndarray) -> np.ndarray:
        if not len(x):
            return np.empty((0, *self.net.graph.output.output_shape), np.float32)
        return self.net.predict(x, PREDICT_BATCH)  # the inference path: no caches, batch norm folded

    def predict_proba(self, x: Any) -> np.ndarray:
        """Class probabilities (softmax of the outputs for ``softmax_cross_entropy``; the outputs
        themselves for other losses), one row per input."""
        inputs = self.prepare(x)
        self._warn_if_untrained("its probabilities")
        return self.loss.probabilities(self._outputs(inputs))

    def predict(self, x: Any) -> np.ndarray:
        """Predicted class ids (int64), one per input. On an untrained model (see :attr:`trained`)
        this warns with :class:`UntrainedWarning` (once per model) and answers anyway."""
        inputs = self.prepare(x)
        self._warn_if_untrained("its predictions")
        return self.loss.predict(self._outputs(inputs)).astype(np.int64)

    def evaluate(self, x: Any, y: Any) -> dict[str, float]:
        """``{"loss": ..., "accuracy": ...}`` on raw inputs ``x`` and class ids ``y``."""
        inputs = self.prepare(x, "x")
        labels = self._labels(y, len(inputs), "y")
        self._warn_if_untrained("its scores")
        loss_value, accuracy, _ = evaluate(self.net, self.loss, inputs, labels)
        return {"loss": loss_value, "accuracy": accuracy}

    # -- saving ----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``model.json``, ``weights.npz`` and ``preprocessing.json`` into the folder ``path``
        (created if needed); :func:`load` reads it back, and so do ``layerkit predict`` and ``export``."""
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
        return path

    def export_onnx(self, path: str | Path) -> Path:
        """Write the model, its preprocessing and its softmax as an ONNX file (needs the onnx extra)."""
        from layerkit.export.onnx import save_onnx, to_onnx

        self._warn_if_untrained("the exported weights")
        return save_onnx(to_onnx(self.net, self._pre(), self.loss, name=self.name), path)

    def weights(self) -> dict[str, np.ndarray]:
        """Every tensor by ``params/LAYER/NAME`` and ``state/LAYER/NAME`` (views, not copies)."""
        return self.net.weights_dict()


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
        table.add_row(str(node.spec.index), node.name, node.spec.type, ", ".join(node.inputs),
                      str(node.output_shape), f"{node.param_count:,}", f"{node.flops:,}")
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
    return model


def load_dataset(name: str = "mnist", data_dir: str | Path | None = None, *, registry: Registry | None = None
                 ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``(x_train, y_train), (x_test, y_test)`` of a registered dataset as stored: raw values (``uint8``
    images for MNIST), labels as int64. Looked for as ``layerkit fit`` does (``data_dir``,
    ``$LAYERKIT_DATA_DIR``, the cache); MNIST falls back to the embedded 5,000/1,000-image sample."""
    if registry is None:
        from layerkit.plugins.manager import get_registry
        registry = get_registry()
    raw = registry.get("dataset", name)().load(data_dir)
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
