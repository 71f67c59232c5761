"""Float32 batch normalisation against a float64 reference, as the mean grows against the spread.

    python bench/batchnorm_precision.py [--samples 256] [--seed 0]

For mean/std = 1, 10, 100 and 1000 it draws a (N, C, H, W) float32 batch
x = mean + std * z, runs ``batch_norm`` forward and backward in training mode
in float32 and compares with the same layer computed in float64 (the layer's
float64 path is the reference; tests/test_normalization_reference.py checks
that against a plain-numpy formula). Columns:

- var: max relative error of the batch variance (read from running_var with momentum 0)
- y: max absolute error of the output (the output has unit scale)
- dx: max absolute error of the input gradient, relative to its largest element

With PyTorch installed (``pip install -e .[bench]``), ``torch.nn.functional.batch_norm``
in float32 on the same data is measured the same way.
"""

from __future__ import annotations

import argparse

import numpy as np

from layerkit.layers.normalization import BatchNorm

RATIOS = (1, 10, 100, 1000)


def layerkit_run(x, dy, dtype):
    layer = BatchNorm(momentum=0.0, epsilon=1e-5, affine=True)
    c = x.shape[1]
    params = {"gamma": np.ones(c, dtype), "beta": np.zeros(c, dtype)}
    state = {"running_mean": np.zeros(c, dtype), "running_var": np.ones(c, dtype)}
    y, cache = layer.forward(params, x.astype(dtype), training=True, state=state)
    dx, _ = layer.backward(params, cache, dy.astype(dtype))
    # momentum 0: running_var is this batch's (biased) variance
    return state["running_var"].astype(np.float64), y, dx


def torch_run(x, dy):
    try:
        import torch
    except ImportError:
        return None
    xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    c = x.shape[1]
    rm, rv = torch.zeros(c), torch.ones(c)
    y = torch.nn.functional.batch_norm(xt, rm, rv, torch.ones(c), torch.zeros(c), training=True, momentum=1.0,
                                       eps=1e-5)
    y.backward(torch.tensor(dy, dtype=torch.float32))
    m = x.size // c  # PyTorch keeps the unbiased variance
    return rv.double().numpy() * (m - 1) / m, y.detach().numpy(), xt.grad.numpy()


def errors(run, ref):
    var, y, dx = run
    rvar, ry, rdx = ref
    return (float(np.max(np.abs(var - rvar) / rvar)), float(np.max(np.abs(y - ry))),
            float(np.max(np.abs(dx - rdx)) / np.max(np.abs(rdx))))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    z = rng.standard_normal((args.samples, 4, 8, 8))
    dy = rng.standard_normal(z.shape).astype(np.float32)
    print(f"{'mean/std':>8} | {'layerkit var':>12} {'y':>9} {'dx':>9} | {'torch var':>9} {'y':>9} {'dx':>9}")
    for ratio in RATIOS:
        x = (ratio + z).astype(np.float32)  # std 1, mean = ratio
        ref = layerkit_run(x.astype(np.float64), dy.astype(np.float64), np.float64)
        ours = errors(layerkit_run(x, dy, np.float32), ref)
        theirs = torch_run(x, dy)
        cells = " ".join(f"{e:9.1e}" for e in errors(theirs, ref)) if theirs is not None else "      n/a"
        print(f"{ratio:>8} | {ours[0]:12.1e} {ours[1]:9.1e} {ours[2]:9.1e} | {cells}")


if __name__ == "__main__":
    main()
