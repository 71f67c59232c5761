"""The fused BLAS updates agree with numpy, and every case BLAS cannot take falls back to numpy."""

from __future__ import annotations

import numpy as np
import pytest

from layerkit.parallel import blas


def pair(dtype, shape=(37, 129), seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("use_blas", [True, False], ids=["blas", "numpy"])
def test_updates_match_numpy(dtype, use_blas, monkeypatch):
    if not use_blas:  # as on a system whose BLAS has no fused updates (MKL, Accelerate)
        monkeypatch.setattr(blas, "functions", dict)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    x, y = pair(dtype)
    expected = y + 0.3 * x
    blas.axpy(0.3, x, y)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)
    x, y = pair(dtype, seed=1)
    expected = -0.5 * x + 0.9 * y
    blas.axpby(-0.5, x, 0.9, y)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)


def test_views_and_other_dtypes_take_the_numpy_path():
    x, y = pair(np.float32)
    yt, xt = y.T, x.T  # not C-contiguous
    expected = yt + 2.0 * xt
    blas.axpy(2.0, xt, yt)
    np.testing.assert_allclose(yt, expected, rtol=1e-6)
    xi, yi = np.arange(6), np.ones(6, dtype=np.int64)
    blas.axpby(2, xi, 3, yi)
    assert yi.tolist() == [3, 5, 7, 9, 11, 13]


def test_openblas_found_where_numpy_bundles_it():
    if not blas.controller().select(internal_api="openblas").lib_controllers:
        pytest.skip("numpy's BLAS is not OpenBLAS here")
    assert {"saxpy", "saxpby", "daxpy", "daxpby"} <= set(blas.functions())
    assert blas.num_threads() is not None


def test_one_thread_holds_blas_to_one_thread_and_restores_it():
    if blas.num_threads() is None:
        pytest.skip("threadpoolctl finds no BLAS here")
    with blas.limit_threads(2):
        with blas.one_thread():
            assert blas.num_threads() == 1
        assert blas.num_threads() == 2
        with pytest.raises(RuntimeError), blas.one_thread():
            raise RuntimeError("restored even when the block fails")
        assert blas.num_threads() == 2
