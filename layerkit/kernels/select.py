"""Which implementation of the kernels runs: the numpy reference or the compiled (numba) one.

``LAYERKIT_KERNELS`` chooses, once per process, at the first float32 call of a kernel:

- ``auto`` (the default): numba when it is installed (``pip install 'layerkit[fast]'``), else numpy.
  Loading numba costs a few tenths of a second, so each kernel runs its reference until it has
  seen :data:`LOAD_AFTER` input values (or the kernel's own ``load_after``), about the work on
  which the compiled kernel saves that much, and loads the compiled one then: a short run never
  pays for numba, a long one pays at most twice the least it could (the compiled kernels give the
  reference's results bit for bit or within their stated tolerance, so switching mid-run changes
  nothing the run computes beyond that);
- ``numpy``: the reference, always;
- ``numba``: the compiled kernels from the first call, an error (:class:`~layerkit.errors.KernelError`)
  if numba is missing.

Only float32 calls (training, inference) can take the compiled path; float64 calls (the gradient
checks) always run the reference, and so never import numba. numba is imported at the first float32
call on the numba path, after :func:`cache_dir` has pointed its on-disk cache (``NUMBA_CACHE_DIR``)
at a directory the user can write, unless the user set ``NUMBA_CACHE_DIR``: the kernels are compiled
once per machine and loaded from there afterwards.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from layerkit.errors import KernelError
from layerkit.kernels.registry import KERNELS

ENV = "LAYERKIT_KERNELS"
#: input values a kernel runs on its reference, on the auto path, before its compiled twin is loaded:
#: about the work on which the compiled max pooling saves what loading numba costs (both measured in
#: docs/performance.md, "Compile time, and what loading numba costs a short run")
LOAD_AFTER = 1 << 28
PATHS = ("auto", "numpy", "numba")
INSTALL_HINT = "pip install 'layerkit[fast]'"


@dataclass(frozen=True)
class Choice:
    """The kernel path of this process and why: ``path`` is ``"numpy"`` or ``"numba"``."""

    path: str
    reason: str
    requested: str


def numba_installed() -> bool:
    """Whether numba can be imported (found without importing it)."""
    return importlib.util.find_spec("numba") is not None


def decide(requested: str | None = None) -> Choice:
    """The path ``LAYERKIT_KERNELS`` (or ``requested``) asks for; raises KernelError for a bad value
    or for ``numba`` without numba. Imports nothing."""
    raw = os.environ.get(ENV, "") if requested is None else requested
    value = raw.strip().lower() or "auto"
    if value not in PATHS:
        raise KernelError(f"{ENV}={raw!r}: must be one of {', '.join(PATHS)}")
    have = numba_installed()
    if value == "numpy":
        return Choice("numpy", f"{ENV}=numpy", value)
    if value == "numba":
        if not have:
            raise KernelError(f"{ENV}=numba but numba is not installed: {INSTALL_HINT}")
        return Choice("numba", f"{ENV}=numba", value)
    if have:
        return Choice("numba", f"{ENV}=auto and numba is installed (each compiled kernel is loaded once it "
                               f"has enough input values to run on: {LOAD_AFTER:,} unless it says fewer)", value)
    return Choice("numpy", f"{ENV}=auto and numba is not installed ({INSTALL_HINT} adds it)", value)


def cache_dir() -> Path:
    """Where numba keeps the compiled kernels: ``NUMBA_CACHE_DIR`` if the user set it, else
    ``$XDG_CACHE_HOME/layerkit/numba`` (``~/.cache/layerkit/numba`` without XDG_CACHE_HOME)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "layerkit" / "numba"


_lock = threading.RLock()
_choice: Choice | None = None
#: kernel name -> the implementation float32 calls use, once decided
_active: dict[str, Any] = {}
#: kernel name -> input values run on the reference so far (the auto path, before loading)
_seen: dict[str, int] = {}


def choice() -> Choice:
    """This process's path, decided at the first call (see the module docstring)."""
    global _choice
    if _choice is None:
        with _lock:
            if _choice is None:
                _choice = decide()
    return _choice


def _compiled(name: str) -> Any:
    spec = KERNELS[name]
    if spec.compiled_module is None:
        return spec.reference
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir()))
    try:
        return importlib.import_module(spec.compiled_module).IMPL
    except ImportError as exc:  # numba (or llvmlite) is installed but broken
        raise KernelError(f"the compiled kernels cannot be loaded ({exc}): reinstall numba "
                          f"({INSTALL_HINT}) or set {ENV}=numpy") from exc


def _resolve(name: str, size: int) -> Any:
    with _lock:
        if name in _active:
            return _active[name]
        path = choice()
        if path.path == "numba" and path.requested == "auto":
            _seen[name] = _seen.get(name, 0) + size
            threshold = KERNELS[name].load_after
            if _seen[name] < (LOAD_AFTER if threshold is None else threshold):
                return KERNELS[name].reference
        _active[name] = _compiled(name) if path.path == "numba" else KERNELS[name].reference
        return _active[name]


def kernel(name: str, dtype: Any, size: int = 0) -> Any:
    """The implementation of kernel ``name`` for a call on ``size`` input values of ``dtype``: the
    compiled one for float32 on the numba path (on the auto path once it pays, see the module
    docstring), the numpy reference otherwise. Once decided, one dict look-up."""
    if dtype != np.float32:
        return KERNELS[name].reference
    impl = _active.get(name)
    return impl if impl is not None else _resolve(name, size)


def compiled(name: str) -> Any:
    """The compiled implementation of ``name`` whatever the path (for the checks); imports numba.
    None when the kernel has none or numba is not installed."""
    if KERNELS[name].compiled_module is None or not numba_installed():
        return None
    return _compiled(name)


def reset() -> None:
    """Forget the path and the implementations chosen so far: the next float32 call decides again from
    ``LAYERKIT_KERNELS`` (for tests, and a process that changed the variable)."""
    global _choice
    with _lock:
        _choice = None
        _active.clear()
        _seen.clear()


def active_paths() -> dict[str, str]:
    """Kernel name -> the path (``numpy``, ``numba``) its float32 calls took, for the kernels called so far."""
    return {name: impl.path for name, impl in _active.items()}


@contextlib.contextmanager
def forced(impls: dict[str, Any]) -> Iterator[None]:
    """Run the body with these implementations for float32 calls (the checks compare the paths this
    way); not for use while other threads train."""
    with _lock:
        saved = dict(_active)
        _active.update(impls)
    try:
        yield
    finally:
        with _lock:
            _active.clear()
            _active.update(saved)
