"""Is Winograd F(2x2, 3x3) worth it in numpy? Forward time of a 'same' 3x3 convolution, Winograd
against layerkit's im2col path, on the AlexNet-style layer shapes.

    python bench/winograd_probe.py [--batch 128] [--repeats 5]

Winograd cuts the GEMM's multiplications by 2.25x (16 products per 2x2 output tile instead of
36) but needs an input transform (16 values per tile and channel, from 4x4 overlapping
tiles) and an output transform, each a few dozen element-wise numpy passes. The probe times the
three parts separately, checks the result against layerkit's Conv2D, and prints one row per shape.
Run with OPENBLAS_NUM_THREADS=1 for the one-core figure.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from layerkit.layers.conv import Conv2D

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float32)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float32)


def weights(w):
    """U = G g G^T for every (filter, channel): (16, F, C)."""
    u = np.einsum("ik,fckl,jl->ijfc", G, w, G)
    return np.ascontiguousarray(u.reshape(16, *w.shape[:2]))


def input_transform(x):
    """V = B^T d B for every 4x4 tile (stride 2) of the zero-padded batch: (16, C, n*th*tw)."""
    n, c, h, w = x.shape
    th, tw = h // 2, w // 2
    xp = np.zeros((n, c, h + 2, w + 2), dtype=x.dtype)
    xp[:, :, 1:h + 1, 1:w + 1] = x
    d = [xp[:, :, u:u + 2 * th:2] for u in range(4)]
    rows = (d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3])
    v = np.empty((4, 4, c, n, th, tw), dtype=x.dtype)
    for u, r in enumerate(rows):
        cc = [r[..., k:k + 2 * tw:2].transpose(1, 0, 2, 3) for k in range(4)]
        np.subtract(cc[0], cc[2], out=v[u, 0])
        np.add(cc[1], cc[2], out=v[u, 1])
        np.subtract(cc[2], cc[1], out=v[u, 2])
        np.subtract(cc[1], cc[3], out=v[u, 3])
    return v.reshape(16, c, n * th * tw)


def output_transform(m, n, h, w):
    """Y = A^T M A per tile, written to (n, F, h, w)."""
    f = m.shape[1]
    th, tw = h // 2, w // 2
    m = m.reshape(4, 4, f, n, th, tw)
    s0 = m[0] + m[1] + m[2]  # (4, F, n, th, tw): over the tile's columns
    s1 = m[1] - m[2] - m[3]
    y = np.empty((n, f, h, w), dtype=m.dtype)
    for p, s in enumerate((s0, s1)):
        y[:, :, p::2, 0::2] = (s[0] + s[1] + s[2]).transpose(1, 0, 2, 3)
        y[:, :, p::2, 1::2] = (s[1] - s[2] - s[3]).transpose(1, 0, 2, 3)
    return y


def median_ms(fn: Callable[..., object], repeats: int, *args: object) -> float:
    """``fn(*args)``'s median wall time in milliseconds over ``repeats`` calls, after one warm-up call."""
    fn(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| layer (C -> F, HxW) | im2col forward ms | Winograd: input / GEMMs / output / total ms | "
          "max abs difference |")
    print("|---|---:|---:|---:|")
    for c, f, hw in ((32, 32, 28), (32, 64, 14), (64, 64, 14)):
        x = rng.standard_normal((args.batch, c, hw, hw)).astype(np.float32)
        w = (rng.standard_normal((f, c, 3, 3)) * 0.1).astype(np.float32)
        conv = Conv2D()
        conv.filters, conv.kernel_size, conv.stride, conv.padding = f, 3, 1, "same"
        conv.dilation, conv.groups, conv.use_bias = 1, 1, False
        params = {"W": w}
        im2col_ms = median_ms(conv.infer, args.repeats, params, x)
        u = weights(w)
        v = input_transform(x)
        mm = np.matmul(u, v)
        t_in = median_ms(input_transform, args.repeats, x)
        t_gemm = median_ms(np.matmul, args.repeats, u, v)
        t_out = median_ms(output_transform, args.repeats, mm, args.batch, hw, hw)
        diff = float(np.abs(output_transform(mm, args.batch, hw, hw) - conv.infer(params, x)).max())
        print(f"| {c} -> {f}, {hw}x{hw} | {im2col_ms:.1f} | {t_in:.1f} / {t_gemm:.1f} / {t_out:.1f} / "
              f"**{t_in + t_gemm + t_out:.1f}** | {diff:.1e} |")


if __name__ == "__main__":
    main()
