"""Conv2D on the compiled direct convolution (kernel conv2d_direct) against its numpy paths, which layers take
it, and the kernel check failing on deliberately wrong direct convolutions."""

import numpy as np
import pytest

from layerkit.errors import ContractError
from layerkit.kernels import select
from layerkit.kernels.conv_direct import DirectConvNumpy
from layerkit.kernels.registry import KERNELS
from layerkit.layers.conv import Conv2D
from layerkit.testing.engine import KERNEL_CHECK, check_kernel
from kernel_support import on_thread_counts

# numba is not imported here: layerkit.kernels.select points its cache at the user's directory first
pytestmark = pytest.mark.skipif(not select.numba_installed(), reason="needs the fast extra (numba)")

DEFAULTS = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "use_bias": True, "init": "he_normal"}


def _conv(**config):
    return Conv2D(**{**DEFAULTS, **config})


def _run(layer, x, dy, path):
    impl = select.compiled("conv2d_direct") if path == "numba" else KERNELS["conv2d_direct"].reference
    rng = np.random.default_rng(1)
    params = {name: (rng.standard_normal(spec.shape) * 0.3).astype(np.float32)
              for name, spec in layer.param_specs(x.shape[1:]).items()}
    with select.forced({"conv2d_direct": impl}):
        y, cache = layer.forward(params, x, training=True)
        dx, grads = layer.backward(params, cache, dy)
        only = layer.backward_params(params, cache, dy)
    return cache.path, y, dx, grads, only


# LeNet's two layers, a 'same' 3x3 layer, an odd filter count, a 3x5 kernel, no bias, a rectangle
COVERED = [
    ({"filters": 8, "kernel_size": 5}, (1, 28, 28)),
    ({"filters": 16, "kernel_size": 5}, (8, 12, 12)),
    ({"filters": 16, "kernel_size": 3, "padding": "same", "use_bias": False}, (1, 28, 28)),
    ({"filters": 5, "kernel_size": 3, "padding": 1}, (3, 7, 9)),
    ({"filters": 3, "kernel_size": [3, 5], "padding": "same"}, (2, 6, 8)),
    ({"filters": 7, "kernel_size": [5, 3]}, (2, 9, 6)),
]


@pytest.mark.parametrize("config, shape", COVERED)
def test_the_direct_path_gives_the_numpy_paths_results_within_rounding(config, shape):
    layer = _conv(**config)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, *shape)).astype(np.float32)
    dy = rng.standard_normal((5, *layer.output_shape(shape))).astype(np.float32)
    path, *got = _run(layer, x, dy, "numba")
    ref_path, *want = _run(layer, x, dy, "numpy")
    assert path == "direct" and ref_path != "direct"
    for g, w in zip(got[:2], want[:2], strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    for grads_got, grads_want in zip(got[2:], want[2:], strict=True):
        assert grads_got.keys() == grads_want.keys()
        for name in grads_want:
            np.testing.assert_allclose(grads_got[name], grads_want[name], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config, shape", [
    ({"filters": 4, "kernel_size": 3, "stride": 2}, (2, 9, 9)),  # strided
    ({"filters": 4, "kernel_size": 3, "groups": 2}, (2, 7, 7)),  # grouped
    ({"filters": 4, "kernel_size": 3, "dilation": 2}, (2, 9, 9)),  # dilated
    ({"filters": 4, "kernel_size": 2}, (2, 6, 6)),  # a width with no compiled code
    ({"filters": 32, "kernel_size": 3, "padding": 1}, (1, 6, 6)),  # more filters: the GEMM wins
])
def test_other_layers_keep_their_numpy_paths(config, shape):
    layer = _conv(**config)
    x = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
    dy = np.ones((2, *layer.output_shape(shape)), np.float32)
    assert _run(layer, x, dy, "numba")[0] != "direct"


def test_float64_never_takes_the_compiled_path():
    layer = _conv(filters=4, kernel_size=5)
    x = np.zeros((2, 1, 9, 9))
    with select.forced({"conv2d_direct": select.compiled("conv2d_direct")}):
        _, cache = layer.forward({"W": np.zeros((4, 1, 5, 5)), "b": np.zeros(4)}, x, training=True)
    assert cache.path != "direct"


def test_the_weight_gradient_does_not_depend_on_the_thread_count():
    layer = _conv(filters=16, kernel_size=5)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8, 12, 12)).astype(np.float32)
    dy = rng.standard_normal((64, 16, 8, 8)).astype(np.float32)
    runs = on_thread_counts(lambda: _run(layer, x, dy, "numba")[3]["W"])
    assert runs[0].tobytes() == runs[1].tobytes()


class LastRowDropped(DirectConvNumpy):
    """Wrong on purpose: the kernel's last row is left out of the forward sum."""

    path = "wrong"

    def forward(self, xf, w, b, g, f, y):
        cut = w.copy()
        cut[:, :, -1] = 0
        DirectConvNumpy.forward(self, xf, cut, b, g, f, y)


class LastSampleForgotten(DirectConvNumpy):
    """Wrong on purpose: the weight gradient leaves out the chunk's last sample."""

    path = "wrong"

    def weight_grad(self, xf, dyw, start, g, f, dw):
        DirectConvNumpy.weight_grad(self, xf[:-1], dyw[:-1], start, g, f, dw)


class RoundedToHalf(DirectConvNumpy):
    """Wrong on purpose: outputs rounded to float16, far outside float32 rounding."""

    path = "wrong"

    def forward(self, xf, w, b, g, f, y):
        DirectConvNumpy.forward(self, xf, w, b, g, f, y)
        y[...] = y.astype(np.float16)


@pytest.mark.parametrize("wrong, output", [(LastRowDropped(), "output"), (LastSampleForgotten(), "weight gradient"),
                                           (RoundedToHalf(), "output")])
def test_the_check_fails_on_a_wrong_direct_convolution(wrong, output):
    with pytest.raises(ContractError) as info:
        check_kernel(KERNELS["conv2d_direct"], wrong)
    assert info.value.check == KERNEL_CHECK and info.value.layer == "conv2d_direct"
    assert f"its {output} differs from the numpy reference" in str(info.value)
