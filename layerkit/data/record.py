"""What data a run was trained on: the run directory's ``data.json``.

A :class:`DataRecord` names the dataset, the resolved absolute location it was
read from (or the embedded sample), a fingerprint of every file read (size and
SHA-256 of the bytes on disk), the ``training.data`` options that shape the
splits (limits, class subset, validation split, normalisation, layout), the seed
and the number of samples per split. Resuming a run or evaluating it reads the
data from the recorded location and compares what it finds against the record,
so a changed file or another directory is a refusal naming what differs, never
a silent switch.

A model trained from Python on in-memory arrays (``Model.fit`` then ``save``) has a
record with source ``"arrays"``, no dataset and no files, and an ``arrays`` entry:
the shapes and dtypes of ``x`` and ``y``, a SHA-256 of their bytes and the class
names. There is nothing to read again: :meth:`DataRecord.refuse_arrays` raises
:class:`TrainedOnArrays` for such a record, naming how to evaluate the model instead.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from layerkit.errors import DataError
from layerkit.fileio import read_json_record, record_path, write_text_atomic

if TYPE_CHECKING:
    from layerkit.data import DataSplits

FORMAT = 1
FILE_NAME = "data.json"
CHUNK = 1 << 20
#: the ``training.data`` options that decide which samples end up in which split, and how
#: sequence datasets' options (layerkit.data.text, layerkit.data.sequence_tasks): all shape the test split too
SEQUENCE_OPTIONS = ("unit", "stride", "test_fraction", "length", "min_length", "vocab_size", "digits",
                    "test_samples", "task_seed")
SHAPING_OPTIONS = ("classes", "train_limit", "test_limit", "validation_split", "normalize", "layout",
                   *SEQUENCE_OPTIONS, "train_samples")
#: the ``source`` of a record of in-memory arrays (``Model.fit`` in Python)
ARRAYS = "arrays"


class TrainedOnArrays(DataError):
    """A saved model or run was trained on in-memory arrays: there is no recorded dataset to read again."""


def array_fingerprint(*arrays: np.ndarray) -> str:
    """SHA-256 (hex) of the arrays' dtypes, shapes and bytes (C order), in the order given."""
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.data if a.size else b"")
    return digest.hexdigest()


def describe_array(a: np.ndarray) -> dict[str, Any]:
    """``{"shape": [...], "dtype": "uint8"}``."""
    return {"shape": [int(n) for n in a.shape], "dtype": str(a.dtype)}


#: the value an option left out of ``training.data`` has (what :func:`layerkit.data.prepare` does without it)
OPTION_DEFAULTS: dict[str, Any] = {"classes": None, "train_limit": None, "test_limit": None,
                                   "validation_split": None, "normalize": "unit", "layout": "auto",
                                   **dict.fromkeys((*SEQUENCE_OPTIONS, "train_samples"))}
#: the options that decide which samples form the test split and how they reach the model (the
#: training statistics come from the run's saved preprocessing, so normalize is not among them)
TEST_OPTIONS = ("classes", "test_limit", "layout", *SEQUENCE_OPTIONS)


def filled(options: dict | None) -> dict[str, Any]:
    """``options`` (some of :data:`SHAPING_OPTIONS`) with every option left out given its default;
    an empty class list and a validation split of 0 mean "none", as they do when the data is read."""
    options = options or {}
    out = {k: options.get(k) if options.get(k) is not None else OPTION_DEFAULTS[k] for k in SHAPING_OPTIONS}
    for key in ("classes", "validation_split"):
        if not out[key]:
            out[key] = None
    return out


def file_fingerprint(path: str | Path, name: str | None = None) -> dict[str, Any]:
    """``{"path", "size", "sha256"}`` of the bytes of ``path`` as stored (gzipped files are not unpacked)."""
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot read to fingerprint it ({exc.strerror or exc})") from None
    return {"path": name or str(path.resolve()), "size": size, "sha256": digest.hexdigest()}


@dataclass
class DataRecord:
    """The data a run was trained on, as its ``data.json`` stores it (see the module docstring)."""

    dataset: str | None  # None: in-memory arrays
    location: str | None  # absolute; None: the dataset's embedded sample (or arrays)
    source: str
    files: list[dict] = field(default_factory=list)
    options: dict = field(default_factory=dict)
    seed: int = 0
    samples: dict = field(default_factory=dict)
    #: in-memory arrays only: ``x``/``y`` shapes and dtypes, ``sha256``, ``class_names``
    arrays: dict | None = None

    @property
    def from_arrays(self) -> bool:
        """Whether the model was trained on in-memory arrays (``Model.fit``), not a dataset."""
        return self.source == ARRAYS

    @classmethod
    def of_arrays(cls, x: np.ndarray, y: np.ndarray, class_names: list[str], options: dict | None, seed: int,
                  samples: dict) -> "DataRecord":
        """The record of a ``Model.fit`` on the raw arrays ``x`` and ``y`` (as given, before any split)."""
        options = options or {}
        return cls(dataset=None, location=None, source=ARRAYS, files=[],
                   options={k: options[k] for k in SHAPING_OPTIONS if options.get(k) is not None},
                   seed=int(seed), samples=dict(samples),
                   arrays={"x": describe_array(x), "y": describe_array(y), "sha256": array_fingerprint(x, y),
                           "class_names": [str(c) for c in class_names]})

    def refuse_arrays(self, where: str | Path, python: str = "model.evaluate(x, y)",
                      explicit: str = "--dataset NAME or --data-dir DIR") -> None:
        """Raise :class:`TrainedOnArrays` if this record is of in-memory arrays: nothing can be read
        again, and scoring the model on whatever dataset its model file names would be a guess.
        ``python`` and ``explicit`` name the two ways out in the caller's terms."""
        if not self.from_arrays:
            return
        shapes = ""
        if self.arrays:
            x = self.arrays["x"]
            shapes = f" (x {tuple(x['shape'])} {x['dtype']})"
        raise TrainedOnArrays(f"{where}: trained on in-memory arrays{shapes}, not on a dataset layerkit can "
                              f"read again; evaluate it in Python with {python} on your test arrays, or pass "
                              f"{explicit} to score it on a dataset")

    @property
    def embedded(self) -> bool:
        """Whether the run used the dataset's embedded sample rather than files on disk."""
        return self.location is None

    @classmethod
    def of(cls, dataset: str, splits: DataSplits, options: dict | None, seed: int) -> "DataRecord":
        """The record of ``splits`` (a :class:`~layerkit.data.DataSplits`) just loaded."""
        options = options or {}
        files = splits.fingerprint
        if files is None:
            files = [file_fingerprint(f) for f in splits.files]
        return cls(dataset=dataset, location=splits.location, source=splits.source, files=list(files),
                   options={k: options[k] for k in SHAPING_OPTIONS if options.get(k) is not None},
                   seed=int(seed), samples=splits.counts())

    def describe(self) -> str:
        """Where the data came from, for messages: the location or "the embedded sample"."""
        return "the embedded sample" if self.location is None else self.location

    def differences(self, now: "DataRecord", *, evaluating: bool = False) -> list[str]:
        """What differs between this record (the run's) and ``now`` (the data just read), one
        phrase each; files are compared by name, size and SHA-256, options with their defaults
        filled in on both sides. ``evaluating``: only what shapes the test split counts (limits
        and a validation split of the training set do not change what a run is scored on)."""
        out = []
        if now.dataset != self.dataset:
            out.append(f"dataset {now.dataset!r} instead of {self.dataset!r}")
        if now.location != self.location:
            out.append(f"data from {now.describe()} instead of {self.describe()}")
        then_files = {Path(f["path"]).name: f for f in self.files}
        now_files = {Path(f["path"]).name: f for f in now.files}
        for name in sorted(set(then_files) | set(now_files)):
            if name not in then_files:
                out.append(f"{now_files[name]['path']} was not read then")
                continue
            if name not in now_files:
                out.append(f"{then_files[name]['path']} is not read now")
                continue
            a, b = then_files[name], now_files[name]
            if (a["size"], a["sha256"]) != (b["size"], b["sha256"]):
                out.append(f"{b['path']} changed ({a['size']:,} bytes, SHA-256 {a['sha256'][:12]}... then; "
                           f"{b['size']:,} bytes, {b['sha256'][:12]}... now)")
        then_options, now_options = filled(self.options), filled(now.options)
        for key in TEST_OPTIONS if evaluating else SHAPING_OPTIONS:
            if then_options[key] != now_options[key]:
                out.append(f"training.data.{key} {_option(now_options[key])} instead of {_option(then_options[key])}")
        if evaluating:
            if now.samples.get("test") != self.samples.get("test"):
                out.append(f"{now.samples.get('test', 0):,} test samples instead of {self.samples.get('test', 0):,}")
        elif now.samples != self.samples:
            out.append(f"{_counts(now.samples)} samples instead of {_counts(self.samples)}")
        return out

    # -- the file ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {"format": FORMAT, "dataset": self.dataset, "location": self.location, "source": self.source,
               "files": self.files, "options": self.options, "seed": self.seed, "samples": self.samples}
        if self.arrays is not None:
            out["arrays"] = self.arrays
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str = FILE_NAME) -> "DataRecord":
        def bad(key: str, why: str) -> DataError:
            return DataError(f"{source}: {key}: {why}; the run's data record is damaged (restore it, or "
                             f"pass --allow-other-data with --data-dir to name the data yourself)")

        if not isinstance(data, dict):
            raise bad("(top level)", "expected a JSON object")
        keys = {"format", "dataset", "location", "source", "files", "options", "seed", "samples"}
        for key in sorted(set(data) - keys - {"arrays"}):
            raise bad(key, "unknown field")
        for key in sorted(keys - set(data)):
            raise bad(key, "missing")
        if data["format"] != FORMAT:
            raise bad("format", f"{data['format']!r} is not supported (expected {FORMAT})")
        for key in ("dataset", "source"):
            if key == "dataset" and data["source"] == ARRAYS and data[key] is None:
                continue  # in-memory arrays: no dataset
            if not isinstance(data[key], str) or not data[key]:
                raise bad(key, "expected a non-empty string")
        arrays = data.get("arrays")
        if data["source"] == ARRAYS and not _arrays_entry(arrays):
            raise bad("arrays", "expected {x, y, sha256, class_names} for in-memory arrays")
        if data["source"] != ARRAYS and arrays is not None:
            raise bad("arrays", f"only a record of source {ARRAYS!r} has one")
        if data["location"] is not None and not (isinstance(data["location"], str)
                                                 and Path(data["location"]).is_absolute()):
            raise bad("location", "expected an absolute path or null (the embedded sample)")
        files = data["files"]
        if not isinstance(files, list) or not all(
                isinstance(f, dict) and set(f) == {"path", "size", "sha256"} and isinstance(f["path"], str)
                and _count(f["size"]) and isinstance(f["sha256"], str) and len(f["sha256"]) == 64
                for f in files):
            raise bad("files", "expected a list of {path, size, sha256} objects")
        if not isinstance(data["options"], dict) or set(data["options"]) - set(SHAPING_OPTIONS):
            raise bad("options", f"expected an object with some of {', '.join(SHAPING_OPTIONS)}")
        if not _count(data["seed"]):
            raise bad("seed", "expected a non-negative integer")
        samples = data["samples"]
        if not (isinstance(samples, dict) and set(samples) == {"train", "validation", "test"}
                and all(_count(v) for v in samples.values())):
            raise bad("samples", "expected {train, validation, test} counts")
        return cls(dataset=data["dataset"], location=data["location"], source=data["source"], files=files,
                   options=data["options"], seed=data["seed"], samples=samples, arrays=arrays)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def load(cls, path: str | Path) -> "DataRecord":
        path = record_path(path, FILE_NAME)
        return cls.from_dict(read_json_record(path, "run's data record"), str(path))

    def save(self, path: str | Path) -> Path:
        path = record_path(path, FILE_NAME)
        write_text_atomic(path, self.to_json(), "data record")
        return path


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _arrays_entry(value: Any) -> bool:
    def array(a: Any) -> bool:
        return (isinstance(a, dict) and set(a) == {"shape", "dtype"} and isinstance(a["dtype"], str)
                and isinstance(a["shape"], list) and all(_count(n) for n in a["shape"]))

    return (isinstance(value, dict) and set(value) == {"x", "y", "sha256", "class_names"}
            and array(value["x"]) and array(value["y"]) and isinstance(value["sha256"], str)
            and len(value["sha256"]) == 64 and isinstance(value["class_names"], list)
            and all(isinstance(c, str) for c in value["class_names"]))


def _option(value: Any) -> str:
    return "not set" if value is None else repr(value)


def _counts(samples: dict) -> str:
    return " / ".join(f"{samples.get(k, 0):,} {k}" for k in ("train", "validation", "test"))


__all__ = ["ARRAYS", "DataRecord", "TrainedOnArrays", "array_fingerprint", "file_fingerprint", "filled",
           "FILE_NAME", "SHAPING_OPTIONS", "TEST_OPTIONS", "OPTION_DEFAULTS"]
