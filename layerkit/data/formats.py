"""Readers for the non-IDX dataset files: pickles, CSV, .npz.

Pickles are read with :class:`SafeUnpickler`, which resolves only the names a
pickled numpy array needs. Anything else in the stream (``os.system``,
``builtins.eval``, any class) is refused before it can run, so a hostile
``mnist.pkl.gz`` or CIFAR batch is a :class:`DataError`, not code execution.
"""

from __future__ import annotations

import codecs
import gzip
import io
import math
import pickle
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from layerkit.errors import DataError
from layerkit.data.idx import read_bytes

try:  # numpy 2 renamed numpy.core to numpy._core
    from numpy._core.multiarray import _reconstruct as _RECONSTRUCT
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _RECONSTRUCT  # type: ignore[no-redef]


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Protocol-2 pickles written by Python 3 carry an array's raw bytes as
    ``_codecs.encode(text, "latin1")``; only that exact use is allowed."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refusing _codecs.encode other than str -> latin1 bytes")
    return text.encode("latin1")


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> Any:
    """numpy pickles an array as an empty one plus ``__setstate__``; only that empty start is allowed,
    so a pickle cannot make numpy allocate an array of any size it names."""
    if subtype is not np.ndarray or not isinstance(shape, tuple) or math.prod(_dims(shape)) != 0:
        raise pickle.UnpicklingError("refusing numpy _reconstruct other than an empty ndarray")
    return _RECONSTRUCT(subtype, shape, typecode)


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """Protocol 5 pickles an array as its raw bytes plus dtype, shape and order; the sizes must agree."""
    if isinstance(buffer, pickle.PickleBuffer):
        buffer = buffer.raw()
    if not isinstance(buffer, (bytes, bytearray, memoryview)) or not isinstance(dtype, np.dtype) \
            or not isinstance(shape, tuple) or order not in ("C", "F"):
        raise pickle.UnpicklingError("refusing numpy _frombuffer with unexpected arguments")
    if math.prod(_dims(shape)) * dtype.itemsize != len(buffer):
        raise pickle.UnpicklingError(f"array of shape {shape} does not match its {len(buffer):,} data bytes")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


def _dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args[:1])  # align/copy flags do not change what is read
    if dtype.hasobject:
        raise pickle.UnpicklingError("refusing an object array (only numbers are allowed)")
    return dtype


def _dims(shape: tuple) -> tuple[int, ...]:
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise pickle.UnpicklingError(f"array shape {shape!r} is not a tuple of sizes")
    return shape


#: (module, name) -> object; both numpy 1 and numpy 2 spellings of the same functions
ALLOWED_GLOBALS = {
    ("_codecs", "encode"): _latin1_encode,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers and refuses every other global,
    so a data file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays (and tuples, "
                                         f"lists and dicts of them) are allowed") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing a persistent id: only numpy arrays are allowed")


def safe_unpickle(path: str | Path, encoding: str = "latin1") -> Any:
    """Unpickle a (possibly gzipped) file that may only contain numpy arrays and plain containers."""
    data = read_bytes(path)
    try:
        return SafeUnpickler(io.BytesIO(data), encoding=encoding).load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: {exc}") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, zlib.error,
            gzip.BadGzipFile, OverflowError, RecursionError) as exc:
        raise DataError(f"{path}: not a readable pickle ({type(exc).__name__}: {str(exc)[:200]})") from None
    except MemoryError:
        raise DataError(f"{path}: not enough memory to unpickle it") from None


def _array(value: Any, source: str, what: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value)
        except Exception:
            raise DataError(f"{source}: {what} is not an array") from None
    if value.dtype == object:
        raise DataError(f"{source}: {what} is not a numeric array")
    return value


def read_nielsen_pickle(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nielsen's ``mnist.pkl.gz``: ``(train, validation, test)``, each ``(x (N,784) float, y (N,))``.
    Training and validation are joined: ``training.data.validation_split`` makes the held-out part."""
    obj = safe_unpickle(path)
    if not (isinstance(obj, tuple) and len(obj) == 3 and all(isinstance(p, tuple) and len(p) == 2 for p in obj)):
        raise DataError(f"{path}: expected a (train, validation, test) tuple of (images, labels) pairs")
    parts = [(_array(x, str(path), f"part {i} images"), _array(y, str(path), f"part {i} labels"))
             for i, (x, y) in enumerate(obj)]
    for i, (x, y) in enumerate(parts):
        if len(x) != len(y):
            raise DataError(f"{path}: part {i} has {len(x)} images but {len(y)} labels")
    x_train = np.concatenate([parts[0][0], parts[1][0]])
    y_train = np.concatenate([parts[0][1], parts[1][1]])
    return x_train, y_train, parts[2][0], parts[2][1]


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: a dict with bytes keys ``b"data"`` (N, 3072) uint8, ``b"labels"``."""
    obj = safe_unpickle(path, encoding="bytes")
    if not isinstance(obj, dict) or b"data" not in obj or b"labels" not in obj:
        raise DataError(f"{path}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
    data = _array(obj[b"data"], str(path), "data")
    labels = _array(obj[b"labels"], str(path), "labels")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: data has shape {data.shape}, expected (N, 3072)")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    # rows are 1024 red, then 1024 green, then 1024 blue values: already channels first
    return data.reshape(-1, 3, 32, 32), labels


def _not_utf8(path: Path, data: bytes, exc: UnicodeDecodeError) -> DataError:
    """The error for undecodable CSV bytes, naming the byte and its offset in the file."""
    # the utf-8-sig codec counts from after the byte-order mark; the file's offset counts it
    start = exc.start + (len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0)
    return DataError(f"{path}: not UTF-8 text (byte 0x{data[start]:02x} at offset {start}); "
                     f"save it as UTF-8 (or plain ASCII) CSV")


def read_csv_text(path: Path) -> str:
    """A CSV file's text: UTF-8 with or without a byte-order mark, any line ending."""
    data = read_bytes(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, data, exc) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def csv_has_labels(path: Path) -> bool:
    """Whether a CSV's header starts with a ``label`` column (Kaggle's test.csv has none)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return head.decode("utf-8-sig", errors="strict").startswith("label,")
    except UnicodeDecodeError as exc:
        bom = len(codecs.BOM_UTF8) if head.startswith(codecs.BOM_UTF8) else 0
        if bom + exc.start >= len(head) - 3:  # a multi-byte character cut by the 64-byte read
            return head[:bom + exc.start].decode("utf-8-sig").startswith("label,")
        raise _not_utf8(path, head, exc) from None


def read_label_csv(path: Path, width: int = 784) -> tuple[np.ndarray, np.ndarray]:
    """Kaggle digit-recognizer CSV: a header, then ``label,pixel0..pixel783`` rows."""
    text = read_csv_text(path)
    header_line, _, body = text.partition("\n")
    header = [h.strip().strip('"') for h in header_line.split(",")]
    if not header or header[0] != "label" or len(header) != width + 1:
        raise DataError(f"{path}: the header has {len(header):,} columns starting {header[0]!r}, expected "
                        f"{width + 1:,}: 'label,pixel0,...,pixel{width - 1}' (a label column and {width:,} pixels)")
    try:
        table = np.loadtxt(io.StringIO(body), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from None
    if table.size == 0:
        raise DataError(f"{path}: no data rows")
    if table.shape[1] != width + 1:
        raise DataError(f"{path}: rows have {table.shape[1]:,} columns, expected {width + 1:,} "
                        f"(a label column and {width:,} pixels)")
    pixels = table[:, 1:]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{path}: pixel values must be 0..255")
    return pixels.astype(np.uint8), table[:, 0]


def read_npz_splits(path: Path, keys: Sequence[str] = ("x_train", "y_train", "x_test", "y_test")
                    ) -> tuple[np.ndarray, ...]:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise DataError(f"{path}: missing arrays {', '.join(missing)} (has {', '.join(data.files) or 'none'})")
            return tuple(data[k] for k in keys)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except DataError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled objects), OSError
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
