"""BatchNorm on the compiled batch_norm kernel against its numpy path, and the kernel check failing on
deliberately wrong batch-norm passes."""

import numpy as np
import pytest

from layerkit.errors import ContractError
from layerkit.kernels import select
from layerkit.kernels.batchnorm import BatchNormNumpy
from layerkit.kernels.registry import KERNELS
from layerkit.layers.normalization import BatchNorm
from layerkit.testing.engine import KERNEL_CHECK, check_kernel
from kernel_support import kernel_impls, on_thread_counts

pytestmark = pytest.mark.skipif(not select.numba_installed(), reason="needs the fast extra (numba)")


def _step(path, x, dy, inplace=False, affine=True):
    layer = BatchNorm(momentum=0.9, epsilon=1e-5, affine=affine)
    c = x.shape[1]
    rng = np.random.default_rng(1)
    params = {"gamma": rng.uniform(0.5, 2, c).astype(np.float32), "beta": rng.standard_normal(c).astype(np.float32)}
    params = params if affine else {}
    state = {"running_mean": np.zeros(c, np.float32), "running_var": np.ones(c, np.float32)}
    with select.forced(kernel_impls(path)):
        y, cache = layer.forward(params, x, training=True, state=state)
        dx, grads = (layer.backward_inplace(params, cache, dy.copy()) if inplace
                     else layer.backward(params, cache, dy))
        inferred = layer.forward(params, x, training=False, state=state)[0]
    return y, dx, grads, state, inferred


@pytest.mark.parametrize("shape, mean", [((16, 8, 12, 12), 0.0), ((9, 3, 5, 7), 0.0), ((8, 4, 6, 6), 1000.0),
                                         ((4, 5, 1, 1), 0.0)])
@pytest.mark.parametrize("inplace", [False, True])
def test_the_compiled_passes_give_the_numpy_results_within_rounding(shape, mean, inplace):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) + mean).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    got, want = _step("numba", x, dy, inplace), _step("numpy", x, dy, inplace)
    # numpy rounds x * scale before adding the shift, the kernel's fused multiply-add does not: the
    # outputs differ by float32 rounding of x * scale (scale up to 2 / std here)
    atol = 1e-4 + 4 * np.finfo(np.float32).eps * abs(mean) * 2
    for g, w in [(got[0], want[0]), (got[1], want[1]), (got[4], want[4])]:
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=atol)
    for name in want[2]:
        np.testing.assert_allclose(got[2][name], want[2][name], rtol=1e-4, atol=1e-4)
    for name in want[3]:
        np.testing.assert_allclose(got[3][name], want[3][name], rtol=1e-5, atol=1e-6)


def test_no_affine_and_flat_features():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 4, 4)).astype(np.float32)
    got, want = _step("numba", x, x, affine=False), _step("numpy", x, x, affine=False)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-4)
    flat = rng.standard_normal((6, 5)).astype(np.float32)  # (N, D): the numpy path on both
    assert _step("numba", flat, flat)[1].tobytes() == _step("numpy", flat, flat)[1].tobytes()


def test_the_sums_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 32, 28, 28)).astype(np.float32)  # large enough for the pool to split it
    runs = on_thread_counts(lambda: _step("numba", x, x)[2]["gamma"])
    assert runs[0].tobytes() == runs[1].tobytes()


class Unshifted(BatchNormNumpy):
    """Wrong on purpose: the squares about zero, not about the shift (E[x^2] - E[x]^2 in float32)."""

    path = "wrong"

    def sums(self, a, b, shift):
        if b is a and shift is not None:
            total, squares = BatchNormNumpy.sums(self, a, a, np.zeros_like(shift))
            k = shift.astype(np.float64)
            return total - a.size // a.shape[1] * k, squares
        return BatchNormNumpy.sums(self, a, b, shift)


class ChannelsSwapped(BatchNormNumpy):
    """Wrong on purpose: the scale of channel 0 applied to channel 1 and the reverse."""

    path = "wrong"

    def affine(self, x, scale, shift, out):
        BatchNormNumpy.affine(self, x, np.roll(scale, 1), shift, out)


class SignFlipped(BatchNormNumpy):
    """Wrong on purpose: the (x - shift) term of the input gradient subtracted."""

    path = "wrong"

    def input_grad(self, dy, x, scale, k, c0, shift, out):
        BatchNormNumpy.input_grad(self, dy, x, scale, -k, c0, shift, out)


@pytest.mark.parametrize("wrong, output", [(Unshifted(), "sum of squares"), (ChannelsSwapped(), "output"),
                                           (SignFlipped(), "input gradient")])
def test_the_check_fails_on_wrong_batch_norm_passes(wrong, output):
    with pytest.raises(ContractError) as info:
        check_kernel(KERNELS["batch_norm"], wrong)
    assert info.value.check == KERNEL_CHECK and info.value.layer == "batch_norm"
    assert f"its {output} differs from the numpy reference" in str(info.value)
