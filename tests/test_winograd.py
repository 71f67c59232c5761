"""The numba Winograd F(2x2, 3x3) convolution against layerkit's Conv2D and a float64 direct convolution,
and the comparison failing on a deliberately wrong transform."""

import threading

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from layerkit.kernels import select
from layerkit.layers.conv import Conv2D

if not select.numba_installed():
    pytest.skip("needs the fast extra (numba)", allow_module_level=True)
# through the kernel selection, which points numba's cache at the user's directory before numba loads
select.compiled("conv2d_winograd")
from layerkit.kernels import winograd_numba as wn  # noqa: E402

#: float32 results within this fraction of the reference's largest value: the transforms add and
#: subtract up to 16 values per product, measured at most 1e-6 at He-initialised scale for 1 to 512
#: channels and batch 128 (bench/winograd.py), so a real error (a wrong entry, a shifted tile) is
#: orders of magnitude above it
RTOL32 = 1e-5
#: float64: the algorithm is exact, only rounding is left
RTOL64 = 1e-12


def direct(x, w, pads):
    """The convolution in float64 from its definition (sliding windows), any pads."""
    pt, pb, pl, pr = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    return np.einsum("ncijkl,fckl->nfij", sliding_window_view(xp, (3, 3), axis=(2, 3)), w.astype(np.float64))


def direct_dw(x, dy, pads):
    pt, pb, pl, pr = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    return np.einsum("ncijkl,nfij->fckl", sliding_window_view(xp, (3, 3), axis=(2, 3)), dy.astype(np.float64))


def rel(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def case(rng, n, c, f, h, w, dtype=np.float32):
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weights = (rng.standard_normal((f, c, 3, 3)) * np.sqrt(2.0 / (9 * c))).astype(dtype)  # He scale
    return x, weights, rng.standard_normal(f).astype(dtype)


def conv_layer(f, padding):
    layer = Conv2D()
    layer.filters, layer.kernel_size, layer.stride, layer.padding = f, 3, 1, padding
    layer.dilation, layer.groups, layer.use_bias = 1, 1, True
    return layer


# odd sizes (a partial last tile), sizes 1 and 2 (tiles that are mostly padding), batch 1 and 256, odd C and F
SHAPES = [(2, 5, 7, 9, 11), (1, 3, 4, 8, 7), (3, 1, 2, 5, 5), (2, 16, 9, 1, 1), (1, 2, 3, 2, 3), (4, 6, 9, 7, 10),
          (256, 2, 3, 3, 5)]


PADDINGS = [("same", (1, 1, 1, 1)), ("valid", (0, 0, 0, 0)), ([1, 0], (1, 1, 0, 0))]


@pytest.mark.parametrize("n, c, f, h, w, padding, pads", [
    (*shape, padding, pads) for shape in SHAPES for padding, pads in PADDINGS
    if shape[3] + pads[0] + pads[1] >= 3 and shape[4] + pads[2] + pads[3] >= 3])  # the rest have no output
def test_matches_conv2d_forward_and_backward(n, c, f, h, w, padding, pads):
    # the reference is layerkit's own im2col convolution, forward and backward, float32
    rng = np.random.default_rng(n * 100 + c)
    x, weights, b = case(rng, n, c, f, h, w)
    layer = conv_layer(f, padding)
    params = {"W": weights, "b": b}
    y, cache = layer.forward(params, x, training=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, grads = layer.backward(params, cache, dy)
    got = wn.forward(x, weights, b, pads)
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == y.shape
    assert rel(got, y) < RTOL32
    assert rel(wn.backward_input(dy, weights, pads, (h, w)), dx) < RTOL32
    assert rel(wn.backward_weights(x, dy, pads), grads["W"]) < RTOL32


@pytest.mark.parametrize("pads", [(1, 0, 0, 1), (0, 1, 1, 0), (1, 1, 1, 1), (0, 0, 0, 0)])
def test_float64_is_exact_up_to_rounding_for_any_pads(pads):
    # asymmetric pads too (Conv2D cannot express them, the direct definition can)
    rng = np.random.default_rng(7)
    x, weights, _ = case(rng, 3, 5, 4, 9, 8, np.float64)
    y = direct(x, weights, pads)
    assert rel(wn.forward(x, weights, None, pads), y) < RTOL64
    dy = rng.standard_normal(y.shape)
    rotated = weights[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    back = (2 - pads[0], 2 - pads[1], 2 - pads[2], 2 - pads[3])
    assert rel(wn.backward_input(dy, weights, pads, (9, 8)), direct(dy, rotated, back)) < RTOL64
    assert rel(wn.backward_weights(x, dy, pads), direct_dw(x, dy, pads)) < RTOL64


def test_a_non_contiguous_input_and_a_batch_across_several_blocks():
    rng = np.random.default_rng(3)
    x, weights, b = case(rng, 6, 4, 5, 13, 9)
    x = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # an F-ordered view per image
    assert not x.flags.c_contiguous
    want = direct(x, weights, (1, 1, 1, 1)) + b.reshape(-1, 1, 1)
    # a budget of about one tile row per block: blocks start and end inside images
    assert rel(wn.forward(x, weights, b, (1, 1, 1, 1), block_bytes=1), want) < RTOL32
    assert rel(wn.forward(x, weights, b, (1, 1, 1, 1)), want) < RTOL32
    # the 16 GEMMs in numba (the benchmark's comparison) compute the same
    assert rel(wn.forward(x, weights, b, (1, 1, 1, 1), products="numba"), want) < RTOL32


def test_two_threads_on_halves_of_the_batch_give_the_whole_batch():
    # the caller splits batches over threads; the compiled parts hold no GIL and share no buffers
    rng = np.random.default_rng(5)
    x, weights, b = case(rng, 8, 16, 16, 12, 12)
    whole = wn.forward(x, weights, b, (1, 1, 1, 1))
    out = [None, None]

    def run(i):
        out[i] = wn.forward(x[4 * i:4 * i + 4], weights, b, (1, 1, 1, 1))

    workers = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert rel(np.concatenate(out), whole) < RTOL32


def test_covers_only_what_it_computes():
    assert wn.covers(32, 32, 3, 3, 1, 1, 1, (1, 1, 1, 1))
    assert wn.covers(64, 16, 3, 3, (1, 1), (1, 1), 1, (0, 1, 1, 0))
    assert wn.covers(wn.MIN_CHANNELS, wn.MIN_CHANNELS, 3, 3, 1, 1, 1, (1, 1, 1, 1))
    for args in [(32, 32, 5, 5, 1, 1, 1, (2, 2, 2, 2)), (32, 32, 3, 3, 2, 1, 1, (1, 1, 1, 1)),
                 (32, 32, 3, 3, 1, 2, 1, (2, 2, 2, 2)), (32, 32, 3, 3, 1, 1, 2, (1, 1, 1, 1)),
                 (32, 32, 3, 3, 1, 1, 1, (2, 2, 2, 2)), (1, 32, 3, 3, 1, 1, 1, (1, 1, 1, 1)),
                 (32, 1, 3, 3, 1, 1, 1, (1, 1, 1, 1)), (wn.MIN_CHANNELS - 1, 32, 3, 3, 1, 1, 1, (1, 1, 1, 1))]:
        assert not wn.covers(*args), args


def test_a_wrong_transform_entry_fails_the_comparison(monkeypatch):
    # the tolerance is tight enough to catch one wrong entry of G (x) G (the weight transform)
    rng = np.random.default_rng(11)
    x, weights, b = case(rng, 2, 8, 8, 10, 10)
    want = direct(x, weights, (1, 1, 1, 1)) + b.reshape(-1, 1, 1)
    assert rel(wn.forward(x, weights, b, (1, 1, 1, 1)), want) < RTOL32
    wrong = wn.GG.copy()
    wrong[5, 4] += 0.25
    monkeypatch.setattr(wn, "GG", wrong)
    assert rel(wn.forward(x, weights, b, (1, 1, 1, 1)), want) > 100 * RTOL32


def test_a_mismatched_gradient_shape_is_refused():
    x = np.zeros((2, 3, 6, 6), np.float32)
    with pytest.raises(ValueError):
        wn.backward_weights(x, np.zeros((2, 4, 5, 5), np.float32), (1, 1, 1, 1))
    with pytest.raises(ValueError):
        wn.backward_input(np.zeros((2, 4, 6, 6), np.float32), np.zeros((4, 3, 3, 3), np.float32), (1, 1, 1, 1),
                          (7, 7))


@pytest.mark.parametrize("call", [
    lambda: wn.forward(np.zeros((2, 3, 6, 6), np.float32), np.zeros((4, 3, 3, 3), np.float32), None, (-1, 1, 1, 1)),
    lambda: wn.forward(np.zeros((2, 3, 6, 6), np.float32), np.zeros((4, 2, 3, 3), np.float32), None, (1, 1, 1, 1)),
    lambda: wn.forward(np.zeros((2, 3, 6, 6), np.float32), np.zeros((4, 3, 3, 3), np.float32), np.zeros(3), (1,) * 4),
    lambda: wn.backward_input(np.zeros((2, 4, 6, 6), np.float32), np.zeros((4, 3, 3, 3), np.float32), (3, 3, 0, 0),
                              (2, 8)),
])
def test_bad_shapes_and_pads_are_refused_before_any_compiled_loop(call):
    # a negative pad would index before the staged rows: refused, never computed
    with pytest.raises(ValueError):
        call()
