"""Each compiled kernel against its numpy reference on the benchmark nets' shapes (milliseconds).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/kernels.py [--repeats 50]

Runs the layers (MaxPool2D, Conv2D) forward and backward (input and parameter gradients) with each
implementation forced, float32, one thread, and prints the median time of each; needs the ``fast``
extra (numba).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from layerkit.kernels import select
from layerkit.layers.conv import Conv2D
from layerkit.layers.pooling import MaxPool2D
from layerkit.modelfile.spec import fill_defaults
from layerkit.parallel import threads
from layerkit.parallel.malloc import tune_malloc

#: (layer, config, batch shape): LeNet-style's and AlexNet-style MNIST's pools and convolutions at batch
#: 64 and 128
SAME3 = {"kernel_size": 3, "padding": "same", "use_bias": False}  # alexnet_mnist's convolutions
CASES = (
    (MaxPool2D, {"pool_size": 2}, (64, 8, 24, 24)),
    (MaxPool2D, {"pool_size": 2}, (64, 16, 8, 8)),
    (MaxPool2D, {"pool_size": 2}, (128, 32, 28, 28)),
    (MaxPool2D, {"pool_size": 2}, (128, 64, 14, 14)),
    (MaxPool2D, {"pool_size": 3, "stride": 2}, (64, 32, 13, 13)),
    (MaxPool2D, {"pool_size": 3, "stride": 2, "padding": 1}, (64, 32, 14, 14)),
    (Conv2D, {"filters": 8, "kernel_size": 5}, (64, 1, 28, 28)),
    (Conv2D, {"filters": 16, "kernel_size": 5}, (64, 8, 12, 12)),
    (Conv2D, {"filters": 32, **SAME3}, (128, 1, 28, 28)),
    (Conv2D, {"filters": 32, **SAME3}, (128, 32, 28, 28)),
    (Conv2D, {"filters": 64, **SAME3}, (128, 32, 14, 14)),
    (Conv2D, {"filters": 64, **SAME3}, (128, 64, 14, 14)),
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
    print(f"{'layer':<12} {'config':<48} {'shape':<18} {'numpy fwd':>9} {'bwd':>7} {'numba fwd':>9} {'bwd':>7}")
    for cls, config, shape in CASES:
        layer = cls(**fill_defaults(cls.params_schema, config))
        x = rng.standard_normal(shape).astype(np.float32)
        params = {name: (rng.standard_normal(spec.shape) * 0.1).astype(np.float32)
                  for name, spec in layer.param_specs(shape[1:]).items()}
        row = []
        for name in ("numpy", "numba"):
            impls = {k: (select.compiled(k) if name == "numba" else spec.reference)
                     for k, spec in select.KERNELS.items()}
            with select.forced(impls):
                y, cache = layer.forward(params, x, True)
                dy = rng.standard_normal(y.shape).astype(np.float32)
                row.append(median_ms(lambda layer=layer, x=x, p=params: layer.forward(p, x, True), args.repeats))
                row.append(median_ms(lambda layer=layer, c=cache, dy=dy, p=params: layer.backward(p, c, dy),
                                     args.repeats))
        print(f"{layer.type:<12} {str(config):<48} {str(shape):<18} " + " ".join(f"{t:9.3f}" for t in row))


if __name__ == "__main__":
    main()
