"""Reading IDX files (the MNIST container format), gzipped or not.

Layout: two zero bytes, a type code, the number of dimensions, one big-endian
uint32 per dimension, then the raw data, row-major.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from layerkit.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
IDX_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
             0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_bytes(path: str | Path) -> bytes:
    """The file's contents, gunzipped when it is a gzip file (by content, not by name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None


def parse_idx(data: bytes, source: str, ndim: int | None = None) -> np.ndarray:
    """Parse IDX bytes; ``ndim`` (3 for images, 1 for labels) is checked against the magic."""
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
    header = 4 + 4 * dims
    if len(data) < header:
        raise DataError(f"{source}: truncated IDX header")
    shape = struct.unpack(f">{dims}I", data[4:header])
    dtype = IDX_TYPES[code]
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = len(data) - header
    if have < need:
        raise DataError(f"{source}: truncated: the header promises {shape} but only {have:,} of "
                        f"{need:,} data bytes are there")
    if have > need:
        raise DataError(f"{source}: {have - need:,} unexpected bytes after the {shape} data")
    array = np.frombuffer(data, dtype=dtype, count=need // dtype.itemsize, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    return parse_idx(read_bytes(path), str(path), ndim)


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write a uint8 array as IDX (gzipped when the name ends in .gz); tests and tools use it."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
