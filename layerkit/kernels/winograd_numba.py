"""Winograd F(2x2, 3x3) convolution compiled with numba: 3x3, stride 1, zero padding 0 or 1.

Each 2x2 block of outputs (a tile) comes from a 4x4 patch of the padded input ``d``:
``y = A^T [(G g G^T) * (B^T d B)] A`` with the element-wise product summed over the input
channels. The 16 products of one tile are then 16 independent channel sums, i.e. 16 GEMMs
``M[k] (F x tiles) = U[k] (F x C) @ V[k] (C x tiles)``, with 16 multiplies per tile and channel
pair where im2col needs 36: 2.25x fewer.

The layout follows from that:

- ``U = G g G^T`` for every (filter, channel) pair, (16, F, C), once per call;
- the tiles are taken in blocks of whole images (of tile rows when one image is too big), so that
  a block's transformed input ``V (16, C, tiles)`` and products ``M (16, F, tiles)`` stay in the
  core's L2 cache instead of streaming 4x the input through memory;
- the input transform ``V = B^T d B`` copies the image rows the block needs into zero-padded
  row slots (padding, odd sizes and partial last tiles need no padded copy of the input) and then
  runs one long loop over the block's tiles;
- the output transform ``A^T m A`` writes its 2x2 outputs in image order and copies them, row by
  row, into the NCHW result, adding the bias.

The 16 GEMMs are numpy's matmul (OpenBLAS), one call per block: a numba loop (:func:`_products`,
kept for the benchmark) measured slower.

The input gradient of a 3x3 stride-1 convolution is itself one: ``dy`` padded by ``2 - pad``
on each side, convolved with the kernel rotated by 180 degrees and its channel axes swapped
(:func:`backward_input`). The weight gradient uses the transposed algorithm
``dg = G^T [sum over tiles of (A dy A^T) * (B^T d B)] G`` (:func:`backward_weights`): 16
GEMMs whose inner dimension is the tiles.

Results differ from the im2col path only by rounding: the transforms add and subtract up to 16
values per product; tests/test_winograd.py holds float32 results to 1e-5 of the output's largest
value and float64 ones to 1e-12.

:data:`IMPL` is the compiled twin of :class:`layerkit.kernels.winograd.WinogradNumpy` in the kernel
registry (kernel ``conv2d_winograd``), which :class:`~layerkit.layers.conv.Conv2D` calls.
"""

from __future__ import annotations

import numba
import numpy as np

from layerkit.kernels.windows import pair

#: G of F(2x2, 3x3): U = G g G^T maps a 3x3 kernel to its 4x4 transform
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])

#: target bytes of a block's transformed input plus its products: L2-sized (1 MiB per core), with room
#: for the weights' transform and the input rows the block reads
BLOCK_BYTES = 1 << 20

#: B^T's rows as (row parity and slot offset of its first term, the same of its second; _SIGNS: the sign
#: of the second): d0 - d2, d1 + d2, d2 - d1, d1 - d3, where the patch's row r has parity r % 2 and lies
#: r // 2 slots (tile rows) on in _input_block's staged rows
_ROWS = np.array([[0, 0, 0, 1], [1, 0, 0, 1], [0, 1, 1, 0], [1, 0, 1, 1]])
_SIGNS = np.array([-1.0, 1.0, -1.0, -1.0], dtype=np.float32)

#: A's rows (A e A^T = the 4x4 tile gradient from the 2x2 output gradient e) as the weights of e's
#: two rows: e0, e0 + e1, e0 - e1, -e1
_A_ROWS = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, -1.0], [0.0, -1.0]], dtype=np.float32)

#: unsigned indices for the compiled loops (see _input_block)
_U = np.uint64
_ONE, _TWO = np.uint64(1), np.uint64(2)

#: fewest input channels of the forward and of the input gradient (F) for which Winograd beats im2col:
#: below it the 16 GEMMs are too thin for BLAS (docs/performance.md, "Compiled kernels")
MIN_CHANNELS = 8


def covers(c: int, f: int, kh: int, kw: int, stride: tuple[int, int] | int, dilation: tuple[int, int] | int,
           groups: int, pads: tuple[int, int, int, int]) -> bool:
    """Whether :func:`forward` computes this convolution and beats im2col on it: a 3x3 kernel, stride 1,
    dilation 1, one group, each pad (top, bottom, left, right) 0 or 1, and at least MIN_CHANNELS input
    channels and filters (the filters are the input gradient's input channels)."""
    return ((kh, kw) == (3, 3) and pair(stride, "stride") == (1, 1) and pair(dilation, "dilation") == (1, 1)
            and groups == 1 and len(pads) == 4 and all(p in (0, 1) for p in pads) and min(c, f) >= MIN_CHANNELS)


#: G (x) G: U[4 i + j] = sum over (k, l) of G[i, k] G[j, l] g[k, l], one (16 x 9) @ (9 x F C) product
GG = np.kron(G, G)


def weight_transform(w: np.ndarray) -> np.ndarray:
    """``U = G g G^T`` for every (filter, channel): (16, F, C), in ``w``'s dtype."""
    f, c = w.shape[:2]
    flat = np.ascontiguousarray(w).reshape(f * c, 9)
    return (GG.astype(w.dtype) @ flat.T).reshape(16, f, c)


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _input_block(x, pt, pl, start, rows, th, tw, v):  # pragma: no cover - compiled
    # V[k, c, j] = (B^T d B)[k] for ``rows`` tile rows from global tile row ``start`` (= n * th + ty).
    # Tiles lie on a "wide" grid, j = row * (tw + 1) + tx, one junk tile per row. The padded input
    # rows 2 ty + a are copied whole (contiguous copies) into slots of 2 (tw + 1) values, row parity
    # a in s[a]: then tile j's 4x4 patch starts at 2 j in s[0] and s[1] (its rows 2 and 3 one slot
    # further on) and the transform is one long vectorised loop over j. Short loops per image row
    # (14 or 28 values) are what the time goes to otherwise: a deinterleaving copy per row measured
    # slower, and stride-2 loops per tile row slower still (docs/performance.md).
    _, c_in, h, w = x.shape
    w1 = tw + 1
    w2 = 2 * w1  # a slot: padded columns 0 .. 2 tw + 1; w + pl <= w2 always
    slen = (rows + 2) * w2 + 4
    # columns before pl and from pl + w on are never written: they stay the zero padding
    s = np.zeros((2, slen), dtype=v.dtype)
    sf = s.reshape(-1)
    xf = x.reshape(-1)
    for c in range(c_in):
        done = 0
        while done < rows:
            g = start + done
            n, ty0 = g // th, g % th
            seg = min(rows - done, th - ty0)  # this image's tile rows in the block
            for pr in range(seg + 1):
                for a in range(2):
                    iy = 2 * (ty0 + pr) + a - pt
                    # unsigned indices, all non-negative: numba then drops its negative-index
                    # wraparound select, which kept LLVM from vectorising such loops
                    d = _U(a * slen + pr * w2 + pl)
                    if 0 <= iy < h:
                        src = _U(((n * c_in + c) * h + iy) * w)
                        for t in range(w):
                            k = _U(t)
                            sf[d + k] = xf[src + k]
                    else:
                        for t in range(w):
                            sf[d + _U(t)] = 0.0
            # B^T's row u combines two of the patch's rows, A and B (d0 - d2, d1 + d2, d2 - d1,
            # d1 - d3); one loop per u keeps each loop at four output streams, which LLVM vectorises
            j0 = done * w1
            nj = seg * w1
            for u in range(4):
                pa, oa, pb, ob = _ROWS[u, 0], _ROWS[u, 1] * w2, _ROWS[u, 2], _ROWS[u, 3] * w2
                sg = v.dtype.type(_SIGNS[u])
                sa = s[pa, oa:oa + 2 * nj + 4]
                sb = s[pb, ob:ob + 2 * nj + 4]
                v0, v1 = v[4 * u, c, j0:j0 + nj], v[4 * u + 1, c, j0:j0 + nj]
                v2, v3 = v[4 * u + 2, c, j0:j0 + nj], v[4 * u + 3, c, j0:j0 + nj]
                for j in range(nj):
                    q = 2 * j
                    r0 = sa[q] + sg * sb[q]
                    r1 = sa[q + 1] + sg * sb[q + 1]
                    r2 = sa[q + 2] + sg * sb[q + 2]
                    r3 = sa[q + 3] + sg * sb[q + 3]
                    v0[j] = r0 - r2
                    v1[j] = r1 + r2
                    v2[j] = r2 - r1
                    v3[j] = r1 - r3
            done += seg


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _output_block(m, b, start, rows, th, tw, y):  # pragma: no cover - compiled
    # y[n, f, 2 ty + a, 2 tx + bb] = (A^T m A)[a, bb] + bias, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]:
    # one long loop over the block's wide grid writes each tile's 2x2 outputs to z[a, 2 j + bb],
    # where each tile row's outputs are already in image order; then contiguous copies of wo values
    # per output row (cropping the junk tile and an odd last row or column). Short interleaving
    # loops per row instead measured slower.
    _, f_out, ho, wo = y.shape
    w1 = tw + 1
    nt = rows * w1
    z = np.empty((2, 2 * nt), dtype=m.dtype)
    z0, z1 = z[0], z[1]
    yf = y.reshape(-1)
    for f in range(f_out):
        bias = b[f]
        # one-dimensional views hoisted out of the loop: indexing m[k, f, j] inside it keeps LLVM
        # from vectorising (measured slower)
        m0, m1, m2, m3 = m[0, f, :nt], m[1, f, :nt], m[2, f, :nt], m[3, f, :nt]
        m4, m5, m6, m7 = m[4, f, :nt], m[5, f, :nt], m[6, f, :nt], m[7, f, :nt]
        m8, m9, m10, m11 = m[8, f, :nt], m[9, f, :nt], m[10, f, :nt], m[11, f, :nt]
        m12, m13, m14, m15 = m[12, f, :nt], m[13, f, :nt], m[14, f, :nt], m[15, f, :nt]
        for j in range(nt):
            # A^T m: rows (m0 + m1 + m2, m1 - m2 - m3) for each of the 4 columns, then the columns
            s00 = m0[j] + m4[j] + m8[j]
            s01 = m1[j] + m5[j] + m9[j]
            s02 = m2[j] + m6[j] + m10[j]
            s03 = m3[j] + m7[j] + m11[j]
            s10 = m4[j] - m8[j] - m12[j]
            s11 = m5[j] - m9[j] - m13[j]
            s12 = m6[j] - m10[j] - m14[j]
            s13 = m7[j] - m11[j] - m15[j]
            z0[2 * j] = s00 + s01 + s02 + bias
            z0[2 * j + 1] = s01 - s02 - s03 + bias
            z1[2 * j] = s10 + s11 + s12 + bias
            z1[2 * j + 1] = s11 - s12 - s13 + bias
        for row in range(rows):
            g = start + row
            n, ty = g // th, g % th
            src = _U(2 * row * w1)
            oy = 2 * ty
            base = _U(((n * f_out + f) * ho + oy) * wo)  # unsigned: see _input_block
            for t in range(wo):
                k = _U(t)
                yf[base + k] = z0[src + k]
            if oy + 1 < ho:
                b1 = base + _U(wo)
                for t in range(wo):
                    k = _U(t)
                    yf[b1 + k] = z1[src + k]


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _grad_block(dy, start, rows, th, tw, d):  # pragma: no cover - compiled
    # D[k, f, j] = (A e A^T)[k] for the 2x2 output gradient e of each tile of the block, on the same
    # wide grid as _input_block; the junk tile and the outputs past an odd edge are zero, so they
    # add nothing to the weight gradient. A e A^T's rows are (e0, e0 + e1, e0 - e1, -e1), applied to
    # the rows of e and then to its columns.
    _, f_out, ho, wo = dy.shape
    w1 = tw + 1
    nt = rows * w1
    e = np.zeros((4, nt), dtype=d.dtype)  # e[2 a + b, j] = dy[n, f, 2 ty + a, 2 tx + b]
    ef = e.reshape(-1)
    yf = dy.reshape(-1)
    e_hi, o_hi = (wo + 1) // 2, wo // 2  # tiles whose even (odd) output column is inside
    for f in range(f_out):
        for row in range(rows):
            g = start + row
            n, ty = g // th, g % th
            for a in range(2):
                oy = 2 * ty + a
                pe = 2 * a * nt + row * w1
                po = pe + nt
                if oy < ho:
                    # deinterleaved into the four parts here (the columns past the edge stay zero):
                    # _input_block's staged rows measured slower for this transform, which reads
                    # each value once
                    base = _U(((n * f_out + f) * ho + oy) * wo)
                    ue, uo = _U(pe), _U(po)
                    # unsigned indices: see _input_block
                    for t in range(o_hi):
                        k = _U(t)
                        ef[ue + k] = yf[base + _TWO * k]
                        ef[uo + k] = yf[base + _TWO * k + _ONE]
                    if e_hi > o_hi:
                        ef[pe + o_hi] = yf[base + _U(2 * o_hi)]
                else:
                    for tx in range(w1):
                        ef[pe + tx] = 0.0
                        ef[po + tx] = 0.0
        e00, e01, e10, e11 = e[0], e[1], e[2], e[3]
        for i in range(4):
            # row i of A e: (e0, e0 + e1, e0 - e1, -e1) with e0, e1 the rows of e
            sa = d.dtype.type(_A_ROWS[i, 0])
            sb = d.dtype.type(_A_ROWS[i, 1])
            d0, d1, d2, d3 = d[4 * i, f, :nt], d[4 * i + 1, f, :nt], d[4 * i + 2, f, :nt], d[4 * i + 3, f, :nt]
            for j in range(nt):
                r0 = sa * e00[j] + sb * e10[j]
                r1 = sa * e01[j] + sb * e11[j]
                d0[j] = r0
                d1[j] = r0 + r1
                d2[j] = r0 - r1
                d3[j] = -r1


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _products(u, v, m, nt):  # pragma: no cover - compiled
    # m[k, :, :nt] = u[k] @ v[k, :, :nt] for the 16 k, in numba: four filters at a time share each
    # row of v, the tiles innermost (contiguous, vectorised). Measured against numpy's matmul in
    # bench/winograd.py (--products numba).
    _, f_out, c_in = u.shape
    for k in range(16):
        uk, vk, mk = u[k], v[k], m[k]
        f = 0
        while f + 4 <= f_out:
            m0, m1, m2, m3 = mk[f], mk[f + 1], mk[f + 2], mk[f + 3]
            for j in range(nt):
                m0[j] = 0.0
                m1[j] = 0.0
                m2[j] = 0.0
                m3[j] = 0.0
            for c in range(c_in):
                a0, a1, a2, a3 = uk[f, c], uk[f + 1, c], uk[f + 2, c], uk[f + 3, c]
                vc = vk[c]
                for j in range(nt):
                    s = vc[j]
                    m0[j] += a0 * s
                    m1[j] += a1 * s
                    m2[j] += a2 * s
                    m3[j] += a3 * s
            f += 4
        while f < f_out:
            m0 = mk[f]
            for j in range(nt):
                m0[j] = 0.0
            for c in range(c_in):
                a0 = uk[f, c]
                vc = vk[c]
                for j in range(nt):
                    m0[j] += a0 * vc[j]
            f += 1


def _check(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, pads: tuple[int, int, int, int]) -> None:
    """ValueError unless x is (N, C, H, W), w (F, C, 3, 3), b None or (F,), and pads four values >= 0."""
    if x.ndim != 4 or w.shape != (w.shape[0], x.shape[1], 3, 3):
        raise ValueError(f"x {x.shape} and weights {w.shape}: need (N, C, H, W) and (F, C, 3, 3)")
    if b is not None and np.shape(b) != (w.shape[0],):
        raise ValueError(f"bias {np.shape(b)} for {w.shape[0]} filters")
    _check_pads(pads)


def _check_pads(pads: tuple[int, int, int, int]) -> None:
    if len(pads) != 4 or min(int(p) for p in pads) < 0:
        raise ValueError(f"pads {tuple(pads)}: four values >= 0 (top, bottom, left, right)")


def _rows_per_block(c: int, f: int, th: int, tw: int, n: int, itemsize: int, budget: int) -> int:
    """Tile rows per block: whole images while one fits the budget (V and M of a block), else as many
    rows as fit, at least one. Blocks of whole images read each channel of the input in one run, and
    measured faster on the input transform than blocks that cut images (docs/performance.md)."""
    per_row = 16 * (c + f) * (tw + 1) * itemsize
    if per_row * th <= budget:
        return th * min(n, budget // (per_row * th))
    return max(1, budget // per_row)


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, pads: tuple[int, int, int, int],
          products: str = "numpy", block_bytes: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
    # any pads >= 0 (backward_input needs 2 - pad); negative ones would index before the staged rows
    _check(x, w, b, pads)
    n, c, h, wd = x.shape
    f = w.shape[0]
    pt, pb, pl, pr = (int(p) for p in pads)
    ho, wo = h + pt + pb - 2, wd + pl + pr - 2
    shape = (n, f, max(ho, 0), max(wo, 0))
    if out is not None and (out.shape != shape or out.dtype != x.dtype or not out.flags.c_contiguous):
        raise ValueError(f"out {out.dtype}{out.shape}: need a C-contiguous {x.dtype}{shape}")
    y = np.empty(shape, dtype=x.dtype) if out is None else out
    if y.size == 0:
        return y
    x = np.ascontiguousarray(x)
    u = weight_transform(w.astype(x.dtype, copy=False))
    bias = np.zeros(f, dtype=x.dtype) if b is None else np.ascontiguousarray(b, dtype=x.dtype)
    th, tw = (ho + 1) // 2, (wo + 1) // 2
    total = n * th
    rpb = _rows_per_block(c, f, th, tw, n, x.itemsize, block_bytes or BLOCK_BYTES)
    v = np.empty((16, c, rpb * (tw + 1)), dtype=x.dtype)
    m = np.empty((16, f, rpb * (tw + 1)), dtype=x.dtype)
    for start in range(0, total, rpb):
        rows = min(rpb, total - start)
        nt = rows * (tw + 1)
        _input_block(x, pt, pl, start, rows, th, tw, v)
        if products == "numba":
            _products(u, v, m, nt)
        elif nt == v.shape[2]:
            np.matmul(u, v, out=m)
        else:
            m[:, :, :nt] = np.matmul(u, v[:, :, :nt])
        _output_block(m, bias, start, rows, th, tw, y)
    return y


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, pads: tuple[int, int, int, int], *,
            block_bytes: int | None = None, products: str = "numpy", out: np.ndarray | None = None) -> np.ndarray:
    """The 3x3 stride-1 convolution of ``x`` (N, C, H, W) with ``w`` (F, C, 3, 3), plus ``b`` (F,) when
    given, zero padding ``pads`` = (top, bottom, left, right): (N, F, Ho, Wo), C-contiguous, x's dtype.

    ``block_bytes`` overrides :data:`BLOCK_BYTES` (a smaller budget makes blocks of tile rows that cut
    images); ``products="numba"`` runs the 16 GEMMs in numba instead of numpy's matmul (for comparison:
    it measured slower); ``out`` receives the result instead of a new array."""
    if products not in ("numpy", "numba"):
        raise ValueError(f"products={products!r}: 'numpy' or 'numba'")
    return _conv(x, w, b, pads, products, block_bytes, out)


def backward_input(dy: np.ndarray, w: np.ndarray, pads: tuple[int, int, int, int], hw: tuple[int, int], *,
                   out: np.ndarray | None = None) -> np.ndarray:
    """The gradient with respect to the input (N, C, H, W), ``hw`` = (H, W), of :func:`forward` given
    ``dy`` (N, F, Ho, Wo): the stride-1 convolution of dy padded by 2 - pad with the rotated kernel
    (into ``out`` when given)."""
    pt, pb, pl, pr = pads
    if max(pads) > 2:
        raise ValueError(f"pads {tuple(pads)}: at most 2 each for the input gradient")
    if out is not None and out.shape[2:] != tuple(hw):
        raise ValueError(f"out {out.shape} for an input of {tuple(hw)}")
    wt = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    dx = _conv(dy, wt, None, (2 - pt, 2 - pb, 2 - pl, 2 - pr), out=out)
    if dx.shape[2:] != tuple(hw):
        raise ValueError(f"dy {dy.shape} with pads {pads} gives an input of {dx.shape[2:]}, not {tuple(hw)}")
    return dx


def backward_weights(x: np.ndarray, dy: np.ndarray, pads: tuple[int, int, int, int], *,
                     block_bytes: int | None = None) -> np.ndarray:
    """The gradient with respect to the weights (F, C, 3, 3) of :func:`forward` given its input ``x``
    (N, C, H, W) and ``dy`` (N, F, Ho, Wo): ``G^T [sum over tiles of (A dy A^T) * (B^T x B)] G``, 16 GEMMs
    whose inner dimension is the tiles, summed block by block (``block_bytes`` as in :func:`forward`)."""
    if x.ndim != 4 or dy.ndim != 4:
        raise ValueError(f"x {x.shape} and dy {dy.shape}: need (N, C, H, W) and (N, F, Ho, Wo)")
    _check_pads(pads)
    n, c, h, wd = x.shape
    f, ho, wo = dy.shape[1:]
    pt, pb, pl, pr = (int(p) for p in pads)
    if (ho, wo) != (h + pt + pb - 2, wd + pl + pr - 2) or dy.shape[0] != n:
        raise ValueError(f"dy {dy.shape} does not match x {x.shape} with pads {pads}")
    x = np.ascontiguousarray(x)
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    th, tw = (ho + 1) // 2, (wo + 1) // 2
    total = n * th
    rpb = _rows_per_block(c, f, th, tw, n, x.itemsize, block_bytes or BLOCK_BYTES)
    v = np.empty((16, c, rpb * (tw + 1)), dtype=x.dtype)
    d = np.empty((16, f, rpb * (tw + 1)), dtype=x.dtype)
    acc = np.zeros((16, f, c), dtype=x.dtype)
    part = np.empty((16, f, c), dtype=x.dtype)
    for start in range(0, total, rpb):
        rows = min(rpb, total - start)
        nt = rows * (tw + 1)
        _input_block(x, pt, pl, start, rows, th, tw, v)
        _grad_block(dy, start, rows, th, tw, d)
        np.matmul(d[:, :, :nt], v[:, :, :nt].transpose(0, 2, 1), out=part)
        acc += part
    # dg[f, c, i, j] = sum over (k, l) of G[k, i] G[l, j] acc[4 k + l, f, c]: one (9 x 16) @ (16 x F C)
    # product, not a three-operand einsum, which is slow enough to matter (docs/performance.md)
    dg = GG.T.astype(x.dtype) @ acc.reshape(16, f * c)
    return np.ascontiguousarray(dg.reshape(3, 3, f, c).transpose(2, 3, 0, 1))


class WinogradNumba:
    """The registry's face of this module: :func:`forward`, :func:`backward_input` and :func:`backward_weights`
    for the convolutions :func:`covers` accepts (the layer asks it first)."""

    path = "numba"

    def covers(self, c: int, f: int, kh: int, kw: int, stride: tuple[int, int] | int,
               dilation: tuple[int, int] | int, groups: int, pads: tuple[int, int, int, int]) -> bool:
        return covers(c, f, kh, kw, stride, dilation, groups, pads)

    def forward(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, pads: tuple[int, int, int, int],
                out: np.ndarray | None = None) -> np.ndarray:
        return forward(x, w, b, pads, out=out)

    def backward_input(self, dy: np.ndarray, w: np.ndarray, pads: tuple[int, int, int, int], hw: tuple[int, int],
                       out: np.ndarray | None = None) -> np.ndarray:
        return backward_input(dy, w, pads, hw, out=out)

    def backward_weights(self, x: np.ndarray, dy: np.ndarray, pads: tuple[int, int, int, int]) -> np.ndarray:
        return backward_weights(x, dy, pads)


IMPL = WinogradNumba()
