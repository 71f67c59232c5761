"""Datasets: finding the files, reading them, and preparing arrays for a model.

A dataset loader is a :class:`Dataset` subclass registered through the
``layerkit_register_datasets`` hook (built-ins in :mod:`layerkit.data.builtin`).
It only knows how to recognise and read its files; :func:`load_data` does the
rest for every dataset alike: where to look (``--data-dir``, the model file's
``training.data.data_dir``, ``$LAYERKIT_DATA_DIR``, the cache directory, then
an embedded sample if the dataset ships one), class subsets, limits, the
validation split, normalisation, and checking that the data fits the model.

Images come out float32, channels first ``(N, C, H, W)``; labels int64.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np

from layerkit.errors import DataError
from layerkit.plugins import registry_or_global
from layerkit.data.preprocess import Preprocessing, check_numeric, to_model_layout

if TYPE_CHECKING:
    from layerkit.plugins.registry import Registry

DATA_DIR_ENV = "LAYERKIT_DATA_DIR"


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/layerkit`` or ``~/.cache/layerkit``: where ``layerkit data download`` puts files."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "layerkit"


@dataclass
class RawData:
    """What a loader read: images with a leading sample axis, integer labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str  # the file or directory read, for messages and run metadata
    notice: str | None = None  # one line the user should see (e.g. "using the embedded sample")
    #: the files read, for the run's data fingerprint (default: what :meth:`Dataset.find` returned,
    #: when that is a file)
    files: list[str] = field(default_factory=list)
    #: the resolved absolute file or folder :meth:`Dataset.find` returned; None for an embedded sample
    location: str | None = None
    #: the loader's own digests (``{"path", "size", "sha256"}`` dicts) instead of hashing ``files``
    fingerprint: list[dict] | None = None


@dataclass
class DataSplits:
    """Prepared arrays, ready for the trainer."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    source: str = ""
    notice: str | None = None
    class_names: list[str] = field(default_factory=list)
    preprocessing: Preprocessing | None = None
    files: list[str] = field(default_factory=list)
    location: str | None = None
    fingerprint: list[dict] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def counts(self) -> dict[str, int]:
        """Samples per split: ``{"train": ..., "validation": ..., "test": ...}``."""
        return {"train": len(self.x_train), "validation": 0 if self.x_val is None else len(self.x_val),
                "test": len(self.x_test)}


class Dataset:
    """Base class. Subclasses set ``name``, ``description``, ``files`` (what to put in
    the data directory, for messages and docs) and implement :meth:`find` and :meth:`read`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    files: ClassVar[Sequence[str]] = ()
    #: per-sample shape, channels first, when the format fixes it
    image_shape: ClassVar[tuple[int, ...] | None] = None
    class_names: ClassVar[Sequence[str]] = tuple(str(i) for i in range(10))
    #: "dark": light strokes on a dark background (MNIST), "light": dark on light, None: no one
    #: background (photos); ``layerkit predict`` notes an input of the other kind (``--invert``)
    background: ClassVar[str | None] = None

    def find(self, location: Path) -> Path | None:
        """The file or directory under ``location`` this loader can read, or None."""
        raise NotImplementedError

    def read(self, found: Path) -> RawData:
        """Read what :meth:`find` returned; raise :class:`DataError` naming the file on any problem."""
        raise NotImplementedError

    def prepare(self, raw: RawData, options: dict, *, seed: int = 0, input_shape: Sequence[int] | None = None,
                num_outputs: int | None = None, preprocessing: Preprocessing | None = None,
                tokens: bool = False, label_shape: Sequence[int] = (), ignore_index: int | None = None
                ) -> DataSplits:
        """What :meth:`read` returned as the splits a model trains on: images and class ids, by
        :func:`prepare`; sequence datasets (:mod:`layerkit.data.sequences`) make token windows."""
        return prepare(raw, options, seed=seed, input_shape=input_shape, num_outputs=num_outputs,
                       class_names=self.class_names, preprocessing=preprocessing, tokens=tokens,
                       label_shape=label_shape, ignore_index=ignore_index)

    def fallback(self) -> RawData | None:
        """Data to use when no location has the files (an embedded sample), or None."""
        return None

    def load(self, data_dir: str | Path | None = None, *, embedded: bool = False) -> RawData:
        """Find and read the dataset: the given directory (strictly), else ``$LAYERKIT_DATA_DIR``,
        then the cache directory, then :meth:`fallback`; ``embedded`` goes to :meth:`fallback`
        directly (a run trained on the embedded sample resumes on it even after a download)."""
        if embedded:
            raw = self.fallback()
            if raw is None:
                raise DataError(f"dataset {self.name!r} has no embedded sample")
            return raw
        if data_dir is not None:
            found = self._search([Path(data_dir).expanduser()], strict=True)
            if found is None:
                raise DataError(f"{data_dir}: no {self.name} files here (expected {self.expected()})")
            return self._read(found)
        places = []
        if os.environ.get(DATA_DIR_ENV):
            places.append(Path(os.environ[DATA_DIR_ENV]).expanduser())
        places.append(cache_dir())
        found = self._search(places)
        if found is not None:
            return self._read(found)
        raw = self.fallback()
        if raw is not None:
            return raw
        looked = ", ".join(str(p) for p in places)
        raise DataError(f"dataset {self.name!r}: no files found (looked in {looked} and their "
                        f"{self.name}/ subfolders); pass --data-dir DIR holding {self.expected()}")

    def _read(self, found: Path) -> RawData:
        try:
            raw = self.read(found)
        except PermissionError as exc:
            raise DataError(f"{exc.filename or found}: permission denied; make it readable "
                            f"(chmod) or copy the data elsewhere") from None
        except OSError as exc:
            raise DataError(f"{exc.filename or found}: cannot read ({exc.strerror or exc})") from None
        if raw.location is None:
            raw.location = str(Path(found).resolve())
        if not raw.files:
            raw.files = [raw.location] if Path(raw.location).is_file() else []
        return raw

    def expected(self) -> str:
        return ", ".join(self.files) or "its files"

    def _search(self, places: list[Path], strict: bool = False) -> Path | None:
        for place in places:
            for candidate in (place, place / self.name):
                try:
                    found = self.find(candidate) if candidate.exists() else None
                except PermissionError:
                    # an unreadable folder is reported, never skipped: skipping it would
                    # silently train on whatever comes next (the embedded sample)
                    raise DataError(f"{candidate}: permission denied while looking for {self.name} files; "
                                    f"make it readable (chmod), or pass --data-dir with another folder") from None
                except OSError as exc:
                    raise DataError(f"{candidate}: cannot look for {self.name} files here "
                                    f"({exc.strerror or exc})") from None
                if found is not None:
                    return found
            if strict:
                break
        return None


# -- preparation -----------------------------------------------------------------

def _check_images(x: Any, source: str, split: str) -> np.ndarray:
    x = check_numeric(x, source, f"{split} images")
    if x.ndim < 2:
        raise DataError(f"{source}: {split} images have shape {x.shape}; expected (N, H, W), (N, C, H, W), "
                        f"(N, H, W, C) or (N, features)")
    return x


def _check_labels(y: np.ndarray, n: int, source: str, split: str, shape: tuple[int, ...] = (),
                  ignore_index: int | None = None) -> np.ndarray:
    """``y`` as int64 class ids of shape ``(n, *shape)``: ``shape`` is ``()`` for one id per sample,
    ``(T,)`` for a sequence model's one per position (where ``ignore_index`` marks padding)."""
    y = check_numeric(y, source, f"{split} labels")
    if shape:
        if y.ndim < 1 or tuple(y.shape[1:]) != tuple(shape):
            dims = ", ".join(str(d) for d in shape)
            raise DataError(f"{source}: {split} labels have shape {y.shape}, expected (N, {dims}): one class id "
                            f"per position of the model's (steps, classes) output")
        if len(y) != n:
            raise DataError(f"{source}: {n} {split} samples but {len(y)} label rows")
        if y.size and not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{source}: {split} labels hold {y.dtype} values; per-position labels must be integer "
                            f"class ids")
        y = y.astype(np.int64)
        counted = y if ignore_index is None else y[y != ignore_index]
        if counted.size and counted.min() < 0:
            raise DataError(f"{source}: {split} labels include {int(counted.min())}, a negative class id"
                            + ("" if ignore_index is None else f" that is not the loss's ignore_index {ignore_index}"))
        return y
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{source}: {split} labels have shape {y.shape}, expected (N,)")
    if len(y) != n:
        raise DataError(f"{source}: {n} {split} images but {len(y)} labels")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or not np.all(np.equal(np.mod(y, 1), 0)):
            raise DataError(f"{source}: {split} labels are not whole numbers")
        if y.max() >= 2 ** 62:
            raise DataError(f"{source}: {split} labels go up to {y.max():g}, too large for class ids")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise DataError(f"{source}: {split} labels include negative values")
    return y


def _select_classes(x: np.ndarray, y: np.ndarray, classes: Sequence[int], source: str, split: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    # sorted lookup, not a table indexed by label: a class id of 10**9 must not allocate 8 GB
    wanted = np.asarray(classes, dtype=np.int64)
    order = np.argsort(wanted, kind="stable")
    sorted_ids = wanted[order]
    pos = np.clip(np.searchsorted(sorted_ids, y), 0, len(sorted_ids) - 1)
    keep = sorted_ids[pos] == y
    present = set(np.unique(y[keep]).tolist())
    absent = [c for c in classes if c not in present]
    if absent:
        raise DataError(f"{source}: training.data.classes asks for {absent}, which no {split} sample has")
    return x[keep], order[pos[keep]].astype(np.int64)



def split_validation(x: np.ndarray, y: np.ndarray, split: float | None, seed: int, src: str, what: str
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``(x_train, y_train, x_val, y_val)``: the fraction ``split`` of the training ``what`` (samples,
    sequences) held out for validation, chosen by a seeded permutation, not the file's tail (files are
    often sorted by class); no validation arrays when ``split`` is 0 or None."""
    fraction = float(split or 0)
    if not fraction:
        return x, y, None, None
    n_val = int(round(len(x) * fraction))
    if n_val < 1 or n_val >= len(x):
        raise DataError(f"{src}: validation_split {fraction} of {len(x)} training {what} leaves "
                        f"{n_val} for validation and {len(x) - n_val} for training")
    order = np.random.default_rng([seed, 0x5A11]).permutation(len(x))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def prepare(raw: RawData, options: dict | None = None, *, seed: int = 0,
            input_shape: Sequence[int] | None = None, num_outputs: int | None = None,
            class_names: Sequence[str] | None = None, preprocessing: Preprocessing | None = None,
            tokens: bool = False, label_shape: Sequence[int] = (), ignore_index: int | None = None) -> DataSplits:
    """Apply ``training.data`` options, check the result fits a model with ``input_shape`` (per
    sample) and ``num_outputs`` classes, and fit the :class:`Preprocessing` on the training split
    (or apply ``preprocessing``, a saved model's, as it is). ``tokens``: the model reads token ids,
    which pass through as int64, unnormalised. ``label_shape``: the per-sample shape of the labels,
    ``()`` for one class id per sample, ``(T,)`` for a sequence model's one per position, where
    ``ignore_index`` marks the positions that count for nothing."""
    options = options or {}
    src = raw.source
    shape = tuple(int(d) for d in label_shape)
    x_train, x_test = _check_images(raw.x_train, src, "training"), _check_images(raw.x_test, src, "test")
    y_train = _check_labels(raw.y_train, len(x_train), src, "training", shape, ignore_index)
    y_test = _check_labels(raw.y_test, len(x_test), src, "test", shape, ignore_index)
    if shape and options.get("classes"):
        raise DataError(f"{src}: training.data.classes picks whole samples by class; a sequence model's labels "
                        f"have one class per position")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{src}: training images are {x_train.shape[1:]} but test images are {x_test.shape[1:]}")
    names = list(class_names or ())
    classes = options.get("classes")
    if classes:
        x_train, y_train = _select_classes(x_train, y_train, classes, src, "training")
        x_test, y_test = _select_classes(x_test, y_test, classes, src, "test")
        names = [names[c] if c < len(names) else str(c) for c in classes]
    if options.get("train_limit"):
        x_train, y_train = x_train[:options["train_limit"]], y_train[:options["train_limit"]]
    if options.get("test_limit"):
        x_test, y_test = x_test[:options["test_limit"]], y_test[:options["test_limit"]]
    if len(x_train) == 0:
        raise DataError(f"{src}: no training samples left")

    x_train, y_train, x_val, y_val = split_validation(x_train, y_train, options.get("validation_split"), seed,
                                                      src, "samples")

    layout = options.get("layout", "auto")
    if input_shape is not None:
        input_shape = tuple(input_shape)
        x_train, x_test = (to_model_layout(x, input_shape, src, layout, f"{what} images")
                           for x, what in ((x_train, "training"), (x_test, "test")))
        x_val = None if x_val is None else to_model_layout(x_val, input_shape, src, layout, "validation images")
    else:
        x_train, x_test = _as_nchw(x_train, src), _as_nchw(x_test, src)
        x_val = None if x_val is None else _as_nchw(x_val, src)
    reconstruct = options.get("target") == "input"
    def counted(y: np.ndarray) -> np.ndarray:
        return y if ignore_index is None or not shape else y[y != ignore_index]

    if num_outputs is not None and not reconstruct:
        top = int(max(counted(y_train).max(initial=0), counted(y_test).max(initial=0)))
        if top >= num_outputs:
            raise DataError(f"{src}: labels go up to {top} but the model has {num_outputs} output units "
                            f"(pick classes with training.data.classes, or widen the last layer)")
        names += [str(i) for i in range(len(names), num_outputs)]
        names = names[:num_outputs]
    else:
        top = int(max(counted(y_train).max(initial=0), counted(y_test).max(initial=0)))
        if top >= 1 << 20:
            raise DataError(f"{src}: labels go up to {top}; pick classes with training.data.classes")
        names += [str(i) for i in range(len(names), top + 1)]

    if preprocessing is None:
        pre, x_train = Preprocessing.fit_transform(x_train, options.get("normalize", "unit"),
                                                   input_shape=x_train.shape[1:], class_names=names, layout=layout,
                                                   tokens=tokens)
    else:
        pre, x_train = preprocessing, preprocessing.transform(x_train, src, "training images")
        names = list(pre.class_names) or names
    x_test = pre.transform(x_test, src, "test images")
    x_val = None if x_val is None else pre.transform(x_val, src, "validation images")
    if reconstruct:
        # an autoencoder learns to give back its input: the prepared images are the targets
        y_train, y_test, y_val = x_train, x_test, x_val
    return DataSplits(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                      x_val=x_val, y_val=y_val, source=src, notice=raw.notice, class_names=names,
                      preprocessing=pre, files=list(raw.files), location=raw.location,
                      fingerprint=raw.fingerprint)


def _as_nchw(x: np.ndarray, source: str) -> np.ndarray:
    """Without a model: (N, H, W) gains a channel axis; (N, C, H, W) and flat (N, D) are kept."""
    if x.ndim == 3:
        return x[:, None, :, :]
    if x.ndim in (2, 4):
        return x
    raise DataError(f"{source}: images have shape {x.shape}; expected (N, H, W), (N, C, H, W) or (N, features)")


def load_data(name: str, options: dict | None = None, *, data_dir: str | Path | None = None, seed: int = 0,
              input_shape: Sequence[int] | None = None, num_outputs: int | None = None,
              registry: Registry | None = None, embedded: bool = False,
              preprocessing: Preprocessing | None = None, tokens: bool = False,
              label_shape: Sequence[int] = (), ignore_index: int | None = None) -> DataSplits:
    """Find, read and prepare the registered dataset ``name``. ``data_dir`` wins over
    ``options['data_dir']``; ``embedded`` reads the dataset's embedded sample whatever else is
    installed; ``preprocessing`` (a saved model's) is applied instead of fitting a new one."""
    registry = registry_or_global(registry)
    dataset = registry.get("dataset", name)()
    options = dict(options or {})
    where = data_dir if data_dir is not None else options.get("data_dir")
    raw = dataset.load(embedded=True) if embedded else dataset.load(where)
    return dataset.prepare(raw, options, seed=seed, input_shape=input_shape, num_outputs=num_outputs,
                           preprocessing=preprocessing, tokens=tokens, label_shape=label_shape,
                           ignore_index=ignore_index)


__all__ = ["Dataset", "RawData", "DataSplits", "load_data", "prepare", "cache_dir", "DATA_DIR_ENV"]
