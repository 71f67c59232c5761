"""Reading IDX files (the MNIST container format), gzipped or not, within memory bounds.

Layout: two zero bytes, a type code, the number of dimensions, one big-endian
uint32 per dimension, then the raw data, row-major.

Every data file is read through :func:`read_bytes` or :func:`read_idx`, which
never hold more than :func:`max_data_bytes` of it: a gzip bomb (a small file
that inflates to gigabytes) is refused once that much has come out, and an IDX
header promising more is refused before anything is allocated.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from pathlib import Path
from types import TracebackType
from typing import Literal

import numpy as np

from layerkit.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
IDX_TYPES: dict[int, np.dtype] = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
             0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
MAX_DATA_ENV = "LAYERKIT_MAX_DATA_BYTES"
CHUNK = 1 << 20


def max_data_bytes() -> int:
    """The most bytes one data file may unpack to: ``$LAYERKIT_MAX_DATA_BYTES``, else half the
    physical memory (a quarter of the address-space limit, when one is set)."""
    value = os.environ.get(MAX_DATA_ENV, "").strip()
    if value:
        try:
            return max(1, int(float(value)))
        except ValueError:
            raise DataError(f"{MAX_DATA_ENV}={value!r} is not a number of bytes") from None
    limit = 1 << 62
    try:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        pass
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            limit = min(limit, soft // 4)
    except (ImportError, ValueError, OSError):  # pragma: no cover - not POSIX
        pass
    return limit


def _too_big(path: str | Path, what: str, limit: int) -> DataError:
    return DataError(f"{path}: {what}, more than the {limit:,} bytes a data file may hold here; if the file is "
                     f"right, set {MAX_DATA_ENV} (bytes) higher on a machine with the memory for it")


def _open(path: Path) -> io.BufferedIOBase:
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a data file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if f.read(2) == GZIP_MAGIC:  # by content, not by name
        f.seek(0)
        return gzip.GzipFile(fileobj=f, mode="rb")  # closing it does not close f: see _reading
    f.seek(0)
    return f


class _reading:
    """``with _reading(path) as f``: the file, unpacked when gzipped; read errors become DataError."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __enter__(self) -> io.BufferedIOBase:
        self.f = _open(self.path)
        return self.f

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        raw = getattr(self.f, "fileobj", None)
        self.f.close()
        if raw is not None:
            raw.close()
        if exc is None or isinstance(exc, DataError):
            return False
        if isinstance(exc, (EOFError, zlib.error, gzip.BadGzipFile)):
            raise DataError(f"{self.path}: corrupt or truncated gzip data ({exc})") from None
        if isinstance(exc, MemoryError):
            raise DataError(f"{self.path}: not enough memory to read it") from None
        if isinstance(exc, OSError):
            raise DataError(f"{self.path}: cannot read ({exc.strerror or exc})") from None
        return False


def read_bytes(path: str | Path, limit: int | None = None) -> bytes:
    """The file's contents, gunzipped when it is a gzip file, refusing more than ``limit`` bytes
    (default :func:`max_data_bytes`) before holding them."""
    limit = max_data_bytes() if limit is None else limit
    parts, total = [], 0
    with _reading(path) as f:
        while chunk := f.read(min(CHUNK, limit + 1 - total)):
            parts.append(chunk)
            total += len(chunk)
            if total > limit:
                raise _too_big(path, "it unpacks to more than that", limit)
    return b"".join(parts)


def _header(data: bytes, source: str, ndim: int | None) -> tuple[int, np.dtype]:
    """Check the first 4 bytes; the number of dimensions and the element type."""
    if len(data) < 4:
        raise DataError(f"{source}: truncated IDX file ({len(data)} bytes, no header)")
    zero1, zero2, code, dims = data[0], data[1], data[2], data[3]
    magic = int.from_bytes(data[:4], "big")
    if zero1 or zero2 or code not in IDX_TYPES or dims == 0:
        raise DataError(f"{source}: bad magic number 0x{magic:08x}, not an IDX file")
    if ndim is not None and dims != ndim:
        want = 0x0800 + ndim
        what = "image" if ndim == 3 else "label" if ndim == 1 else f"{ndim}-d"
        raise DataError(f"{source}: bad magic number 0x{magic:08x}, expected 0x{want:08x} (an IDX {what} file)")
    return dims, IDX_TYPES[code]


def parse_idx(data: bytes, source: str, ndim: int | None = None) -> np.ndarray:
    """Parse IDX bytes; ``ndim`` (3 for images, 1 for labels) is checked against the magic."""
    dims, dtype = _header(data, source, ndim)
    header = 4 + 4 * dims
    if len(data) < header:
        raise DataError(f"{source}: truncated IDX header")
    shape = struct.unpack(f">{dims}I", data[4:header])
    need = math.prod(shape) * dtype.itemsize  # Python integers: a hostile header cannot overflow them
    have = len(data) - header
    if have < need:
        raise DataError(f"{source}: truncated: the header promises {shape} but only {have:,} of "
                        f"{need:,} data bytes are there")
    if have > need:
        raise DataError(f"{source}: {have - need:,} unexpected bytes after the {shape} data")
    array = np.frombuffer(data, dtype=dtype, count=need // dtype.itemsize, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | Path, ndim: int | None = None, limit: int | None = None) -> np.ndarray:
    """Read an IDX file, streaming: the header's size is checked against ``limit`` (default
    :func:`max_data_bytes`) before the array is allocated, and the data is read straight into it."""
    limit = max_data_bytes() if limit is None else limit
    source = str(path)
    with _reading(path) as f:
        first = f.read(4)
        dims, dtype = _header(first, source, ndim)
        rest = f.read(4 * dims)
        if len(rest) < 4 * dims:
            raise DataError(f"{source}: truncated IDX header")
        shape = struct.unpack(f">{dims}I", rest)
        need = math.prod(shape) * dtype.itemsize
        if need > limit:
            raise _too_big(path, f"the header promises {shape} = {need:,} bytes", limit)
        try:
            out = np.empty(need, dtype=np.uint8)
        except MemoryError:
            raise DataError(f"{source}: not enough memory for the {shape} array its header promises "
                            f"({need:,} bytes)") from None
        view, have = out.data, 0
        while have < need:
            got = f.readinto(view[have:have + CHUNK])
            if not got:
                raise DataError(f"{source}: truncated: the header promises {shape} but only {have:,} of "
                                f"{need:,} data bytes are there")
            have += got
        extra = len(f.read(CHUNK))
        if extra:
            raise DataError(f"{source}: {'at least ' if extra == CHUNK else ''}{extra:,} unexpected bytes "
                            f"after the {shape} data")
    return out.view(dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write a uint8 array as IDX (gzipped when the name ends in .gz); tests and tools use it."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
