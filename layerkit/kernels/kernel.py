"""What a named kernel is: a numpy reference, an optional compiled twin, and how to compare them.

A :class:`Kernel` is one operation the layers call through :func:`layerkit.kernels.select.kernel`.
Its numpy reference is the definition; a compiled implementation, when there is one, must give the
reference's outputs within the kernel's :class:`Tolerance` (bit for bit for max pooling) on every
input. ``examples`` makes the inputs the conformance check compares them on (ties, NaN and
infinities where the reference defines them, odd shapes, non-contiguous arrays) and ``run`` applies
one implementation to one of them, returning every output by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """How close a compiled kernel must come to its reference: ``rtol``/``atol`` 0 means bit for bit
    (NaN where the reference has NaN, the same sign on zeros)."""

    rtol: float = 0.0
    atol: float = 0.0

    @property
    def exact(self) -> bool:
        return self.rtol == 0.0 and self.atol == 0.0

    def __str__(self) -> str:
        return "bit for bit" if self.exact else f"rtol {self.rtol:g}, atol {self.atol:g}"

    def mismatch(self, got: np.ndarray, want: np.ndarray) -> str | None:
        """Why ``got`` is not ``want`` within this tolerance, or None when it is."""
        got, want = np.asarray(got), np.asarray(want)
        if got.shape != want.shape or got.dtype != want.dtype:
            return f"{got.dtype}{list(got.shape)} instead of {want.dtype}{list(want.shape)}"
        nan_got, nan_want = np.isnan(got), np.isnan(want)
        if not np.array_equal(nan_got, nan_want):
            return f"NaN at {int(np.count_nonzero(nan_got != nan_want))} place(s) where the reference differs"
        g, w = got[~nan_got], want[~nan_want]
        if self.exact:
            bad = (g != w) | (np.signbit(g) != np.signbit(w))
        else:
            bad = ~np.isclose(g, w, rtol=self.rtol, atol=self.atol, equal_nan=False)
            bad &= ~((g == w) & np.isinf(w))  # equal infinities are close
        if not bad.any():
            return None
        worst = float(np.max(np.abs(g[bad].astype(np.float64) - w[bad].astype(np.float64))))
        return f"{int(np.count_nonzero(bad))} of {w.size} value(s) differ, the largest by {worst:.3g}"


@dataclass(frozen=True)
class KernelExample:
    """One input the check compares the two implementations on; ``what`` says which case it covers."""

    what: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Kernel:
    """One named kernel (see the module docstring)."""

    name: str
    description: str
    reference: Any
    #: the module of the compiled implementation (its ``IMPL``; importing it imports numba), or None
    compiled_module: str | None
    tolerance: Tolerance
    examples: Callable[[np.random.Generator], Iterable[KernelExample]]
    run: Callable[[Any, KernelExample], dict[str, np.ndarray]]
    #: which calls the compiled implementation takes (the rest run the reference), in words
    covers: str = "every call"
    #: input values the ``auto`` path runs the reference on before loading the compiled twin, when it
    #: pays sooner than :data:`layerkit.kernels.select.LOAD_AFTER` (None: that default)
    load_after: int | None = None
