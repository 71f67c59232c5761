"""Conv2D on the compiled Winograd kernel (conv2d_winograd) against its numpy paths, which layers take it,
and the kernel check failing on deliberately wrong Winograd convolutions."""

import numpy as np
import pytest

from layerkit.errors import ContractError
from layerkit.kernels import select
from layerkit.kernels.registry import KERNELS
from layerkit.kernels.winograd import WinogradNumpy
from layerkit.layers.conv import Conv2D
from layerkit.testing.engine import KERNEL_CHECK, check_kernel
from kernel_support import kernel_impls, on_thread_counts

pytestmark = pytest.mark.skipif(not select.numba_installed(), reason="needs the fast extra (numba)")

DEFAULTS = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "use_bias": True, "init": "he_normal"}


def _run(layer, x, dy, path):
    impls = kernel_impls(path)
    rng = np.random.default_rng(1)
    params = {name: (rng.standard_normal(spec.shape) * 0.2).astype(np.float32)
              for name, spec in layer.param_specs(x.shape[1:]).items()}
    with select.forced(impls):
        y, cache = layer.forward(params, x, training=True)
        dx, grads = layer.backward(params, cache, dy)
        only = layer.backward_params(params, cache, dy)
        inferred = layer.infer(params, x)
    return cache.path, y, dx, grads, only, inferred


@pytest.mark.parametrize("config, shape", [
    ({"filters": 32, "kernel_size": 3, "padding": "same", "use_bias": False}, (32, 14, 14)),  # alexnet_mnist conv2
    ({"filters": 16, "kernel_size": 3, "padding": 1}, (8, 7, 9)),
    ({"filters": 9, "kernel_size": 3}, (11, 6, 5)),
])
def test_the_winograd_path_gives_the_numpy_paths_results_within_rounding(config, shape):
    layer = Conv2D(**{**DEFAULTS, **config})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, *shape)).astype(np.float32)
    dy = rng.standard_normal((6, *layer.output_shape(shape))).astype(np.float32)
    path, *got = _run(layer, x, dy, "numba")
    ref_path, *want = _run(layer, x, dy, "numpy")
    assert path == "winograd" and ref_path != "winograd"
    for g, w in [(got[0], want[0]), (got[1], want[1]), (got[4], want[4])]:
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    for grads_got, grads_want in [(got[2], want[2]), (got[3], want[3])]:
        assert grads_got.keys() == grads_want.keys()
        for name in grads_want:
            np.testing.assert_allclose(grads_got[name], grads_want[name], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("config, shape", [
    ({"filters": 32, "kernel_size": 3, "padding": "same"}, (4, 8, 8)),  # too few input channels
    ({"filters": 4, "kernel_size": 3, "padding": "same"}, (16, 8, 8)),  # too few filters
    ({"filters": 16, "kernel_size": 3, "padding": 2}, (16, 8, 8)),  # padding 2
    ({"filters": 16, "kernel_size": 3, "stride": 2}, (16, 9, 9)),
    ({"filters": 16, "kernel_size": 5}, (16, 9, 9)),
])
def test_other_layers_do_not_take_it(config, shape):
    layer = Conv2D(**{**DEFAULTS, **config})
    x = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
    dy = np.ones((2, *layer.output_shape(shape)), np.float32)
    assert _run(layer, x, dy, "numba")[0] != "winograd"


def test_the_weight_gradient_does_not_depend_on_the_thread_count():
    layer = Conv2D(**{**DEFAULTS, "filters": 16, "kernel_size": 3, "padding": 1})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 16, 14, 14)).astype(np.float32)  # large enough for the pool to split it
    dy = rng.standard_normal((64, 16, 14, 14)).astype(np.float32)
    runs = on_thread_counts(lambda: _run(layer, x, dy, "numba")[3]["W"])
    assert runs[0].tobytes() == runs[1].tobytes()


class KernelFlipped(WinogradNumpy):
    """Wrong on purpose: a convolution (kernel rotated) where the layer computes a cross-correlation."""

    path = "wrong"

    def forward(self, x, w, b, pads, out=None):
        return WinogradNumpy.forward(self, x, np.ascontiguousarray(w[:, :, ::-1, ::-1]), b, pads, out)


class EdgeGradientDropped(WinogradNumpy):
    """Wrong on purpose: the input gradient's last column left at zero (a partial tile forgotten)."""

    path = "wrong"

    def backward_input(self, dy, w, pads, hw, out=None):
        dx = WinogradNumpy.backward_input(self, dy, w, pads, hw)
        dx[..., -1] = 0
        return dx


@pytest.mark.parametrize("wrong, output", [(KernelFlipped(), "output"), (EdgeGradientDropped(), "input gradient")])
def test_the_check_fails_on_a_wrong_winograd_kernel(wrong, output):
    with pytest.raises(ContractError) as info:
        check_kernel(KERNELS["conv2d_winograd"], wrong)
    assert info.value.check == KERNEL_CHECK and info.value.layer == "conv2d_winograd"
    assert f"its {output} differs from the numpy reference" in str(info.value)
