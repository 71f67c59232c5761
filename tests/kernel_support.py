"""Helpers for the tests of the compiled kernels: every kernel on one path, one function on several thread counts."""

from layerkit.kernels import select
from layerkit.kernels.registry import KERNELS
from layerkit.parallel import threads


def kernel_impls(path: str) -> dict:
    """Every registered kernel's implementation on ``path`` ("numba": the compiled ones, else the references),
    for ``select.forced``."""
    return {name: (select.compiled(name) if path == "numba" else k.reference) for name, k in KERNELS.items()}


def on_thread_counts(fn, counts=(1, 2)) -> list:
    """``[fn() with the layer pool at each of counts]``, the pool restored after each."""
    results = []
    for count in counts:
        threads.set_num_threads(count)
        try:
            results.append(fn())
        finally:
            threads.set_num_threads(None)
    return results
