"""Writing files safely.

Every file layerkit writes (run files, weights, checkpoints, downloads) goes
through :func:`write_bytes_atomic` / :func:`write_text_atomic` /
:func:`save_npz_atomic`: written under a temporary name in the same directory,
flushed to disk, given the permissions a plain ``open()`` would have given it
(``0666`` minus the umask: ``mkstemp``'s ``0600`` would hide run files from
everyone else on a shared machine), then renamed into place. A crash, a full
disk or Ctrl-C leaves the old file or the new one, never half of either, and a
failure is a :class:`CheckpointError` naming the file, not an ``OSError``.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Callable

from layerkit.errors import CheckpointError, DataError

_umask_lock = threading.Lock()


def file_mode() -> int:
    """The mode a new regular file gets from ``open()``: 0666 minus the process umask."""
    with _umask_lock:  # the umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def why(exc: OSError) -> str:
    """An OSError as a short reason, with what to do for the usual ones."""
    if exc.errno == errno.ENOSPC:
        return "no space left on the device; free some space"
    if exc.errno == errno.EDQUOT:
        return "disk quota exceeded; free some space"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied; check the folder's permissions or choose another location"
    if exc.errno == errno.EROFS:
        return "read-only file system; choose another location"
    return exc.strerror or str(exc)


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], object], what: str = "file") -> None:
    """Create ``path`` through ``write(f)`` on a temporary file, then rename it into place."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot write the {what} ({why(exc)})") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def write_bytes_atomic(path: str | Path, data: bytes, what: str = "file") -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    write_atomic(path, lambda f: f.write(data), what)


def write_text_atomic(path: str | Path, text: str, what: str = "file") -> None:
    """Write ``text`` to ``path`` as UTF-8, atomically (see the module docstring)."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")), what)


def save_npz_atomic(path: str | Path, arrays: dict[str, Any], what: str = "weights file") -> None:
    """Write an uncompressed ``.npz`` atomically (see the module docstring)."""
    import numpy as np

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"{path.parent}: cannot create the folder ({why(exc)})") from None
    write_atomic(path, lambda f: np.savez(f, **arrays), what)


def record_path(path: str | Path, file_name: str) -> Path:
    """A run record's file: ``path`` itself, or ``file_name`` inside it when it is a run directory."""
    path = Path(path)
    return path / file_name if path.is_dir() else path


def read_json_record(path: Path, what: str, limit: int = 16 << 20, missing: str = "") -> Any:
    """The parsed content of a small JSON file layerkit wrote (a run's records), read at most ``limit``
    bytes; a :class:`DataError` naming the file for a missing, unreadable or damaged one."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file{missing}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({why(exc)})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; the {what} is damaged") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); the {what} is damaged") from None
