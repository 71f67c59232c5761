"""Each compiled kernel against its numpy reference on the benchmark nets' shapes (milliseconds).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/kernels.py [--repeats 50]

Runs the layers (MaxPool2D ...) forward and backward with each implementation forced, float32, one
thread, and prints the median time of each; needs the ``fast`` extra (numba).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from layerkit.kernels import select
from layerkit.layers.pooling import MaxPool2D
from layerkit.modelfile.spec import fill_defaults
from layerkit.parallel import threads
from layerkit.parallel.malloc import tune_malloc

#: (layer, config, batch shape): LeNet-style's and AlexNet-style MNIST's pools at batch 64 and 128
CASES = (
    (MaxPool2D, {"pool_size": 2}, (64, 8, 24, 24)),
    (MaxPool2D, {"pool_size": 2}, (64, 16, 8, 8)),
    (MaxPool2D, {"pool_size": 2}, (128, 32, 28, 28)),
    (MaxPool2D, {"pool_size": 2}, (128, 64, 14, 14)),
    (MaxPool2D, {"pool_size": 3, "stride": 2}, (64, 32, 13, 13)),
    (MaxPool2D, {"pool_size": 3, "stride": 2, "padding": 1}, (64, 32, 14, 14)),
)


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    threads.set_num_threads(1)
    tune_malloc()  # as training does: freed buffers are reused, not faulted in again
    rng = np.random.default_rng(0)
    print(f"{'kernel':<12} {'config':<40} {'shape':<18} {'numpy fwd':>9} {'bwd':>7} {'numba fwd':>9} {'bwd':>7}")
    for cls, config, shape in CASES:
        layer = cls(**fill_defaults(cls.params_schema, config))
        x = rng.standard_normal(shape).astype(np.float32)
        row = []
        for name in ("numpy", "numba"):
            impls = {k: (select.compiled(k) if name == "numba" else spec.reference)
                     for k, spec in select.KERNELS.items()}
            with select.forced(impls):
                y, cache = layer.forward({}, x, True)
                dy = rng.standard_normal(y.shape).astype(np.float32)
                row.append(median_ms(lambda layer=layer, x=x: layer.forward({}, x, True), args.repeats))
                row.append(median_ms(lambda layer=layer, c=cache, dy=dy: layer.backward({}, c, dy), args.repeats))
        print(f"{'max_pool2d':<12} {str(config):<40} {str(shape):<18} " + " ".join(f"{t:9.3f}" for t in row))


if __name__ == "__main__":
    main()
