"""The numba Winograd F(2x2, 3x3) convolution against layerkit's im2col Conv2D (milliseconds).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/winograd.py [--batch 128] [--repeats 9] [--clock cpu]

(Unset OPENBLAS_CORETYPE first, as bench/speed.py does for its children: on the AMD EPYC machine
OPENBLAS_CORETYPE=Haswell halves OpenBLAS's sgemm against the SkylakeX kernel it picks itself, for
both sides; the header names the kernel used.)

For the AlexNet-style MNIST net's four 3x3 'same' convolutions, float32, one thread: the median time, over
rounds that run every variant once in turn, of
layerkit's forward, input gradient (``backward_input``), weight gradient (``backward_params``) and whole
backward, and of ``layerkit.kernels.winograd_numba``'s ``forward``, ``backward_input`` and
``backward_weights``; the largest difference from layerkit's result relative to its largest value; the
forward with the 16 GEMMs in numba instead of numpy's matmul; and the forward of the whole batch against
two threads each running half of it (wall clock, the caller's way of using both cores). Then the first
call's compile time with an empty numba cache and the load time from a warm one, each in a fresh
process. Needs the ``fast`` extra (numba).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from layerkit.layers.conv import Conv2D
from layerkit.parallel import threads
from layerkit.parallel.malloc import tune_malloc

#: (name, C, F, H = W): the AlexNet-style MNIST net's convolutions (models/alexnet_mnist.json)
SHAPES = (("conv1", 1, 32, 28), ("conv2", 32, 32, 28), ("conv3", 32, 64, 14), ("conv4", 64, 64, 14))
PADS = (1, 1, 1, 1)


def round_robin_ms(fns: dict[str, tuple[Callable[[], object], Callable[[], float]]], repeats: int
                   ) -> dict[str, float]:
    """Each ``fn``'s median time in milliseconds (by its own clock) over ``repeats`` rounds that call every
    function once in turn, after one warm-up round: a machine whose speed drifts moves them all alike."""
    for fn, _ in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, (fn, clock) in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def rel(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want|."""
    return float(np.abs(got - want).max() / np.abs(want).max())


def two_threads(fn: Callable[[np.ndarray], object], x: np.ndarray) -> None:
    """``fn`` on each half of the batch, in two threads at once (the functions release the GIL)."""
    half = len(x) // 2
    workers = [threading.Thread(target=fn, args=(part,)) for part in (x[:half], x[half:])]
    for t in workers:
        t.start()
    for t in workers:
        t.join()


COMPILE_SNIPPET = """
import time
t0 = time.perf_counter()
import numpy as np
from layerkit.kernels import winograd_numba as wn
t1 = time.perf_counter()
x = np.ones((2, 4, 6, 6), np.float32); w = np.ones((3, 4, 3, 3), np.float32)
y = wn.forward(x, w, None, (1, 1, 1, 1))
dx = wn.backward_input(y, w, (1, 1, 1, 1), (6, 6))
dw = wn.backward_weights(x, y, (1, 1, 1, 1))
t2 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f}")
"""


def compile_times() -> tuple[tuple[float, float], tuple[float, float]]:
    """(import s, first calls s) with an empty numba cache, then again with the cache it filled."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        out = []
        for _ in range(2):
            res = subprocess.run([sys.executable, "-c", COMPILE_SNIPPET], env=env, capture_output=True, text=True,
                                 check=True)
            a, b = (float(v) for v in res.stdout.split())
            out.append((a, b))
    return out[0], out[1]


def row(name: str, c: int, f: int, hw: int, batch: int, r: int, clock: Callable[[], float],
        rng: np.random.Generator) -> str:
    """One table row: layerkit's and Winograd's times and differences for one layer shape."""
    from layerkit.kernels import winograd_numba as wn

    layer = Conv2D()
    layer.filters, layer.kernel_size, layer.stride, layer.padding = f, 3, 1, "same"
    layer.dilation, layer.groups, layer.use_bias = 1, 1, False
    x = rng.standard_normal((batch, c, hw, hw)).astype(np.float32)
    w = (rng.standard_normal((f, c, 3, 3)) * np.sqrt(2.0 / (9 * c))).astype(np.float32)  # He scale
    params = {"W": w}
    y, cache = layer.forward(params, x, training=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, grads = layer.backward(params, cache, dy)
    wall = time.perf_counter
    t = round_robin_ms({
        "fwd": (lambda: layer.forward(params, x, training=True), clock),
        "dx": (lambda: layer.backward_input(params, cache, dy), clock),
        "dW": (lambda: layer.backward_params(params, cache, dy), clock),
        "bwd": (lambda: layer.backward(params, cache, dy), clock),
        "w fwd": (lambda: wn.forward(x, w, None, PADS), clock),
        "w dx": (lambda: wn.backward_input(dy, w, PADS, (hw, hw)), clock),
        "w dW": (lambda: wn.backward_weights(x, dy, PADS), clock),
        "numba": (lambda: wn.forward(x, w, None, PADS, products="numba"), clock),
        "one": (lambda: wn.forward(x, w, None, PADS), wall),
        "two": (lambda: two_threads(lambda part: wn.forward(part, w, None, PADS), x), wall),
    }, r)
    ref = [t["fwd"], t["dx"], t["dW"], t["bwd"]]
    win = [t["w fwd"], t["w dx"], t["w dW"]]
    numba_gemm, one, two = t["numba"], t["one"], t["two"]
    errs = (rel(wn.forward(x, w, None, PADS), y), rel(wn.backward_input(dy, w, PADS, (hw, hw)), dx),
            rel(wn.backward_weights(x, dy, PADS), grads["W"]))
    return (f"| {name} ({c} -> {f}, {hw}x{hw}) | {' / '.join(f'{t:.1f}' for t in ref)} | "
            f"{' / '.join(f'{t:.1f}' for t in win)} | {numba_gemm:.1f} | {one:.1f} / {two:.1f} | "
            f"{' / '.join(f'{e:.0e}' for e in errs)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu",
                        help="one-thread times by this process's CPU time (default) or the wall clock; the "
                             "two-thread column is always wall clock")
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    threads.set_num_threads(1)
    threadpool_limits(1)
    tune_malloc()  # as training does: freed buffers are reused, not faulted in again
    rng = np.random.default_rng(0)
    blas = ", ".join(f"{i.get('internal_api')} {i.get('version')} kernel {i.get('architecture')}"
                     for i in threadpool_info() if i.get("user_api") == "blas")
    print(f"batch {args.batch}, float32, one thread ({args.clock} clock), ms; {blas}; load average "
          f"{os.getloadavg()[0]:.2f}; 'rel' = max |diff| / max |layerkit|")
    print("| layer (C -> F, HxW) | layerkit fwd / dx / dW / bwd | Winograd fwd / dx / dW | fwd with numba GEMMs "
          "| fwd 1 thread / 2 threads (wall) | rel fwd / dx / dW |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, c, f, hw in SHAPES:
        print(row(name, c, f, hw, args.batch, args.repeats, clock, rng), flush=True)
    cold, warm = compile_times()
    print(f"\nfirst calls of forward, backward_input, backward_weights in a fresh process: empty numba cache "
          f"{cold[1]:.2f} s (import {cold[0]:.2f} s), warm cache {warm[1]:.2f} s (import {warm[0]:.2f} s)")


if __name__ == "__main__":
    main()
