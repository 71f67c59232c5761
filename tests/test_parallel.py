"""layerkit.parallel.threads: training results do not depend on LAYERKIT_NUM_THREADS."""

import itertools
import threading

import numpy as np
import pytest

from layerkit.parallel import threads as parallel
from layerkit.modelfile.build import build_model
from layerkit.modelfile.spec import spec_from_dict

SPEC = {
    "format": 1, "name": "tiny_cnn", "input": {"shape": [3, 16, 16]},
    "layers": [
        {"type": "conv2d", "filters": 16, "kernel_size": 3, "padding": "same"},
        {"type": "batch_norm"}, {"type": "relu"},
        {"type": "conv2d", "filters": 32, "kernel_size": 3, "padding": "same"},
        {"type": "batch_norm"}, {"type": "relu"},
        {"type": "max_pool2d", "pool_size": 2},
        {"type": "conv2d", "filters": 16, "kernel_size": 3, "stride": 2, "padding": 1},
        {"type": "flatten"}, {"type": "dense", "units": 10},
    ],
    "loss": {"type": "softmax_cross_entropy"},
}


def _train(threads, steps=3):
    parallel.set_num_threads(threads)
    # the claim is about the layer pool; OpenBLAS's own threads change GEMM rounding on some CPUs
    parallel.hold_blas()
    try:
        old = dict(parallel.MIN_PARALLEL_BYTES)
        parallel.MIN_PARALLEL_BYTES.update({k: 0 for k in old})  # every chunk loop on the pool, even at this size
        model = build_model(spec_from_dict(dict(SPEC), source="tiny"))
        rng = np.random.default_rng(1)
        x = rng.standard_normal((96, 3, 16, 16)).astype(np.float32)
        for _ in range(steps):
            out, caches = model.forward(x, training=True, rng=np.random.default_rng(0))
            grads = model.backward(caches, ((out - out.mean()) / len(x)).astype(np.float32))
            for name, tensors in grads.items():
                for t, g in tensors.items():
                    model.params[name][t] -= 0.01 * g
        assert np.isfinite(out).all()
        return out, {f"{k}/{t}": v.copy() for k, d in model.params.items() for t, v in d.items()}
    finally:
        parallel.MIN_PARALLEL_BYTES.update(old)
        parallel.set_num_threads(None)
        parallel.release_blas()


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_bit_identical(threads):
    out1, p1 = _train(1)
    outn, pn = _train(threads)
    assert out1.tobytes() == outn.tobytes()
    for key in p1:
        assert p1[key].tobytes() == pn[key].tobytes(), key


def test_spans_keep_chunk_boundaries():
    for n, step in ((128, 1), (64, 5), (7, 3), (2, 4)):
        for parts in (1, 2, 3, 8):
            spans = parallel.spans(n, step, parts)
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a % step == 0 for a, _ in spans)
            assert all(b0 == a1 for (_, b0), (a1, _) in itertools.pairwise(spans))


def test_small_passes_stay_off_the_pool():
    parallel.set_num_threads(2)
    try:
        assert parallel.split(64, 4, parallel.MIN_PARALLEL_BYTES["pass"] - 1, "pass") == [(0, 64)]
        assert len(parallel.split(64, 4, parallel.MIN_PARALLEL_BYTES["pass"], "pass")) == 2
        name = lambda _: threading.current_thread().name  # noqa: E731
        assert parallel.run(name, [(0,), (1,)], 0, "conv") == ["MainThread"] * 2
    finally:
        parallel.set_num_threads(None)


def test_blas_held_from_the_first_pooled_pass_until_reset():
    from layerkit.parallel import blas

    if blas.num_threads() is None:
        pytest.skip("no BLAS found by threadpoolctl")
    parallel.set_num_threads(2)
    limit = blas.limit_threads(2)
    try:
        assert not parallel.blas_held() and blas.num_threads() == 2
        inside = parallel.run(lambda a: blas.num_threads(), [(0,), (1,)], 1 << 40, "conv")
        assert inside == [1, 1] and parallel.blas_held()
        assert blas.num_threads() == 1
        parallel.set_num_threads(None)
        assert blas.num_threads() == 2 and not parallel.blas_held()
    finally:
        parallel.set_num_threads(None)
        limit.restore_original_limits()


def test_a_forked_child_starts_without_the_parents_pool():
    # the parent's pool object survives a fork but its threads do not; the child makes its own
    import os
    import signal

    name = lambda _: threading.current_thread().name  # noqa: E731
    parallel.set_num_threads(2)
    try:
        assert parallel.run(name, [(0,), (1,)], 1 << 40, "conv")[0].startswith("layerkit")
        pid = os.fork()
        if pid == 0:
            signal.alarm(20)
            names = parallel.run(name, [(0,), (1,)], 1 << 40, "conv")
            os._exit(0 if names[0] == "layerkit_0" else 1)  # thread 0 of a new pool, not the old pool's next
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        parallel.set_num_threads(None)


@pytest.mark.parametrize("shape", [(64, 3, 16, 16), (3, 5), (1, 200_000), (0, 4)])
def test_sample_chunks_cover_the_batch_within_the_budget(shape):
    from layerkit.parallel.chunks import PASS_CHUNK_BYTES, sample_chunks

    x = np.zeros(shape, np.float32)
    slices, step = sample_chunks(x)
    covered = [i for sl in slices for i in range(sl.start, sl.stop)]
    assert covered == list(range(shape[0]))  # every sample once, in order
    per_sample = x[:1].nbytes
    assert all(sl.stop - sl.start <= step for sl in slices) and 1 <= step <= max(shape[0], 1)
    assert step == 1 or step * per_sample <= PASS_CHUNK_BYTES  # one sample may exceed it, never two


def test_chunked_pass_equals_the_whole_pass():
    from layerkit.parallel.chunks import over_chunks

    x = np.random.default_rng(0).standard_normal((200, 8, 32, 32)).astype(np.float32)  # 6.5 MB: several chunks
    y = np.empty_like(x)
    calls = []

    def work(slices, step):
        calls.append(len(slices))
        for sl in slices:
            np.maximum(x[sl], 0, out=y[sl])

    parallel.set_num_threads(2)
    try:
        over_chunks(x, work)
    finally:
        parallel.set_num_threads(None)
    assert sum(calls) > 1
    assert np.array_equal(y, np.maximum(x, 0))

