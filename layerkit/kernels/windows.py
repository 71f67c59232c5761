"""Sliding-window geometry shared by convolution and pooling.

Every windowed kernel here is written as a loop over the kernel *offsets*
(kh*kw iterations) where each iteration touches a strided view of the whole
batch at once. For offset (i, j) the view ``xp[:, :, rows(i), cols(j)]`` holds,
for every output pixel, the input element that sits at that offset of its
window; im2col copies those views into a column buffer and col2im adds them
back, which is the "full convolution with the rotated kernel" without any
per-pixel work.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from layerkit.errors import ShapeError


def pair(value, what: str) -> tuple[int, int]:
    """An int or a two-element list as (height, width)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ShapeError(f"{what} must be an integer or a pair [h, w], got {list(value)}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


class Window(NamedTuple):
    """Resolved geometry of a 2-D sliding window over one (H, W) input."""

    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int
    ho: int
    wo: int

    @property
    def padded(self) -> bool:
        return bool(self.pad_top or self.pad_bottom or self.pad_left or self.pad_right)

    def padded_hw(self, h: int, w: int) -> tuple[int, int]:
        return h + self.pad_top + self.pad_bottom, w + self.pad_left + self.pad_right

    def rows(self, i: int) -> slice:
        start = i * self.dh
        return slice(start, start + self.sh * (self.ho - 1) + 1, self.sh)

    def cols(self, j: int) -> slice:
        start = j * self.dw
        return slice(start, start + self.sw * (self.wo - 1) + 1, self.sw)

    def offsets(self):
        """(i, j, rows, cols) for every kernel offset, row-major (the tie-break order)."""
        for i in range(self.kh):
            rows = self.rows(i)
            for j in range(self.kw):
                yield i, j, rows, self.cols(j)


def _same_padding(size: int, k_eff: int, stride: int) -> tuple[int, int]:
    # "same": output = ceil(input / stride); the odd pixel of padding goes last (TensorFlow's rule)
    out = -(-size // stride)
    total = max((out - 1) * stride + k_eff - size, 0)
    return total // 2, total - total // 2


def window(in_hw, kernel, stride=1, padding=0, dilation=1) -> Window:
    """Resolve a window over ``in_hw``; raise ShapeError when it cannot fit."""
    h, w = in_hw
    kh, kw = pair(kernel, "kernel_size")
    sh, sw = pair(stride, "stride")
    dh, dw = pair(dilation, "dilation")
    keh, kew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if padding == "same":
        (pt, pb), (pl, pr) = _same_padding(h, keh, sh), _same_padding(w, kew, sw)
    elif padding == "valid":
        pt = pb = pl = pr = 0
    else:
        ph, pw = pair(padding, "padding")
        pt = pb = ph
        pl = pr = pw
    hp, wp = h + pt + pb, w + pl + pr
    if keh > hp or kew > wp:
        raise ShapeError(f"kernel {kh}x{kw} (dilated {keh}x{kew}) does not fit the padded input {hp}x{wp}")
    return Window(kh, kw, sh, sw, dh, dw, pt, pb, pl, pr, (hp - keh) // sh + 1, (wp - kew) // sw + 1)


def pad(x: np.ndarray, g: Window, value: float = 0.0) -> np.ndarray:
    """Pad the two spatial axes of an NCHW batch once; no copy when there is no padding."""
    if not g.padded:
        return x
    n, c, h, w = x.shape
    hp, wp = g.padded_hw(h, w)
    if value == 0.0:
        out = np.zeros((n, c, hp, wp), dtype=x.dtype)
    else:
        out = np.full((n, c, hp, wp), value, dtype=x.dtype)
    out[:, :, g.pad_top:g.pad_top + h, g.pad_left:g.pad_left + w] = x
    return out


def unpad(xp: np.ndarray, g: Window, h: int, w: int) -> np.ndarray:
    if not g.padded:
        return xp
    return xp[:, :, g.pad_top:g.pad_top + h, g.pad_left:g.pad_left + w]


def im2col(xp: np.ndarray, g: Window, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` (N, C, kh, kw, Ho, Wo) with the windows of the padded batch ``xp``."""
    for i, j, rows, cols in g.offsets():
        out[:, :, i, j] = xp[:, :, rows, cols]
    return out


def col2im_add(dcols: np.ndarray, g: Window, dxp: np.ndarray) -> np.ndarray:
    """Scatter-add column gradients (N, C, kh, kw, Ho, Wo) back into the padded ``dxp``.

    Within one offset the output pixels hit distinct input pixels, so a plain
    strided ``+=`` is exact; overlaps between offsets are summed by the loop.
    """
    for i, j, rows, cols in g.offsets():
        dxp[:, :, rows, cols] += dcols[:, :, i, j]
    return dxp


# -- stride-1 "wide" layout ---------------------------------------------------------------------------
#
# With stride 1, flatten each padded image to one row of values, Wf per image row. The window
# element at offset (i, j) of output pixel (r, q) sits at base + r*Wf + q + i*dh*Wf + j*dw,
# so for one offset the values of *all* output pixels, computed on a "wide" grid of
# Ho x Wf positions, form one contiguous run of Ho*Wf values. im2col then copies long
# runs instead of Wo-long rows (the short rows made it ufunc-overhead bound); the
# last Wf - Wo columns of every output row are junk and are cropped off.
#
# A row's right padding and the next row's left padding are the same zeros: each flat row
# holds max(left, right) zeros and then the image row, so Wf = W + max(left, right), not
# W + left + right. A window running off the right edge reads the next row's leading zeros.
# For 'same' 3x3 layers this halves the junk columns (28x28: 29 instead of 30 per row, 14x14:
# 15 instead of 16), which are GEMM work and copies thrown away.


class Flat(NamedTuple):
    """Where an (H, W) image sits in its flat padded row (see above)."""

    wf: int  # flat values per image row: W + max(pad_left, pad_right)
    lead: int  # zeros before each image row: max(pad_left, pad_right)
    base: int  # flat index of the first window's top-left tap
    rows: int  # flat rows: top padding, the image, bottom padding and one spare
    size: int  # flat values per channel, with a tail every window read stays inside

    def start(self, g: Window, i: int, j: int) -> int:
        """Flat index of tap (i, j) of output pixel (0, 0)."""
        return self.base + i * g.dh * self.wf + j * g.dw


def flat(g: Window, h: int, w: int) -> Flat:
    lead = max(g.pad_left, g.pad_right)
    wf = w + lead
    rows = h + g.pad_top + g.pad_bottom + 1
    base = lead - g.pad_left
    return Flat(wf, lead, base, rows, rows * wf + base + (g.kw - 1) * g.dw + 1)


def pad_flat(x: np.ndarray, g: Window, f: Flat) -> np.ndarray:
    """Zero-pad and flatten to (N, C, f.size)."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, f.size), dtype=x.dtype)
    image_rows(out, g, f, h, w)[...] = x
    return out


def image_rows(xf: np.ndarray, g: Window, f: Flat, h: int, w: int) -> np.ndarray:
    """The (..., H, W) view of the image inside a flat padded array (..., f.size)."""
    grid = xf[..., :f.rows * f.wf].reshape(*xf.shape[:-1], f.rows, f.wf)
    return grid[..., g.pad_top:g.pad_top + h, f.lead:f.lead + w]


def im2col_wide(xf: np.ndarray, g: Window, f: Flat, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` (n, C, kh, kw, Ho * Wf) from the flat padded batch ``xf``."""
    run = g.ho * f.wf
    for i in range(g.kh):
        for j in range(g.kw):
            start = f.start(g, i, j)
            out[:, :, i, j] = xf[:, :, start:start + run]
    return out


def col2im_wide_add(dcols: np.ndarray, g: Window, f: Flat, dxf: np.ndarray) -> np.ndarray:
    """Add wide column gradients (n, C, kh, kw, Ho * Wf) back into the flat padded ``dxf``.

    Junk columns must hold zeros (they land on padding or on the next row).
    """
    run = g.ho * f.wf
    for i in range(g.kh):
        for j in range(g.kw):
            start = f.start(g, i, j)
            dxf[:, :, start:start + run] += dcols[:, :, i, j]
    return dxf
