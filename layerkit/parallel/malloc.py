"""Keep glibc from handing big freed arrays back to the kernel between batches.

A training step allocates and frees the same few multi-megabyte arrays every
batch. By default glibc serves blocks above a (dynamic, at most 32 MiB) mmap
threshold with fresh ``mmap`` calls and trims the heap top whenever more than
twice that is free, so each batch pays page faults and kernel zeroing for
memory it just released (large convolutions' backward passes were more than twice
as slow; docs/performance.md). Raising both thresholds makes freed blocks stay in
the heap and be reused.

This is a process-wide setting, so the library never applies it on import;
the trainer applies it when a training run starts (``layerkit fit`` and any
script that calls ``Trainer.fit``). The cost is that a process which trained
keeps its peak heap until it exits. Only glibc has ``mallopt``; elsewhere
(musl, macOS, Windows) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # no array we allocate per batch is this big
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes a C int

_applied: bool | None = None


def tune_malloc() -> bool:
    """Apply the thresholds once per process; True when glibc accepted them."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # only glibc has it: musl's mallopt is a no-op stub
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
