"""The compiled kernels against their numpy references (check kernel_matches_reference), over the live
kernel registry, and the check failing on deliberately wrong kernels."""

import numpy as np
import pytest

from layerkit.errors import ContractError
from layerkit.kernels import select
from layerkit.kernels.maxpool import MaxPoolNumpy
from layerkit.kernels.registry import KERNELS
from layerkit.testing.engine import KERNEL_CHECK, check_kernel

needs_numba = pytest.mark.skipif(not select.numba_installed(), reason="needs the fast extra (numba)")


@needs_numba
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_compiled_kernel_matches_its_reference(name):
    assert check_kernel(KERNELS[name]) > 0


def test_the_reference_matches_itself():
    # the check's own plumbing, with or without numba: the reference against the reference
    for kernel in KERNELS.values():
        assert check_kernel(kernel, kernel.reference) > 0


def test_the_examples_cover_ties_nan_and_a_non_contiguous_input():
    whats = [ex.what for ex in KERNELS["max_pool2d"].examples(np.random.default_rng(0))]
    assert any("ties" in w for w in whats) and any("NaN" in w for w in whats)
    noncontig = [ex for ex in KERNELS["max_pool2d"].examples(np.random.default_rng(0)) if "non-contiguous" in ex.what]
    assert noncontig and not noncontig[0].args[0].flags.c_contiguous


class LastTie(MaxPoolNumpy):
    """Wrong on purpose: the gradient goes to the LAST of tied maxima."""

    path = "wrong"

    def backward(self, xp, y, arg, dy, g, dxp, overlap, slices, step):
        flipped = xp[:, :, ::-1, ::-1]
        dflip = np.zeros_like(dxp)
        MaxPoolNumpy.backward(self, flipped, y[:, :, ::-1, ::-1], arg, np.ascontiguousarray(dy[:, :, ::-1, ::-1]),
                              g, dflip, overlap, slices, step)
        dxp[...] = dflip[:, :, ::-1, ::-1]


class NanBlind(MaxPoolNumpy):
    """Wrong on purpose: np.fmax skips NaN where the reference's maximum propagates it."""

    path = "wrong"

    def forward(self, xp, g, y, arg, slices):
        offsets = g.offsets()
        _, _, rows, cols = next(offsets)
        y[...] = xp[:, :, rows, cols]
        for _, _, rows, cols in offsets:
            np.fmax(y, xp[:, :, rows, cols], out=y)


class OffByOne(MaxPoolNumpy):
    """Wrong on purpose: the output shifted by one column."""

    path = "wrong"

    def forward(self, xp, g, y, arg, slices):
        MaxPoolNumpy.forward(self, xp, g, y, arg, slices)
        y[..., :-1] = y[..., 1:].copy()


@pytest.mark.parametrize("wrong, case", [(LastTie(), "ties"), (NanBlind(), "NaN"), (OffByOne(), "random")])
def test_the_check_fails_on_a_wrong_kernel(wrong, case):
    with pytest.raises(ContractError) as info:
        check_kernel(KERNELS["max_pool2d"], wrong)
    error = info.value
    assert error.check == KERNEL_CHECK and error.layer == "max_pool2d" and case in error.example
    assert "differs from the numpy reference" in str(error)


def test_a_wrong_kernel_that_raises_is_a_failed_check():
    class Raises(MaxPoolNumpy):
        path = "wrong"

        def forward(self, xp, g, y, arg, slices):
            raise IndexError("out of bounds")

    with pytest.raises(ContractError, match="raised IndexError"):
        check_kernel(KERNELS["max_pool2d"], Raises())


#: a deliberately wrong "compiled module" for tests/test_kernel_paths.py (`layerkit info --check` exit 1)
IMPL = LastTie()
